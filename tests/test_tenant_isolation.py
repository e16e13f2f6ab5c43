"""Two tenants and an admin on the shipped nats.conf: each project's records stay its own.

Another project's server, action log, console, snapshot, port, keypair and server group
answer 404 naming the id (never 403: their existence is not told), scheduler hints cannot
name them, a reader lists and shows but never acts, and an admin acts everywhere but
lists other projects' servers only with all_projects.
"""

from __future__ import annotations

from typing import Any

import pytest

from hvmesh.core.protocol import errors
from tests.support import ApiClient, Deployment, act, boot, idle, wait_server
from tests.test_snapshot import start

KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ1bm55IGtleSBmb3IgaHZtZXNoIHRlc3RzIG9ubHkh demo@example"
)


async def tenants(dep: Deployment) -> tuple[ApiClient, ApiClient, ApiClient, ApiClient]:
    """The admin, DEMO's member demo, DEMO's reader viewer, and ALT's member alt."""
    admin, demo, viewer, alt = [
        ApiClient(await dep.connect(user)) for user in ("admin", "demo", "viewer", "alt")
    ]
    return admin, demo, viewer, alt


async def not_found(client: ApiClient, verb: str, body: dict[str, Any], named: str) -> None:
    """`verb` answers 404 and its message names `named`."""
    with pytest.raises(errors.NotFound) as exc:
        await client(verb, body)
    assert named in exc.value.message, exc.value.message


async def demo_records(dep: Deployment, admin: ApiClient, demo: ApiClient) -> dict[str, Any]:
    """DEMO's server (with a snapshot), port, keypair and server group."""
    await admin("networks.create", {"name": "shared", "cidr": "10.30.0.0/24", "shared": True})
    server = await boot(dep, demo, "web")
    snap = await act(demo, server.id, "create-image", name="web-snap")
    rested = await wait_server(dep.store, server.id, idle)
    assert rested is not None and rested.fault is None, rested
    port = (await demo("ports.create", {"network": "shared", "name": "p1"}))["port"]
    await demo("keypairs.create", {"name": "k1", "public_key": KEY})
    group = (await demo("server_groups.create", {"name": "g1", "policy": "affinity"}))[
        "server_group"
    ]
    actions = (await demo("servers.events.list", {"id": server.id}))["instance_actions"]
    assert {a["action"] for a in actions} == {"create", "create-image"}
    return {
        "server": server,
        "image": snap["image_id"],
        "port": port["id"],
        "group": group["id"],
        "request_id": actions[0]["request_id"],
    }


async def test_another_projects_records_are_not_found(deployment: Deployment) -> None:
    await start(deployment)
    admin, demo, _, alt = await tenants(deployment)
    mine = await demo_records(deployment, admin, demo)
    server = mine["server"]
    sid = server.id

    # Every get, update, delete and action on DEMO's records is a 404 for ALT.
    await not_found(alt, "servers.get", {"id": sid}, sid)
    await not_found(alt, "servers.get", {"id": "web"}, "web")  # nor by name
    await not_found(alt, "servers.delete", {"id": sid}, sid)
    for action, extra in (
        ("reboot", {}),
        ("stop", {}),
        ("console-log", {}),
        ("create-image", {"name": "stolen"}),
        ("lock", {}),
        ("rebuild", {"image": "cirros"}),
    ):
        await not_found(alt, "servers.action", {"id": sid, "action": action, **extra}, sid)
    await not_found(alt, "servers.events.list", {"id": sid}, sid)
    body = {"id": sid, "request_id": mine["request_id"]}
    await not_found(alt, "servers.events.get", body, sid)
    await not_found(alt, "images.get", {"id": mine["image"]}, mine["image"])
    await not_found(alt, "images.delete", {"id": mine["image"]}, mine["image"])
    await not_found(alt, "ports.get", {"id": mine["port"]}, mine["port"])
    await not_found(alt, "ports.delete", {"id": mine["port"]}, mine["port"])
    await not_found(alt, "keypairs.get", {"name": "k1"}, "k1")
    await not_found(alt, "keypairs.delete", {"name": "k1"}, "k1")
    await not_found(alt, "server_groups.get", {"id": mine["group"]}, mine["group"])
    await not_found(alt, "server_groups.delete", {"id": mine["group"]}, mine["group"])

    # Lists hold none of them.
    assert (await alt("servers.list"))["servers"] == []
    assert mine["port"] not in {p["id"] for p in (await alt("ports.list"))["ports"]}
    assert (await alt("keypairs.list"))["keypairs"] == []
    groups = (await alt("server_groups.list"))["server_groups"]
    assert mine["group"] not in {g["id"] for g in groups}
    assert mine["image"] not in {i["id"] for i in (await alt("images.list"))["images"]}

    # Scheduler hints cannot name them: as unknown as an id that does not exist.
    boot_body = {"name": "probe", "flavor": "m1.small", "image": "cirros"}
    for hints in ({"same_host": [sid]}, {"different_host": [sid]}, {"group": mine["group"]}):
        with pytest.raises(errors.BadRequest) as exc:
            await alt("servers.create", {**boot_body, "scheduler_hints": hints})
        assert sid in exc.value.message or mine["group"] in exc.value.message
    with pytest.raises(errors.BadRequest, match="server nosuch not found"):
        await alt("servers.create", {**boot_body, "scheduler_hints": {"same_host": ["nosuch"]}})
    assert (await alt("servers.list"))["servers"] == []
    # DEMO's own hints on its own server still place next to it.
    near = await boot(deployment, demo, "near", scheduler_hints={"same_host": [sid]})
    assert near.host == server.host

    # Nothing of DEMO's changed.
    after = (await deployment.store.servers.get(sid)).value
    assert after.vm_state == "active" and after.locked_by is None and after.host == server.host
    assert (await demo("ports.get", {"id": mine["port"]}))["port"]["id"] == mine["port"]
    assert (await demo("keypairs.get", {"name": "k1"}))["keypair"]["name"] == "k1"
    assert (await demo("server_groups.get", {"id": mine["group"]}))["server_group"]["id"]
    assert (await demo("images.get", {"id": mine["image"]}))["image"]["status"] == "active"
    assert len((await demo("servers.events.list", {"id": sid}))["instance_actions"]) == 2


async def test_a_reader_lists_and_shows_but_never_acts(deployment: Deployment) -> None:
    await start(deployment)
    _, demo, viewer, _ = await tenants(deployment)
    server = await boot(deployment, demo, "web")

    listed = (await viewer("servers.list"))["servers"]
    assert [s["id"] for s in listed] == [server.id]
    assert (await viewer("servers.get", {"id": server.id}))["server"]["name"] == "web"
    assert (await viewer("servers.events.list", {"id": server.id}))["instance_actions"]
    assert [f["name"] for f in (await viewer("flavors.list"))["flavors"]] == ["m1.small"]
    assert (await viewer("quotas.show"))["quota_set"]["id"] == "DEMO"

    boot_body = {"name": "x", "flavor": "m1.small", "image": "cirros"}
    refused = [
        ("servers.create", boot_body, "compute:servers:create"),
        ("servers.delete", {"id": server.id}, "compute:servers:delete"),
        ("servers.action", {"id": server.id, "action": "reboot"}, "compute:servers:action:reboot"),
        ("servers.action", {"id": server.id, "action": "stop"}, "compute:servers:action:stop"),
        (
            "servers.action",
            {"id": server.id, "action": "console-log"},
            "compute:servers:action:console-log",
        ),
        ("keypairs.create", {"name": "k", "public_key": KEY}, "compute:keypairs:create"),
        (
            "server_groups.create",
            {"name": "g", "policy": "affinity"},
            "compute:server_groups:create",
        ),
    ]
    for verb, body, rule in refused:
        with pytest.raises(errors.Forbidden) as exc:
            await viewer(verb, body)
        assert exc.value.message == (
            f"policy does not allow {rule} for DEMO/viewer (roles: reader)"
        ), exc.value.message

    # Nothing happened: one server, resting as it was, only its create in the log.
    assert [s["id"] for s in (await demo("servers.list"))["servers"]] == [server.id]
    now = (await deployment.store.servers.get(server.id)).value
    assert now.vm_state == "active" and now.task_state is None
    actions = (await demo("servers.events.list", {"id": server.id}))["instance_actions"]
    assert [a["action"] for a in actions] == ["create"]
    assert (await demo("keypairs.list"))["keypairs"] == []


async def test_an_admin_acts_everywhere_and_lists_others_only_with_all_projects(
    deployment: Deployment,
) -> None:
    await start(deployment)
    admin, demo, _, alt = await tenants(deployment)
    theirs = await boot(deployment, demo, "demo-vm")
    others = await boot(deployment, alt, "alt-vm")
    own = await boot(deployment, admin, "admin-vm")

    assert [s["id"] for s in (await admin("servers.list"))["servers"]] == [own.id]
    every = (await admin("servers.list", {"all_projects": True}))["servers"]
    assert {(s["id"], s["project"]) for s in every} == {
        (theirs.id, "DEMO"),
        (others.id, "ALT"),
        (own.id, "admin"),
    }
    with pytest.raises(errors.Forbidden, match="compute:servers:list:all_projects"):
        await demo("servers.list", {"all_projects": True})

    # The admin shows, acts on and deletes any project's server.
    assert (await admin("servers.get", {"id": theirs.id}))["server"]["project"] == "DEMO"
    await act(admin, theirs.id, "stop")
    stopped = await wait_server(deployment.store, theirs.id, idle)
    assert stopped is not None and stopped.vm_state == "stopped"
    await admin("servers.delete", {"id": others.id})
    await wait_server(deployment.store, others.id, lambda s: s is None)
    assert (await alt("servers.list"))["servers"] == []
    # The stop is in DEMO's log, by the admin.
    log = (await demo("servers.events.list", {"id": theirs.id}))["instance_actions"]
    assert [(a["action"], a["project"]) for a in log] == [("stop", "admin"), ("create", "DEMO")]
