"""Read-only SQL over the inventory index, the reports, and what is refused."""

from __future__ import annotations

import pytest

from hvmesh.core.protocol import errors
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server
from tests.test_cli import Cli


async def test_inventory_query_and_reports(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin, vcpus=2, ram=1024, disk=10)
    ids = []
    for who, name in ((admin, "a1"), (demo, "d1"), (demo, "d2")):
        ids.append(
            (await who("servers.create", {"name": name, "flavor": "m1.small", "image": "cirros"}))[
                "server"
            ]["id"]
        )
    for sid in ids:
        await wait_server(cloud.store, sid, settled)

    q = (
        await admin(
            "inventory.query",
            {"sql": "SELECT count(*) AS n, sum(running_vms) AS vms FROM hosts WHERE up"},
        )
    )["query"]
    assert q["columns"] == ["n", "vms"] and q["rows"] == [[3, 3]]
    q = (
        await admin(
            "inventory.query",
            {
                "sql": "SELECT s.name, a.host = s.host AS same FROM servers s JOIN allocations a ON a.server_id = s.id WHERE s.project = ? ORDER BY s.name",
                "params": ["DEMO"],
            },
        )
    )["query"]
    assert q["rows"] == [["d1", True], ["d2", True]]

    capacity = (await admin("inventory.report", {"name": "capacity"}))["report"]
    row = dict(zip(capacity["columns"], capacity["rows"][0], strict=True))
    assert row["availability_zone"] == "nova" and row["hosts"] == 3 and row["servers"] == 3
    consumers = (await admin("inventory.report", {"name": "consumers"}))["report"]
    assert consumers["rows"][0][:3] == ["DEMO", 2, 4]

    with pytest.raises(errors.Forbidden):
        await demo("inventory.query", {"sql": "SELECT 1"})


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DROP TABLE hosts", "only SELECT is allowed, not DROP"),
        ("SELECT 1; SELECT 2", "exactly one SELECT statement, not 2"),
        ("SELEC 1", "invalid SQL"),
        ("SELECT * FROM nowhere", "does not exist"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
        ("SELECT * FROM (SET enable_external_access = true)", "invalid SQL"),
    ],
)
async def test_bad_or_unsafe_sql_is_a_400(
    cloud: Deployment, admin: ApiClient, sql: str, message: str
) -> None:
    with pytest.raises(errors.BadRequest, match=message.replace("(", r"\(")):
        await admin("inventory.query", {"sql": sql})
    # and the service still answers
    assert (await admin("inventory.query", {"sql": "SELECT count(*) FROM hosts"}))["query"][
        "rows"
    ] == [[3]]


async def test_inventory_cli(cloud: Deployment) -> None:
    cli = Cli(cloud)
    table = await cli.ok(
        "inventory", "query", "SELECT name, vcpus FROM hosts WHERE name = ?", "--param", "fake-0002"
    )
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[1::2]]
    assert rows == [["name", "vcpus"], ["fake-0002", "16"]]
    report = await cli.json("inventory", "report", "capacity")
    assert report["name"] == "capacity" and report["columns"][0] == "availability_zone"
