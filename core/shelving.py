"""Shelving: shelve, shelve-offload (at once or after shelved_offload_time), unshelve.

Not built yet: registers no actions, so the conductor fails these with "not supported".
"""

from __future__ import annotations

from hvmesh.core.lifecycle import Lifecycle


def register(lc: Lifecycle) -> None:
    del lc
