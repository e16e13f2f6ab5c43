"""The API's usage report: hvmesh.api.usage.show, Nova's os-simple-tenant-usage for one project.

Each server's hours in the window run from its launch (launched_at) to its deletion or
the window's end; vCPU, RAM and disk hours are its flavor's sizes times those hours. Live
servers are read from their records, deleted ones from the usage ledger
(core/state/usage_ledger.py); a server that never launched ran no hours, as in Nova.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from msgspec import Meta

from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.quotas import project_of
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import Name, Request, now
from hvmesh.core.state import usage_ledger

DEFAULT_WINDOW = timedelta(days=28)  # as `openstack usage show`: the last four weeks

When = Annotated[str, Meta(min_length=1, max_length=64)]


class UsageShow(Request):
    """A project's usage from `start` to `end` (ISO 8601, UTC when no zone is given);
    default: the four weeks up to now."""

    project: Name | None = None
    start: When | None = None
    end: When | None = None


def _moment(text: str, what: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise errors.BadRequest(f"{what}: {text!r} is not an ISO 8601 date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class UsageEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    async def show(self, caller: Caller, req: UsageShow) -> dict:
        project = project_of(caller, req.project)
        end = _moment(req.end, "end") if req.end is not None else now()
        start = (
            _moment(req.start, "start")
            if req.start is not None
            else end - DEFAULT_WINDOW.total_seconds()
        )
        if start >= end:
            raise errors.BadRequest(f"start ({req.start}) must be before end ({req.end})")
        rows: list[dict[str, Any]] = []
        for s in await self.api.st.servers.values():
            if s.project == project and s.launched_at is not None:
                f = s.flavor
                row = _row(s.id, s.name, f.name, f.vcpus, f.ram_mb, f.disk_gb, s.launched_at,
                           None, s.vm_state, project, start, end)  # fmt: skip
                if row is not None:
                    rows.append(row)
        for r in await usage_ledger.runs(self.api.st, project):
            row = _row(r.server_id, r.name, r.flavor, r.vcpus, r.ram_mb, r.disk_gb,
                       r.started_at, r.ended_at, "terminated", project, start, end)  # fmt: skip
            if row is not None:
                rows.append(row)
        rows.sort(key=lambda r: (r["started_at"], r["instance_id"]))
        return {
            "tenant_usage": {
                "tenant_id": project,
                "start": _iso(start),
                "stop": _iso(end),
                "total_hours": sum(r["hours"] for r in rows),
                "total_vcpus_usage": sum(r["hours"] * r["vcpus"] for r in rows),
                "total_memory_mb_usage": sum(r["hours"] * r["memory_mb"] for r in rows),
                "total_local_gb_usage": sum(r["hours"] * r["local_gb"] for r in rows),
                "server_usages": rows,
            }
        }


def _row(
    server_id: str,
    name: str,
    flavor: str,
    vcpus: int,
    ram_mb: int,
    disk_gb: int,
    started: float,
    ended: float | None,
    state: str,
    project: str,
    start: float,
    end: float,
) -> dict[str, Any] | None:
    """One server's line of the report; None when it did not run in the window."""
    first = max(started, start)
    last = min(ended if ended is not None else now(), end)
    if last <= first:
        return None
    hours = (last - first) / 3600.0
    return {
        "instance_id": server_id,
        "name": name,
        "hours": hours,
        "flavor": flavor,
        "vcpus": vcpus,
        "memory_mb": ram_mb,
        "local_gb": disk_gb,
        "started_at": _iso(started),
        "ended_at": _iso(ended) if ended is not None else None,
        "state": state,
        "tenant_id": project,
        "uptime": int(min(ended if ended is not None else now(), end) - started),
    }
