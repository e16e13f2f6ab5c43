"""The records of quotas and usage: a project's overrides, what it holds, deleted servers' runs."""

from __future__ import annotations

import binascii
import re

from msgspec import field

from hvmesh.core.protocol.base import Record, now

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")


def project_key(project: str) -> str:
    """The project's KV key: its name when that is a valid key, else a hex form of it."""
    if _SAFE_KEY.fullmatch(project) and not project.startswith("x-"):
        return project
    return "x-" + binascii.hexlify(project.encode()).decode()


class QuotaLimits(Record):
    """A project's overrides of the configured default limits (-1: unlimited)."""

    project: str
    limits: dict[str, int] = field(default_factory=dict)
    updated_at: float = field(default_factory=now)


class QuotaHolding(Record):
    """What one holder (a server, server group or key pair) counts against its project."""

    amounts: dict[str, int]
    user: str = ""  # key pairs count per user, as Nova's
    at: float = field(default_factory=now)


class QuotaUsage(Record):
    """What a project holds, per holder ("server.<id>", "group.<id>", "keypair.<id>").

    Re-applying a holder's amounts or removing it twice changes nothing, so every place
    that counts or releases can retry freely.
    """

    project: str
    holdings: dict[str, QuotaHolding] = field(default_factory=dict)


class UsageRecord(Record):
    """The run of a deleted server, kept for usage reports (Nova's os-simple-tenant-usage)."""

    server_id: str
    name: str
    project: str
    user: str
    flavor: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    started_at: float
    ended_at: float
