"""The REST front door's compute admin and shared resources driven by the openstack CLI:
keypairs, hypervisors, availability zones, services, aggregates and server groups."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.rest_support import compute_url, openstack, os_env, sdk, start_rest, token
from tests.support import ApiClient, Deployment


def public_key_file(tmp_path: Path) -> tuple[Path, str]:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = tmp_path / "k1.pub"
    path.write_text(line.decode() + " demo@laptop\n")
    return path, line.decode()


async def test_a_tenant_keeps_keypairs_and_server_groups(cloud: Deployment, tmp_path: Path) -> None:
    rest = await start_rest(cloud)
    demo = os_env(rest, cloud)
    path, line = public_key_file(tmp_path)

    made = await openstack(demo, "keypair", "create", "--public-key", str(path), "k1", "-f", "json")
    assert made["name"] == "k1" and made["type"] == "ssh"
    assert len(made["fingerprint"].split(":")) == 16
    shown = await openstack(demo, "keypair", "show", "k1", "-f", "json")
    assert (shown["name"], shown["user_id"], shown["type"]) == ("k1", "demo", "ssh")
    assert shown["fingerprint"] == made["fingerprint"]

    async with aiohttp.ClientSession() as http:
        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        headers = {"X-Auth-Token": demo_token, "OpenStack-API-Version": "compute 2.2"}
        url = f"{compute_url(rest)}/os-keypairs"
        async with http.get(f"{url}/k1", headers=headers) as r:
            assert r.status == 200 and r.headers["OpenStack-API-Version"] == "compute 2.2"
            assert (await r.json())["keypair"]["public_key"] == f"{line} demo@laptop"
        again = {"keypair": {"name": "k1", "public_key": line}}
        async with http.post(url, json=again, headers=headers) as r:
            assert r.status == 409 and "k1" in (await r.json())["conflictingRequest"]["message"]
        bad = {"keypair": {"name": "k3", "public_key": "not a key"}}
        async with http.post(url, json=bad, headers=headers) as r:
            assert r.status == 400 and "public_key" in (await r.json())["badRequest"]["message"]
        async with http.post(
            url, json={"keypair": {"name": "k1", "type": "x509"}}, headers=headers
        ) as r:
            assert r.status == 400 and "type" in (await r.json())["badRequest"]["message"]
        # Hypervisors are the admin's: a tenant is refused in Nova's shape.
        async with http.get(f"{compute_url(rest)}/os-hypervisors", headers=headers) as r:
            assert r.status == 403, await r.text()
            assert (await r.json())["forbidden"]["code"] == 403
            assert r.headers["x-compute-request-id"].startswith("req-")

    # No public key: the service generates the pair and hands out the private key once.
    conn = sdk(rest, cloud)
    generated = await asyncio.to_thread(lambda: conn.compute.create_keypair(name="k2"))
    private = serialization.load_pem_private_key(generated.private_key.encode(), None)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert generated.public_key.split()[:2] == public.decode().split()
    fetched = await asyncio.to_thread(lambda: conn.compute.get_keypair("k2"))
    assert fetched.fingerprint == generated.fingerprint and fetched.private_key is None

    listed = await openstack(demo, "keypair", "list", "-f", "json")
    assert sorted(k["Name"] for k in listed) == ["k1", "k2"]
    await openstack(demo, "keypair", "delete", "k1", "k2")
    assert await openstack(demo, "keypair", "list", "-f", "json") == []

    group = await openstack(
        demo, "server", "group", "create", "--policy", "anti-affinity", "g1", "-f", "json"
    )
    assert (group["name"], group["policies"], group["members"]) == ("g1", ["anti-affinity"], [])
    (row,) = await openstack(demo, "server", "group", "list", "-f", "json")
    assert (row["ID"], row["Name"], row["Policies"]) == (group["id"], "g1", ["anti-affinity"])
    shown = await openstack(demo, "server", "group", "show", "g1", "-f", "json")
    assert shown["id"] == group["id"] and shown["project_id"] == "DEMO"
    admin = os_env(rest, cloud, "admin", "admin")
    assert await openstack(admin, "server", "group", "list", "-f", "json") == []
    every = await openstack(admin, "server", "group", "list", "--all-projects", "-f", "json")
    assert [g["ID"] for g in every] == [group["id"]]
    await openstack(demo, "server", "group", "delete", "g1")
    assert await openstack(demo, "server", "group", "list", "-f", "json") == []

    zones = await openstack(demo, "availability", "zone", "list", "--compute", "-f", "json")
    assert {(z["Zone Name"], z["Zone Status"]) for z in zones} == {("nova", "available")}


async def test_the_admin_sees_hosts_and_groups_them_in_aggregates(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = os_env(rest, cloud, "admin", "admin")
    nats_admin = ApiClient(await cloud.connect("admin"))
    hosts = sorted(h["name"] for h in (await nats_admin("hypervisors.list", {}))["hypervisors"])
    assert len(hosts) == 3

    listed = await openstack(admin, "hypervisor", "list", "-f", "json")
    assert sorted(h["Hypervisor Hostname"] for h in listed) == hosts
    assert {h["State"] for h in listed} == {"up"}
    first = listed[0]
    shown = await openstack(admin, "hypervisor", "show", first["Hypervisor Hostname"], "-f", "json")
    assert shown["id"] == first["ID"] and shown["state"] == "up" and shown["status"] == "enabled"
    assert shown["vcpus"] > 0 and shown["memory_mb"] > 0 and shown["running_vms"] == 0
    assert shown["service_host"] == first["Hypervisor Hostname"]
    by_id = await openstack(admin, "hypervisor", "show", str(first["ID"]), "-f", "json")
    assert by_id["hypervisor_hostname"] == first["Hypervisor Hostname"]
    stats = await openstack(admin, "hypervisor", "stats", "show", "-f", "json")
    assert stats["count"] == len(hosts) and stats["running_vms"] == 0
    assert stats["vcpus"] >= shown["vcpus"]

    services = await openstack(admin, "compute", "service", "list", "-f", "json")
    computes = [s for s in services if s["Binary"] == "hvmesh-compute"]
    assert sorted(s["Host"] for s in computes) == hosts
    assert {(s["Zone"], s["Status"], s["State"]) for s in computes} == {("nova", "enabled", "up")}
    assert {"hvmesh-api", "hvmesh-scheduler"} <= {s["Binary"] for s in services}

    made = await openstack(admin, "aggregate", "create", "--zone", "rack1", "agg1", "-f", "json")
    assert (made["name"], made["availability_zone"]) == ("agg1", "rack1")
    await openstack(admin, "aggregate", "add", "host", "agg1", hosts[0], "-f", "json")
    await openstack(admin, "aggregate", "set", "--zone", "rack2", "--property", "ssd=true", "agg1")
    shown = await openstack(admin, "aggregate", "show", "agg1", "-f", "json")
    assert shown["hosts"] == [hosts[0]] and shown["id"] == made["id"]
    assert shown["properties"] == {"ssd": "true"}
    (row,) = await openstack(admin, "aggregate", "list", "-f", "json")
    assert (row["ID"], row["Name"], row["Availability Zone"]) == (made["id"], "agg1", "rack2")

    zones = await openstack(
        admin, "availability", "zone", "list", "--compute", "--long", "-f", "json"
    )
    placed = {
        (z["Zone Name"], z["Host Name"]) for z in zones if z["Service Name"] == "hvmesh-compute"
    }
    assert placed == {("rack2", hosts[0])} | {("nova", h) for h in hosts[1:]}

    async with aiohttp.ClientSession() as http:
        admin_token = await token(http, rest, "admin", cloud.server.passwords["admin"], "admin")
        base = compute_url(rest)

        async def call(
            verb: str, path: str, version: str = "2.38", body: dict | None = None
        ) -> tuple[int, dict]:
            headers = {"X-Auth-Token": admin_token, "OpenStack-API-Version": f"compute {version}"}
            async with http.request(verb, base + path, json=body, headers=headers) as r:
                return r.status, (await r.json() if r.content_length else {})

        # Hypervisors page by Nova's integer ids (2.33) and search by name.
        status, page = await call("GET", "/os-hypervisors/detail?limit=2")
        assert (
            status == 200 and [h["hypervisor_hostname"] for h in page["hypervisors"]] == hosts[:2]
        )
        assert page["hypervisors"][0]["service"]["host"] == hosts[0]
        after = page["hypervisors_links"][0]["href"].split("/compute/v2.1", 1)[1]
        assert f"marker={page['hypervisors'][1]['id']}" in after
        status, rest_page = await call("GET", after)
        assert [h["hypervisor_hostname"] for h in rest_page["hypervisors"]] == hosts[2:]
        status, found = await call("GET", f"/os-hypervisors/{hosts[1]}/search")
        assert [h["hypervisor_hostname"] for h in found["hypervisors"]] == [hosts[1]]
        status, fault = await call("GET", "/os-hypervisors/no-such-host")
        assert status == 404 and "no-such-host" in fault["itemNotFound"]["message"]

        # Bad aggregate actions are refused, naming what is wrong, and change nothing.
        status, fault = await call("POST", "/os-aggregates/agg1/action", body={"grow": {}})
        assert status == 400 and "add_host" in fault["badRequest"]["message"]
        add = {"add_host": {"host": "no-such-host"}}
        status, fault = await call("POST", f"/os-aggregates/{made['id']}/action", body=add)
        assert status == 404 and "no-such-host" in fault["itemNotFound"]["message"]
        status, fault = await call("PUT", "/os-aggregates/agg1", body={"aggregate": {"name": "x"}})
        assert status == 501 and "rename" in fault["notImplemented"]["message"]
        status, fault = await call("DELETE", "/os-aggregates/agg1")
        assert status == 409, fault
        status, shown_raw = await call("GET", f"/os-aggregates/{made['id']}")
        assert shown_raw["aggregate"]["hosts"] == [hosts[0]]
        assert shown_raw["aggregate"]["metadata"] == {"availability_zone": "rack2", "ssd": "true"}

        # Soft policies come with 2.15; the services' status is not the API's to change.
        soft = {"server_group": {"name": "g2", "policies": ["soft-anti-affinity"]}}
        status, fault = await call("POST", "/os-server-groups", "2.14", soft)
        assert status == 400 and "policies" in fault["badRequest"]["message"]
        status, made_group = await call("POST", "/os-server-groups", "2.15", soft)
        assert status == 200 and made_group["server_group"]["policies"] == ["soft-anti-affinity"]
        status, _ = await call("DELETE", f"/os-server-groups/{made_group['server_group']['id']}")
        assert status == 204
        disable = {"host": hosts[0], "binary": "hvmesh-compute"}
        status, fault = await call("PUT", "/os-services/disable", body=disable)
        assert status == 501 and fault["notImplemented"]["code"] == 501

    await openstack(admin, "aggregate", "remove", "host", "agg1", hosts[0], "-f", "json")
    await openstack(admin, "aggregate", "delete", "agg1")
    assert await openstack(admin, "aggregate", "list", "-f", "json") == []
