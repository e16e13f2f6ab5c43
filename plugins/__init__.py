"""The plugin API (hookspecs), plugin manager and built-in filters and weighers.

`hookimpl` is the marker plugin modules decorate their hook functions with.
"""

import pluggy

hookimpl = pluggy.HookimplMarker("hvmesh")

__all__ = ["hookimpl"]
