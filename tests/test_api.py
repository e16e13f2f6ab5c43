"""Boot, list, show and delete through the API; projects; allocations freed on delete."""

from __future__ import annotations

import json

import pytest

from hvmesh.core.ops import audit
from hvmesh.core.protocol import errors
from tests.support import (
    ApiClient,
    Cli,
    Deployment,
    gone,
    hvmesh,
    make_flavor_image,
    settled,
    wait_all,
    wait_server,
)


async def test_boot_show_list_delete(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin, vcpus=2, ram=1024, disk=10)
    created = (
        await admin("servers.create", {"name": "vm1", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    assert created["status"] == "BUILD"
    assert created["task_state"] == "scheduling"

    server = await wait_server(cloud.store, created["id"], settled)
    assert server is not None and server.vm_state == "active"

    shown = (await admin("servers.get", {"id": created["id"]}))["server"]
    assert shown["status"] == "ACTIVE"
    assert shown["power_state"] == 1
    assert shown["host"].startswith("fake-")
    listed = (await admin("servers.list"))["servers"]
    assert [s["id"] for s in listed] == [created["id"]]

    host = (await cloud.store.hosts.get(shown["host"])).value
    assert host.allocations == {created["id"]: {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 10}}
    hypervisors = {h["name"]: h for h in (await admin("hypervisors.list"))["hypervisors"]}
    assert len(hypervisors) == 3
    assert all(h["state"] == "up" and h["status"] == "enabled" for h in hypervisors.values())

    deleting = (await admin("servers.delete", {"id": created["id"]}))["server"]
    assert deleting["task_state"] == "deleting"
    await wait_server(cloud.store, created["id"], gone)
    host = (await cloud.store.hosts.get(shown["host"])).value
    assert host.allocations == {}
    assert (await admin("servers.list"))["servers"] == []
    with pytest.raises(errors.NotFound):
        await admin("servers.get", {"id": created["id"]})
    assert await audit.audit(cloud.store) == []


async def test_records_are_scoped_to_the_callers_project(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    mine = (await demo("servers.create", {"name": "t1", "flavor": "m1.small", "image": "cirros"}))[
        "server"
    ]
    theirs = (
        await admin("servers.create", {"name": "a1", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    assert mine["project"] == "DEMO"
    assert mine["user"] == "demo"
    assert "host" not in mine  # tenants do not see host names
    assert theirs["project"] == "admin"

    assert [s["id"] for s in (await demo("servers.list"))["servers"]] == [mine["id"]]
    assert [s["id"] for s in (await admin("servers.list"))["servers"]] == [theirs["id"]]
    everyone = (await admin("servers.list", {"all_projects": True}))["servers"]
    assert {s["id"] for s in everyone} == {mine["id"], theirs["id"]}
    with pytest.raises(errors.NotFound):
        await demo("servers.get", {"id": theirs["id"]})
    with pytest.raises(errors.NotFound):
        await demo("servers.delete", {"id": theirs["id"]})
    with pytest.raises(errors.Forbidden):
        await demo("hypervisors.list")
    with pytest.raises(errors.Forbidden):
        await demo("flavors.create", {"name": "x", "vcpus": 1, "ram_mb": 1})
    for sid in (mine["id"], theirs["id"]):
        await wait_server(cloud.store, sid, settled)


async def test_a_tenant_cannot_forge_its_project(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    forged = json.dumps({"acc": "HVMESH", "user": "admin"})
    created = (
        await demo(
            "servers.create",
            {"name": "sneaky", "flavor": "m1.small", "image": "cirros"},
            headers={"Nats-Request-Info": forged},
        )
    )["server"]
    assert created["project"] == "DEMO"
    await wait_server(cloud.store, created["id"], settled)


async def test_no_valid_host_sets_error_with_fault(cloud: Deployment, admin: ApiClient) -> None:
    await admin("flavors.create", {"name": "huge", "vcpus": 1, "ram_mb": 10_000_000, "disk_gb": 1})
    await admin("images.create", {"name": "cirros"})
    created = (await admin("servers.create", {"name": "big", "flavor": "huge", "image": "cirros"}))[
        "server"
    ]
    server = await wait_server(cloud.store, created["id"], settled)
    assert server is not None and server.vm_state == "error"
    shown = (await admin("servers.get", {"id": created["id"]}))["server"]
    assert shown["status"] == "ERROR"
    assert shown["fault"]["message"].startswith("No valid host was found")
    # An ERROR server without a host can be deleted, and nothing stays allocated.
    await admin("servers.delete", {"id": created["id"]})
    await wait_server(cloud.store, created["id"], gone)
    assert await audit.audit(cloud.store) == []


async def test_availability_zone_is_honoured(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core()
    await deployment.start_agent(
        "az1-host", deployment.config(compute={"availability_zone": "az1"})
    )
    await deployment.start_agent(
        "az2-host", deployment.config(compute={"availability_zone": "az2"})
    )
    await make_flavor_image(admin)
    # The API's index learns of both zones through its watch.
    created = None
    for zone, host in (("az2", "az2-host"), ("az1", "az1-host")):
        body = {"name": zone, "flavor": "m1.small", "image": "cirros", "availability_zone": zone}
        created = (await admin("servers.create", body))["server"]
        server = await wait_server(deployment.store, created["id"], settled)
        assert server is not None and server.host == host
    with pytest.raises(errors.BadRequest, match="availability_zone 'nowhere' does not exist"):
        await admin(
            "servers.create",
            {"name": "x", "flavor": "m1.small", "image": "cirros", "availability_zone": "nowhere"},
        )


async def test_flavor_and_image_crud(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    flavor = (await admin("flavors.create", {"name": "m1.tiny", "vcpus": 1, "ram_mb": 256}))[
        "flavor"
    ]
    assert (await admin("flavors.get", {"id": flavor["id"]}))["flavor"]["name"] == "m1.tiny"
    assert (await demo("flavors.get", {"name": "m1.tiny"}))["flavor"]["id"] == flavor["id"]
    with pytest.raises(errors.Conflict):
        await admin("flavors.create", {"name": "m1.tiny", "vcpus": 1, "ram_mb": 256})
    private = (await demo("images.create", {"name": "mine", "visibility": "private"}))["image"]
    assert private["project"] == "DEMO"
    assert [i["name"] for i in (await demo("images.list"))["images"]] == ["mine"]
    assert [i["name"] for i in (await admin("images.list"))["images"]] == ["mine"]
    with pytest.raises(errors.Forbidden):
        await demo("images.create", {"name": "pub", "visibility": "public"})
    await demo("images.delete", {"id": private["id"]})
    assert (await demo("images.list"))["images"] == []
    hidden = (
        await admin(
            "flavors.create", {"name": "secret", "vcpus": 1, "ram_mb": 64, "is_public": False}
        )
    )["flavor"]
    assert [f["name"] for f in (await demo("flavors.list"))["flavors"]] == ["m1.tiny"]
    for ref in ({"id": hidden["id"]}, {"name": "secret"}):
        with pytest.raises(errors.NotFound):
            await demo("flavors.get", ref)
    with pytest.raises(errors.BadRequest, match="flavor secret not found"):
        await demo("servers.create", {"name": "x", "flavor": "secret", "image": "cirros"})
    # Extra specs are set and removed by the admin, checked as at create.
    specs = {"id": "m1.tiny", "extra_specs": {"quota:cpu_shares": "512", "hw:a": "b"}}
    assert (await admin("flavors.set_extra_specs", specs))["flavor"]["extra_specs"] == {
        "quota:cpu_shares": "512",
        "hw:a": "b",
    }
    gone = {"id": "m1.tiny", "extra_specs": {"hw:a": None}}
    assert (await admin("flavors.set_extra_specs", gone))["flavor"]["extra_specs"] == {
        "quota:cpu_shares": "512"
    }
    with pytest.raises(errors.Forbidden):
        await demo("flavors.set_extra_specs", specs)
    bad = {"id": "m1.tiny", "extra_specs": {"resources:CUSTOM_GPU": "0"}}
    with pytest.raises(errors.BadRequest, match="extra_specs"):
        await admin("flavors.set_extra_specs", bad)
    assert (await admin("flavors.get", {"name": "m1.tiny"}))["flavor"]["extra_specs"] == {
        "quota:cpu_shares": "512"
    }
    cli = Cli(cloud)
    await cli.ok("flavor", "set", "m1.tiny", "--property", "quota:vif_inbound_average=10")
    shown = await cli.json("flavor", "unset", "m1.tiny", "--property", "quota:cpu_shares")
    assert shown["extra_specs"] == {"quota:vif_inbound_average": "10"}
    await admin("flavors.delete", {"name": "m1.tiny"})
    with pytest.raises(errors.NotFound):
        await admin("flavors.get", {"id": flavor["id"]})


async def test_services_answer_the_micro_protocol(cloud: Deployment, admin: ApiClient) -> None:
    """What `nats micro ls|info|stats` reads: $SRV.PING/INFO/STATS of each service."""
    info = json.loads((await admin.nc.request("$SRV.INFO.hvmesh-api", b"", timeout=5)).data)
    assert info["name"] == "hvmesh-api"
    assert info["metadata"]["min_version"] == "1.0"
    subjects = {e["subject"] for e in info["endpoints"]}
    assert "hvmesh.api.servers.create" in subjects and "hvmesh.api.hypervisors.list" in subjects
    assert all(e["queue_group"] == "hvmesh-api" for e in info["endpoints"])
    sched = json.loads((await admin.nc.request("$SRV.INFO.hvmesh-scheduler", b"", timeout=5)).data)
    assert [e["subject"] for e in sched["endpoints"]] == ["hvmesh.sched.select"]

    await admin("flavors.list")
    with pytest.raises(errors.NotFound):
        await admin("flavors.get", {"id": "missing"})
    stats = json.loads((await admin.nc.request("$SRV.STATS.hvmesh-api", b"", timeout=5)).data)
    by_name = {e["name"]: e for e in stats["endpoints"]}
    assert by_name["flavors-list"]["num_requests"] == 1
    assert by_name["flavors-get"]["num_requests"] == 1
    assert by_name["flavors-get"]["num_errors"] == 1
    assert by_name["flavors-get"]["last_error"] == "404:flavor missing not found"
    assert by_name["flavors-list"]["num_errors"] == 0
    assert by_name["flavors-list"]["processing_time"] > 0


async def test_a_server_is_renamed_and_its_metadata_set(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    body = {"name": "old", "flavor": "m1.small", "image": "cirros", "metadata": {"a": "1"}}
    server = (await demo("servers.create", body))["server"]
    sid = server["id"]
    await wait_server(cloud.store, sid, settled)

    renamed = await demo("servers.update", {"id": sid, "name": "new", "metadata": {"b": "2"}})
    assert (renamed["server"]["name"], renamed["server"]["metadata"]) == (
        "new",
        {"a": "1", "b": "2"},
    )
    update = {"id": sid, "metadata": {"a": None, "c": "3"}}  # null removes a key
    assert (await demo("servers.update", update))["server"]["metadata"] == {"b": "2", "c": "3"}
    update = {"id": sid, "metadata": {"z": "9"}, "replace_metadata": True}
    assert (await demo("servers.update", update))["server"]["metadata"] == {"z": "9"}
    listed = (await demo("servers.list", {"name": "^new$"}))["servers"]
    assert [s["id"] for s in listed] == [sid]

    # Bad input changes nothing; another project's server is not there; a reader may not.
    with pytest.raises(errors.BadRequest, match="nothing to update"):
        await demo("servers.update", {"id": sid})
    with pytest.raises(errors.BadRequest):
        await demo("servers.update", {"id": sid, "name": ""})
    await admin("quotas.set", {"project": "DEMO", "metadata_items": 2})
    too_many = {"id": sid, "metadata": {"x": "1", "y": "2"}}
    with pytest.raises(errors.Forbidden, match="metadata_items"):
        await demo("servers.update", too_many)
    with pytest.raises(errors.NotFound):
        await ApiClient(await cloud.connect("alt"))("servers.update", {"id": sid, "name": "x"})
    with pytest.raises(errors.Forbidden):
        await ApiClient(await cloud.connect("viewer"))("servers.update", {"id": sid, "name": "x"})
    after = (await demo("servers.get", {"id": sid}))["server"]
    assert (after["name"], after["metadata"]) == ("new", {"z": "9"})

    # The CLI: server set --name/--property, server unset --property.
    cli = Cli(cloud)
    auth = ["--user", "demo", "--password", cloud.server.passwords["demo"]]
    auth = [*cli.auth[:2], *auth]
    code, out, err = await hvmesh("server", "set", sid, "--name", "cli", "--property", "k=v", *auth)
    assert code == 0, err
    code, out, err = await hvmesh("server", "unset", sid, "--property", "z", "-f", "json", *auth)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["name"], shown["metadata"]) == ("cli", {"k": "v"})
    code, out, err = await hvmesh("server", "set", sid, *auth)
    assert code == 1 and "give --name, --property KEY=VALUE or --state" in err


async def test_a_disabled_compute_service_gets_no_new_servers(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    hosts = sorted((await admin("hypervisors.list"))["hypervisors"], key=lambda h: h["name"])
    keep, *off = [h["name"] for h in hosts]
    cli = Cli(cloud)
    for host in off:
        await cli.ok("compute", "service", "set", host, "--disable", "--disable-reason", "maint")
    rows = {s["host"]: s for s in await cli.json("compute", "service", "list")}
    assert [(rows[h]["status"], rows[h]["disabled_reason"]) for h in off] == [
        ("disabled", "maint")
    ] * len(off)

    body = {"name": "d", "flavor": "m1.small", "image": "cirros", "min_count": 3}
    made = await demo("servers.create", body)
    placed = await wait_all(cloud.store, {s["id"] for s in made["servers"]}, settled)
    assert {s.host for s in placed.values() if s is not None} == {keep}

    # Bad input and a tenant change nothing; enabling again clears the reason.
    with pytest.raises(errors.BadRequest, match="disabled_reason"):
        await admin("services.set", {"host": keep, "status": "enabled", "disabled_reason": "x"})
    with pytest.raises(errors.NotFound):
        await admin("services.set", {"host": "no-such-host", "status": "disabled"})
    with pytest.raises(errors.Forbidden):
        await demo("services.set", {"host": keep, "status": "disabled"})
    code, _, err = await hvmesh("compute", "service", "set", keep, *cli.auth)
    assert code == 1 and "give --enable or --disable" in err
    await cli.ok("compute", "service", "set", off[0], "--enable")
    back = (await admin("hypervisors.get", {"id": off[0]}))["hypervisor"]
    assert (back["status"], back["disabled_reason"]) == ("enabled", None)
    assert (await admin("hypervisors.get", {"id": keep}))["hypervisor"]["status"] == "enabled"
