"""Every server move is kept in the migrations bucket and listed by migrations.list (Nova's os-migrations)."""

from __future__ import annotations

import pytest

from hvmesh.core.protocol import errors
from hvmesh.core.protocol import states as S
from tests.support import ApiClient, Cli, Deployment, idle, wait_server
from tests.test_moves import act, boot, do, setup


async def test_moves_are_listed_as_they_go_and_after_they_end(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await setup(admin)
    confirmed, reverted, live, waiting = [await boot(cloud, admin, n) for n in "abcd"]
    await do(cloud, admin, confirmed.id, "resize", flavor="m1.large")
    await do(cloud, admin, confirmed.id, "confirm-resize")
    resized = await do(cloud, admin, reverted.id, "resize", flavor="m1.large")
    await do(cloud, admin, reverted.id, "revert-resize")
    await act(admin, live.id, "live-migrate")
    moved = await wait_server(cloud.store, live.id, idle)
    assert moved is not None and moved.host != live.host
    pending = await do(cloud, admin, waiting.id, "migrate")
    assert pending.vm_state == S.RESIZED

    rows = (await admin("migrations.list"))["migrations"]
    by_server = {m["server_id"]: m for m in rows}
    assert {s: (m["kind"], m["status"]) for s, m in by_server.items()} == {
        confirmed.id: ("resize", "confirmed"),
        reverted.id: ("resize", "reverted"),
        live.id: ("live-migration", "completed"),
        waiting.id: ("migration", "finished"),  # waiting for its confirm
    }
    assert by_server[reverted.id]["source_host"] == reverted.host
    assert by_server[reverted.id]["dest_host"] == resized.host
    assert by_server[live.id]["dest_host"] == moved.host
    assert rows[0]["server_id"] == waiting.id  # newest first

    await do(cloud, admin, waiting.id, "confirm-resize")
    done = (await admin("migrations.list", {"server_id": waiting.id}))["migrations"]
    assert [(m["kind"], m["status"]) for m in done] == [("migration", "confirmed")]
    kinds = await admin("migrations.list", {"kind": "resize", "status": "reverted"})
    assert [m["server_id"] for m in kinds["migrations"]] == [reverted.id]
    there = (await admin("migrations.list", {"host": moved.host}))["migrations"]
    assert live.id in {m["server_id"] for m in there}
    first = await admin("migrations.list", {"limit": 1})
    assert len(first["migrations"]) == 1
    rest = await admin("migrations.list", {"marker": first["migrations_links"][0]["marker"]})
    assert len(rest["migrations"]) == 3
    with pytest.raises(errors.Forbidden, match="compute:migrations:list"):
        await demo("migrations.list")

    listed = await Cli(cloud).json("server", "migration", "list", "--type", "resize")
    assert {(m["server_id"], m["status"]) for m in listed} == {
        (confirmed.id, "confirmed"),
        (reverted.id, "reverted"),
    }
