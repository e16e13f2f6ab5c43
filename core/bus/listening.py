"""Where an HTTP front door listens once started: (address, port), the port the system chose."""

from __future__ import annotations


class Bound(tuple[str, int]):
    """Where a service listens: (address, port)."""

    @property
    def address(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]
