"""Moves: resize (confirm, revert, auto-confirm), cold and live migration, evacuation.

Not built yet: registers no actions, so the conductor fails these with "not supported".
"""

from __future__ import annotations

from hvmesh.core.lifecycle import Lifecycle


def register(lc: Lifecycle) -> None:
    del lc
