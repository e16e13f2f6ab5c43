"""python-openstackclient's conventions through the real CLI: names, several deletes, list
filters and paging, openstack's command spellings, a readable `server show`."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from hvmesh.core.ops import audit
from tests.support import (
    ApiClient,
    Cli,
    Deployment,
    act,
    boot,
    gone,
    hvmesh,
    make_flavor_image,
    resting,
    settled,
    wait_server,
)

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

DENIED = "error (403): policy does not allow {} for DEMO/demo (roles: member, reader)"


def tenant(dep: Deployment) -> Cli:
    """The CLI as the demo tenant (project DEMO)."""
    cli = Cli(dep)
    cli.auth = [
        "--url",
        dep.server.address,
        "--user",
        "demo",
        "--password",
        dep.server.passwords["demo"],
    ]
    return cli


async def run(cli: Cli, *args: str) -> tuple[int, str, str]:
    return await hvmesh(*args, *cli.auth)


def names(servers: list[dict[str, Any]]) -> list[str]:
    return [s["name"] for s in servers]


async def test_names_work_wherever_a_server_group_or_port_is_taken(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    cli, their = Cli(cloud), tenant(cloud)
    await make_flavor_image(admin)
    await admin("networks.create", {"name": "net1", "cidr": "10.0.0.0/24", "shared": True})
    web = await boot(cloud, admin, "web")
    theirs = await boot(cloud, demo, "web")  # the same name in another project

    # A name is looked up in the caller's own project, the admin's too.
    assert (await cli.json("server", "show", "web"))["id"] == web.id
    assert (await their.json("server", "show", "web"))["id"] == theirs.id
    stopped = await cli.json("server", "stop", "web", "--wait")
    assert (stopped["id"], stopped["status"]) == (web.id, "SHUTOFF")
    assert (await cli.json("server", "event", "list", "web"))[0]["action"] == "stop"
    assert (await cli.json("server", "start", web.id, "--wait"))["status"] == "ACTIVE"
    # By id the admin reaches any project's server; a tenant never sees another's.
    assert (await cli.json("server", "show", theirs.id))["project"] == "DEMO"
    assert await their.fails("server", "show", web.id) == f"error (404): server {web.id} not found"
    only_admin = await boot(cloud, admin, "only-admin")
    line = await their.fails("server", "show", "only-admin")
    assert line == "error (404): server only-admin not found"

    # Two servers of one name: a 409 naming both, oldest first; the id still works.
    twin = await boot(cloud, admin, "web")
    line = await cli.fails("server", "show", "web")
    assert (
        line == f"error (409): more than one server is named 'web': {web.id}, {twin.id}; use an id"
    )
    assert (await cli.fails("server", "delete", "web")).startswith("error (409): more than one")
    assert (await cli.json("server", "show", twin.id))["name"] == "web"

    # Server groups by name, also in `server create --group` and openstack's `server group`.
    group = await cli.json("server-group", "create", "grp", "--policy", "affinity")
    assert (await cli.json("server", "group", "show", "grp"))["id"] == group["id"]
    member = await cli.json(
        "server", "create", "member", "--flavor", "m1.small", "--image", "cirros",
        "--group", "grp", "--network", "net1", "--wait",
    )  # fmt: skip
    assert (await cli.json("server-group", "show", "grp"))["members"] == [member["id"]]

    # Ports by name: show, attach, detach, delete.
    port = await cli.json("port", "create", "--network", "net1", "--name", "p1")
    assert (await cli.json("port", "show", "p1"))["id"] == port["id"]
    await cli.ok("server", "attach-interface", "member", "--port", "p1", "--wait")
    assert (await cli.json("port", "show", "p1"))["server_id"] == member["id"]
    await cli.ok("server", "detach-interface", "member", "--port", "p1", "--wait")
    assert (await cli.json("port", "show", "p1"))["server_id"] is None
    assert (await cli.json("port", "delete", "p1")) == {"deleted": port["id"]}

    await cli.ok("server", "delete", "only-admin", "--wait")
    await wait_server(cloud.store, only_admin.id, gone)
    assert await audit.audit(cloud.store) == []


async def test_admin_lists_its_own_project_unless_all_projects(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    cli, their = Cli(cloud), tenant(cloud)
    await make_flavor_image(admin)
    await boot(cloud, admin, "a1")
    await boot(cloud, demo, "t1")

    assert names(await cli.json("server", "list")) == ["a1"]
    everyone = await cli.json("server", "list", "--all-projects")
    assert sorted((s["name"], s["project"]) for s in everyone) == [("a1", "admin"), ("t1", "DEMO")]
    assert names(await their.json("server", "list")) == ["t1"]
    line = await their.fails("server", "list", "--all-projects")
    assert line == DENIED.format("compute:servers:list:all_projects")
    line = await their.fails("server", "list", "--host", "fake-0001")
    assert line == DENIED.format("compute:servers:list:host")


async def test_delete_takes_several_and_reports_each_failure(
    cloud: Deployment, admin: ApiClient
) -> None:
    cli = Cli(cloud)
    await make_flavor_image(admin)
    first, second = await boot(cloud, admin, "d1"), await boot(cloud, admin, "d2")

    code, out, err = await run(cli, "server", "delete", "d1", "nope", second.id, "-f", "json")
    assert code == 1
    assert err.splitlines() == [
        "error (404): server nope not found",
        "error: Failed to delete 1 of 3 servers",
    ]
    assert json.loads(out) == [{"deleting": first.id}, {"deleting": second.id}]
    for server in (first, second):
        await wait_server(cloud.store, server.id, gone)

    made = [
        (await cli.json("flavor", "create", name, "--vcpus", "1", "--ram", "64"))["id"]
        for name in ("f1", "f2")
    ]
    assert await cli.json("flavor", "delete", "f1", made[1]) == [{"deleted": i} for i in made]
    assert names(await cli.json("flavor", "list")) == ["m1.small"]
    code, _, err = await run(cli, "image", "delete", "gone1", "cirros", "gone2")
    assert code == 1
    assert err.splitlines() == [
        "error (404): image gone1 not found",
        "error (404): image gone2 not found",
        "error: Failed to delete 2 of 3 images",
    ]
    assert await cli.json("image", "list") == []
    # One name that fails is the usual one-line error.
    assert await cli.fails("server", "delete", "nope") == "error (404): server nope not found"


async def test_server_list_filters_and_pages(cloud: Deployment, admin: ApiClient) -> None:
    cli = Cli(cloud)
    await make_flavor_image(admin)
    big = (await admin("flavors.create", {"name": "m1.big", "vcpus": 2, "ram_mb": 1024}))["flavor"]
    await admin("images.create", {"name": "other"})
    small_id = (await admin("flavors.get", {"name": "m1.small"}))["flavor"]["id"]
    web1, web2 = await boot(cloud, admin, "web-1"), await boot(cloud, admin, "web-2")
    db = await boot(cloud, admin, "db-1", flavor="m1.big", image="other")
    await act(admin, db.id, "stop")
    await wait_server(cloud.store, db.id, resting("stopped"))
    everyone = [web1.id, web2.id, db.id]  # oldest first

    async def listed(*args: str) -> list[str]:
        return [s["id"] for s in await cli.json("server", "list", *args)]

    assert await listed() == everyone
    assert await listed("--status", "SHUTOFF") == [db.id]
    assert await listed("--status", "active") == [web1.id, web2.id]
    assert await listed("--name", r"^web-\d$") == [web1.id, web2.id]
    assert await listed("--name", "b-1") == [web1.id, db.id]  # searched, not matched
    assert await listed("--flavor", "m1.big") == [db.id]
    assert await listed("--flavor", small_id) == [web1.id, web2.id]
    assert await listed("--image", "other") == [db.id]
    assert await listed("--image", "cirros", "--status", "SHUTOFF") == []
    on_db_host = [s.id for s in (web1, web2, db) if s.host == db.host]
    assert await listed("--host", db.host or "") == on_db_host
    assert await listed("--host", "nowhere") == []
    assert big["id"] not in await listed()

    # Paging: --limit, then --marker the last id seen, until a page comes back empty.
    for size in ("1", "2"):
        seen: list[str] = []
        page = await listed("--limit", size)
        while page:
            assert len(page) <= int(size)
            seen += page
            page = await listed("--limit", size, "--marker", page[-1])
        assert seen == everyone
    assert await listed("--limit", "-1") == everyone
    assert await listed("--limit", "0") == []
    assert await listed("--name", "web", "--marker", web1.id) == [web2.id]
    assert await listed("--status", "SHUTOFF", "--marker", db.id) == []

    line = await cli.fails("server", "list", "--name", "web(")
    assert line.startswith("error (400): name: 'web(' is not a regular expression: missing )")
    line = await cli.fails("server", "list", "--marker", "nope")
    assert line == "error (400): marker nope not found"

    # The columns: openstack's by default, more with --long.
    rows = (await cli.ok("server", "list", "-f", "value")).splitlines()
    assert rows[0] == f"{web1.id} web-1 ACTIVE  cirros m1.small"
    long_rows = (await cli.ok("server", "list", "--long", "-f", "value")).splitlines()
    assert len(long_rows) == 3
    for row, server in zip(long_rows, (web1, web2, db), strict=True):
        assert row.startswith(f"{server.id} {server.name} ")
        assert f" {server.host} admin " in row
        assert ISO.search(row) is not None
    as_json = await cli.json("server", "list", "--long")
    assert as_json[2]["flavor"] == {"id": big["id"], "name": "m1.big"}  # the API's record


async def test_openstack_spellings(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    cli, their = Cli(cloud), tenant(cloud)
    await make_flavor_image(admin)
    await admin("flavors.create", {"name": "m1.medium", "vcpus": 2, "ram_mb": 1024, "disk_gb": 1})
    vm = await boot(cloud, admin, "vm")

    # server resize SERVER --flavor F, then resize confirm|revert SERVER.
    resized = await cli.json("server", "resize", "vm", "--flavor", "m1.medium", "--wait")
    assert resized["status"] == "VERIFY_RESIZE"
    confirmed = await cli.json("server", "resize", "confirm", "vm", "--wait")
    assert (confirmed["status"], confirmed["flavor"]["name"]) == ("ACTIVE", "m1.medium")
    await cli.ok("server", "resize", "vm", "--flavor", "m1.small", "--wait")
    reverted = await cli.json("server", "resize", "revert", "vm", "--wait")
    assert (reverted["status"], reverted["flavor"]["name"]) == ("ACTIVE", "m1.medium")
    line = await cli.fails("server", "resize", "confirm", "vm", "--flavor", "m1.small")
    assert line == "error: server resize confirm takes no --flavor"
    line = await cli.fails("server", "resize", "vm")
    assert line.startswith("error: server resize: give --flavor FLAVOR")

    # server migrate --live-migration --host H.
    host = reverted["host"]
    target = next(h for h in ("fake-0001", "fake-0002", "fake-0003") if h != host)
    moved = await cli.json(
        "server", "migrate", "vm", "--live-migration", "--host", target, "--wait"
    )
    assert (moved["status"], moved["host"]) == ("ACTIVE", target)

    # console log show SERVER [--lines N].
    console = await cli.ok("console", "log", "show", "vm")
    assert "live migration complete" in console  # the console of its new host
    last = await cli.ok("console", "log", "show", "vm", "--lines", "1")
    assert last.splitlines() == [console.splitlines()[-1]]

    # server set --state error|active: Nova's reset-state.
    assert (await cli.json("server", "set", "--state", "error", "vm"))["status"] == "ERROR"
    assert (await cli.json("server", "set", "--state", "active", "vm"))["status"] == "ACTIVE"
    line = await their.fails("server", "set", "--state", "active", vm.id)
    # reset-state is the admin's: refused by policy whatever the server (no record is told)
    assert line == DENIED.format("compute:servers:action:reset-state")

    # hypervisor show HOST.
    shown = await cli.json("hypervisor", "show", target)
    assert (shown["name"], shown["state"], shown["running_vms"]) == (target, "up", 1)
    assert shown["servers"] == [vm.id] and shown["vcpus_used"] == 2
    assert await cli.fails("hypervisor", "show", "nope") == "error (404): hypervisor nope not found"
    table = await cli.ok("hypervisor", "show", target)
    assert ISO.search(table) is not None  # the last heartbeat

    # availability zone list: the default zone, and the zones of aggregates.
    zones = await cli.json("availability", "zone", "list")
    assert zones == [
        {
            "zone_name": "nova",
            "zone_status": "available",
            "hosts": ["fake-0001", "fake-0002", "fake-0003"],
        }
    ]
    await admin("aggregates.create", {"name": "rack1", "availability_zone": "rack1"})
    zones = await cli.json("availability", "zone", "list")
    assert [(z["zone_name"], z["zone_status"]) for z in zones] == [
        ("nova", "available"),
        ("rack1", "not available"),
    ]
    await admin("aggregates.add_host", {"id": "rack1", "host": "fake-0003"})
    zones = {z["zone_name"]: z for z in await cli.json("availability", "zone", "list")}
    assert (zones["rack1"]["zone_status"], zones["rack1"]["hosts"]) == ("available", ["fake-0003"])
    assert await their.json("availability", "zone", "list") == [
        {"zone_name": "nova", "zone_status": "available"},
        {"zone_name": "rack1", "zone_status": "available"},
    ]

    # compute service list: the API, conductor and scheduler, and one compute per host.
    services = await cli.json("compute", "service", "list")
    by_binary: dict[str, list[dict[str, Any]]] = {}
    for s in services:
        by_binary.setdefault(s["binary"], []).append(s)
    assert sorted(by_binary) == [
        "hvmesh-api",
        "hvmesh-compute",
        "hvmesh-conductor",
        "hvmesh-scheduler",
    ]
    assert [s["host"] for s in by_binary["hvmesh-api"]] == [socket.gethostname()]
    computes = by_binary["hvmesh-compute"]
    assert [(c["host"], c["zone"]) for c in computes] == [
        ("fake-0001", "nova"),
        ("fake-0002", "nova"),
        ("fake-0003", "rack1"),
    ]
    assert all(s["state"] == "up" and s["status"] == "enabled" for s in services)
    table = await cli.ok("compute", "service", "list", "-f", "value")
    assert len(table.splitlines()) == len(services) and ISO.search(table) is not None
    line = await their.fails("compute", "service", "list")
    assert line == DENIED.format("compute:services:list")

    # The old spellings still work.
    await cli.ok("server", "migrate", "vm", "--live", "--wait")
    assert (await cli.ok("server", "console-log", "vm", "--lines", "1")).strip()
    assert (await cli.json("server", "reset-state", "vm"))["status"] == "ERROR"
    assert await audit.audit(cloud.store) == []


async def test_server_show_is_readable(cloud: Deployment, admin: ApiClient) -> None:
    cli = Cli(cloud)
    await make_flavor_image(admin)
    for name, cidr in (("net1", "10.0.0.0/24"), ("net2", "10.1.0.0/24")):
        await admin("networks.create", {"name": name, "cidr": cidr, "shared": True})
    vm = await boot(cloud, admin, "vm", networks=["net1", "net2"])
    ips = [v.ip for v in vm.network_info]

    shown = await cli.ok("server", "show", "vm")
    assert f"net1={ips[0]}; net2={ips[1]}" in shown
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(vm.created_at))
    assert created in shown and str(vm.created_at) not in shown
    listed = await cli.ok("server", "list", "-f", "value")
    assert f"net1={ips[0]}; net2={ips[1]}" in listed
    full = await cli.json("server", "show", "vm")  # the API's record, whole
    assert full["created_at"] == vm.created_at
    assert [a["addr"] for net in ("net1", "net2") for a in full["addresses"][net]] == ips
    assert full["flavor"]["name"] == "m1.small" and "fault" not in full

    # A server that could not be placed: its fault in one readable line.
    await admin("flavors.create", {"name": "huge", "vcpus": 64, "ram_mb": 512})
    big = await admin("servers.create", {"name": "big", "flavor": "huge", "image": "cirros"})
    errored = await wait_server(cloud.store, big["server"]["id"], settled)
    assert errored is not None and errored.fault is not None
    shown = await cli.ok("server", "show", "big")
    fault_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(errored.fault.created_at))
    expected = f"{errored.fault.message} (code {errored.fault.code}, created {fault_at})"
    assert "No valid host was found" in expected and expected in shown
    full = await cli.json("server", "show", "big")
    assert full["fault"]["message"] == errored.fault.message
    assert full["fault"]["created_at"] == errored.fault.created_at
