"""What the audit reports: one Finding per inconsistency, and how each is repaired."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec


class Finding(msgspec.Struct, kw_only=True):
    kind: str
    host: str
    server_id: str = ""
    message: str
    healed: bool = False
    # What else the finding is about: "network <id> <address>", "port <id>", ...
    resource: str = ""

    def key(self) -> tuple[str, str, str, str]:
        """What identifies the finding from one audit to the next."""
        return (self.kind, self.host, self.server_id, self.resource)


# A finding and what repairs it (None: reported only). A repair that finds the record
# changed meanwhile leaves it; the audit looks again to tell what was healed.
Repair = tuple[Finding, Callable[[], Awaitable[Any]] | None]
