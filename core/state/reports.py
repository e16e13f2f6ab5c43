"""Read-only SQL over the inventory index, and the ready-made reports operators ask for.

Tables: `hosts` (the index's columns, with `up`), `allocations` (server_id, host, vcpus,
memory_mb, disk_gb) and `servers` (a snapshot of the servers bucket). Only a single
SELECT is accepted; the DuckDB connection has file and network access switched off and
its configuration locked, so a query can read these tables and nothing else. A query
that runs past its time limit is interrupted.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import duckdb
import msgspec
import numpy as np

from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Server
from hvmesh.core.state.inventory import Index

MAX_ROWS = 10_000
TIME_LIMIT = 8.0  # under the CLI's default 10 s wait, so the caller hears why

REPORTS: dict[str, tuple[str, str]] = {
    "capacity": (
        "free capacity per availability zone",
        """SELECT availability_zone, count(*) AS hosts, count(*) FILTER (WHERE up AND enabled) AS usable,
                  sum(vcpus_free) AS vcpus_free, sum(memory_mb_free) AS memory_mb_free,
                  sum(disk_gb_free) AS disk_gb_free, sum(running_vms) AS servers
           FROM hosts GROUP BY availability_zone ORDER BY availability_zone""",
    ),
    "consumers": (
        "the projects using the most, by memory",
        """SELECT project, count(*) AS servers, sum(vcpus) AS vcpus, sum(ram_mb) AS ram_mb,
                  sum(disk_gb) AS disk_gb
           FROM servers WHERE host IS NOT NULL
           GROUP BY project ORDER BY ram_mb DESC, project LIMIT 20""",
    ),
}


class QueryResult(msgspec.Struct, kw_only=True):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


def check_select(sql: str) -> None:
    """Refuse anything but one SELECT, naming what was wrong."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise errors.BadRequest(f"invalid SQL: {exc}") from None
    if len(statements) != 1:
        raise errors.BadRequest(f"give exactly one SELECT statement, not {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise errors.BadRequest(f"only SELECT is allowed, not {statements[0].type.name}")


def servers_table(servers: list[Server]) -> dict[str, np.ndarray]:
    fields = {
        "id": (object, lambda s: s.id),
        "name": (object, lambda s: s.name),
        "project": (object, lambda s: s.project),
        "user": (object, lambda s: s.user),
        "vm_state": (object, lambda s: s.vm_state),
        "task_state": (object, lambda s: s.task_state),
        "host": (object, lambda s: s.host),
        "availability_zone": (object, lambda s: s.availability_zone),
        "flavor": (object, lambda s: s.flavor.name),
        "vcpus": (np.int64, lambda s: s.flavor.vcpus),
        "ram_mb": (np.int64, lambda s: s.flavor.ram_mb),
        "disk_gb": (np.int64, lambda s: s.flavor.disk_gb),
        "image": (object, lambda s: s.image_name),
        "created_at": (np.float64, lambda s: s.created_at),
    }
    return {n: np.array([get(s) for s in servers], dtype=k) for n, (k, get) in fields.items()}


def _run(
    db: duckdb.DuckDBPyConnection, tables: dict[str, Any], sql: str, params: list[Any]
) -> QueryResult:
    cur = db.cursor()
    timer = threading.Timer(TIME_LIMIT, cur.interrupt)
    try:
        for name, table in tables.items():
            cur.register(name, table)
        timer.start()
        result = cur.execute(sql, params)
        columns = [d[0] for d in result.description or []]
        rows = result.fetchmany(MAX_ROWS + 1)
    except duckdb.InterruptException:
        raise errors.BadRequest(f"query ran past {TIME_LIMIT:g}s and was stopped") from None
    except duckdb.Error as exc:
        raise errors.BadRequest(f"query failed: {exc}") from None
    finally:
        timer.cancel()
        cur.close()
    return QueryResult(
        columns=columns,
        rows=[list(r) for r in rows[:MAX_ROWS]],
        truncated=len(rows) > MAX_ROWS,
    )


async def query(index: Index, servers: list[Server], sql: str, params: list[Any]) -> QueryResult:
    """Run one SELECT in a worker thread, over copies taken now (the index keeps changing)."""
    check_select(sql)
    tables = {
        "hosts": {c: a.copy() for c, a in index.hosts_table().items()},
        "allocations": index.allocations_table(),
        "servers": servers_table(servers),
    }
    return await asyncio.to_thread(_run, index.db, tables, sql, params)
