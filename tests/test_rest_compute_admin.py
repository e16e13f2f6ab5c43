"""The REST front door's compute admin and shared resources driven by the openstack CLI:
keypairs, hypervisors, availability zones, services, aggregates and server groups."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.rest_support import compute_url, openstack, os_env, sdk, start_rest, token
from tests.support import ApiClient, Deployment, boot, make_flavor_image


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

    # The CLI speaks 2.64: one `policy` and its `rules`.
    group = await openstack(
        demo,
        "server",
        "group",
        "create",
        "--policy",
        "anti-affinity",
        "--rule",
        "max_server_per_host=2",
        "g1",
        "-f",
        "json",
    )
    assert (group["name"], group["policy"], group["members"]) == ("g1", "anti-affinity", [])
    assert group["rules"] == {"max_server_per_host": 2} and "policies" not in group
    (row,) = await openstack(demo, "server", "group", "list", "-f", "json")
    assert (row["ID"], row["Name"], row["Policy"]) == (group["id"], "g1", "anti-affinity")
    shown = await openstack(demo, "server", "group", "show", "g1", "-f", "json")
    assert shown["id"] == group["id"] and shown["project_id"] == "DEMO"
    nats_demo = ApiClient(await cloud.connect("demo"))
    kept = (await nats_demo("server_groups.get", {"id": group["id"]}))["server_group"]
    assert kept["max_server_per_host"] == 2
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
    # The CLI speaks 2.88: UUID ids, and no capacity (Nova leaves that to placement).
    assert str(uuid.UUID(shown["id"])) == shown["id"] and "vcpus" not in shown
    assert shown["service_host"] == first["Hypervisor Hostname"]
    by_id = await openstack(admin, "hypervisor", "show", first["ID"], "-f", "json")
    assert by_id["hypervisor_hostname"] == first["Hypervisor Hostname"]
    matching = await openstack(admin, "hypervisor", "list", "--matching", hosts[1], "-f", "json")
    assert [h["Hypervisor Hostname"] for h in matching] == [hosts[1]]
    stats = await openstack(admin, "hypervisor", "stats", "show", "-f", "json")
    assert stats["count"] == len(hosts) and stats["running_vms"] == 0
    assert stats["vcpus"] > 0

    services = await openstack(admin, "compute", "service", "list", "-f", "json")
    computes = [s for s in services if s["Binary"] == "hvmesh-compute"]
    assert sorted(s["Host"] for s in computes) == hosts
    assert {(s["Zone"], s["Status"], s["State"]) for s in computes} == {("nova", "enabled", "up")}
    assert {"hvmesh-api", "hvmesh-scheduler"} <= {s["Binary"] for s in services}
    # 2.53's UUIDs: a hypervisor's service is its host's compute row.
    (own,) = [s for s in computes if s["Host"] == first["Hypervisor Hostname"]]
    assert own["ID"] == shown["service_id"] and str(uuid.UUID(own["ID"])) == own["ID"]

    made = await openstack(admin, "aggregate", "create", "--zone", "rack1", "agg1", "-f", "json")
    assert (made["name"], made["availability_zone"]) == ("agg1", "rack1")
    await openstack(admin, "aggregate", "add", "host", "agg1", hosts[0], "-f", "json")
    await openstack(admin, "aggregate", "set", "--zone", "rack2", "--property", "ssd=true", "agg1")
    shown = await openstack(admin, "aggregate", "show", "agg1", "-f", "json")
    assert shown["hosts"] == [hosts[0]] and shown["id"] == made["id"]
    assert shown["properties"] == {"ssd": "true"}
    (row,) = await openstack(admin, "aggregate", "list", "-f", "json")
    assert (row["ID"], row["Name"], row["Availability Zone"]) == (made["id"], "agg1", "rack2")
    kept = (await nats_admin("aggregates.get", {"id": "agg1"}))["aggregate"]
    assert row["UUID"] == made["uuid"] == kept["id"]  # 2.41

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
        # Services: disabled and enabled again, the old way (before 2.53) and by UUID.
        disable = {"host": hosts[0], "binary": "hvmesh-compute", "disabled_reason": "maint"}
        status, done = await call("PUT", "/os-services/disable-log-reason", body=disable)
        assert status == 200 and done["service"] == {**disable, "status": "disabled"}
        status, fault = await call(
            "PUT", "/os-services/force-down", "2.11", {**disable, "forced_down": True}
        )
        assert status == 400 and "forced_down" in fault["badRequest"]["message"]
        status, listed = await call("GET", "/os-services?binary=hvmesh-compute", "2.53")
        (row,) = [r for r in listed["services"] if r["host"] == hosts[0]]
        assert (row["status"], row["disabled_reason"]) == ("disabled", "maint")
        status, done = await call("PUT", f"/os-services/{row['id']}", "2.53", {"status": "enabled"})
        assert status == 200 and (
            done["service"]["status"],
            done["service"]["disabled_reason"],
        ) == ("enabled", None)
        status, _ = await call("PUT", "/os-services/disable", "2.53", {"host": hosts[0]})
        assert status == 404  # the action paths end at 2.53

    await openstack(admin, "aggregate", "remove", "host", "agg1", hosts[0], "-f", "json")
    await openstack(admin, "aggregate", "delete", "agg1")
    assert await openstack(admin, "aggregate", "list", "-f", "json") == []


async def test_admin_shapes_follow_the_microversion(cloud: Deployment, tmp_path: Path) -> None:
    rest = await start_rest(cloud)
    nats_admin = ApiClient(await cloud.connect("admin"))
    await make_flavor_image(nats_admin)
    server = await boot(cloud, ApiClient(await cloud.connect("demo")))
    busy = server.host
    hosts = sorted(h["name"] for h in (await nats_admin("hypervisors.list", {}))["hypervisors"])
    _, line = public_key_file(tmp_path)

    async with aiohttp.ClientSession() as http:
        tokens = {
            user: await token(http, rest, user, cloud.server.passwords[user], project)
            for user, project in (("admin", "admin"), ("demo", "DEMO"))
        }
        base = compute_url(rest)

        async def call(
            version: str, verb: str, path: str, body: dict | None = None, user: str = "admin"
        ) -> tuple[int, dict]:
            headers = {"X-Auth-Token": tokens[user], "OpenStack-API-Version": f"compute {version}"}
            async with http.request(verb, base + path, json=body, headers=headers) as r:
                if r.status < 400:
                    assert r.headers["OpenStack-API-Version"] == f"compute {version}"
                return r.status, (await r.json() if r.content_length else {})

        def by_host(page: dict) -> dict[str, dict]:
            return {h["hypervisor_hostname"]: h for h in page["hypervisors"]}

        # Hypervisors: integer ids and the search and servers routes up to 2.52 ...
        status, old = await call("2.52", "GET", "/os-hypervisors?hypervisor_hostname_pattern=x")
        assert status == 200 and sorted(by_host(old)) == hosts  # the query is 2.53's
        assert all(isinstance(h["id"], int) for h in old["hypervisors"])
        status, found = await call("2.52", "GET", f"/os-hypervisors/{busy}/servers")
        (hit,) = found["hypervisors"]
        assert hit["servers"] == [{"name": server.id, "uuid": server.id}]
        # ... UUIDs from 2.53, the same in every answer, with query parameters instead.
        status, new = await call("2.53", "GET", "/os-hypervisors/detail?with_servers=true")
        assert status == 200 and sorted(by_host(new)) == hosts
        ids = {h["hypervisor_hostname"]: h["id"] for h in new["hypervisors"]}
        assert all(str(uuid.UUID(i)) == i for i in ids.values())
        assert by_host(new)[busy]["servers"] == [{"name": server.id, "uuid": server.id}]
        assert all("servers" not in h for n, h in by_host(new).items() if n != busy)
        status, again = await call("2.53", "GET", f"/os-hypervisors/{ids[busy]}")
        assert status == 200 and again["hypervisor"]["hypervisor_hostname"] == busy
        assert again["hypervisor"]["vcpus"] > 0 and again["hypervisor"]["running_vms"] == 1
        status, page = await call("2.53", "GET", "/os-hypervisors?limit=2")
        after = page["hypervisors_links"][0]["href"].split("/compute/v2.1", 1)[1]
        assert f"marker={ids[hosts[1]]}" in after
        status, rest_page = await call("2.53", "GET", after)
        assert [h["id"] for h in rest_page["hypervisors"]] == [ids[hosts[2]]]
        status, one = await call(
            "2.53", "GET", f"/os-hypervisors?hypervisor_hostname_pattern={busy}"
        )
        assert [h["id"] for h in one["hypervisors"]] == [ids[busy]]
        for path, code, words in (
            ("/os-hypervisors?hypervisor_hostname_pattern=nope", 404, "nope"),
            ("/os-hypervisors?hypervisor_hostname_pattern=f&limit=1", 400, "Paging"),
            ("/os-hypervisors?with_servers=maybe", 400, "with_servers"),
            ("/os-hypervisors/detail?sort=name", 400, "sort"),
            (f"/os-hypervisors/{busy}/search", 404, "2.53"),
            (f"/os-hypervisors/{busy}/servers", 404, "2.53"),
            ("/os-hypervisors/12345", 400, "Invalid uuid 12345"),
        ):
            status, fault = await call("2.53", "GET", path)
            assert status == code and words in str(fault), (path, fault)
        status, empty = await call("2.75", "GET", "/os-hypervisors?with_servers=1")
        # 2.75: `servers` whenever asked, empty on the idle hosts
        assert [h["servers"] for n, h in by_host(empty).items() if n != busy] == [[], []]

        # 2.88 drops the capacity fields, the statistics and the uptime route; uptime is null.
        status, v287 = await call("2.87", "GET", f"/os-hypervisors/{ids[busy]}")
        assert (
            v287["hypervisor"]["cpu_info"]["arch"] is not None
            and "uptime" not in v287["hypervisor"]
        )
        status, _ = await call("2.87", "GET", "/os-hypervisors/statistics")
        assert status == 200
        status, fault = await call("2.87", "GET", f"/os-hypervisors/{ids[busy]}/uptime")
        assert status == 501
        status, v288 = await call("2.88", "GET", f"/os-hypervisors/{ids[busy]}")
        gone = {"vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used", "local_gb_used"}
        gone |= {"free_ram_mb", "free_disk_gb", "current_workload", "running_vms", "cpu_info"}
        assert not gone & set(v288["hypervisor"]) and v288["hypervisor"]["uptime"] is None
        assert v288["hypervisor"]["service"]["host"] == busy
        for path in ("/os-hypervisors/statistics", f"/os-hypervisors/{ids[busy]}/uptime"):
            status, fault = await call("2.88", "GET", path)
            assert status == 404 and "2.88" in fault["itemNotFound"]["message"]

        # Services: integer ids before 2.53, then the UUIDs hypervisors name their service by.
        status, old_services = await call("2.52", "GET", "/os-services?binary=hvmesh-compute")
        assert all(isinstance(s["id"], int) for s in old_services["services"])
        status, services = await call("2.100", "GET", f"/os-services?host={busy}")
        (row,) = services["services"]
        assert row["id"] == v288["hypervisor"]["service"]["id"] and row["forced_down"] is False
        status, _ = await call("2.74", "GET", "/os-services?zone=nova")
        assert status == 200
        status, fault = await call("2.75", "GET", "/os-services?zone=nova")
        assert status == 400 and "zone" in fault["badRequest"]["message"]

        # Aggregates: `uuid` from 2.41; image caching (2.81) is checked, then not implemented.
        made = {"aggregate": {"name": "agg2"}}
        status, old_agg = await call("2.40", "POST", "/os-aggregates", made)
        agg = old_agg["aggregate"]
        assert status == 200 and "uuid" not in agg
        status, new_agg = await call("2.41", "GET", f"/os-aggregates/{agg['id']}")
        kept = (await nats_admin("aggregates.get", {"id": "agg2"}))["aggregate"]
        assert new_agg["aggregate"]["uuid"] == kept["id"]
        images = f"/os-aggregates/{agg['id']}/images"
        status, _ = await call("2.80", "POST", images, {"cache": [{"id": "a"}]})
        assert status == 404
        for body, code, words in (
            ({"cache": []}, 400, "cache"),
            ({"cache": [{"id": "a"}, {"id": "a"}]}, 400, "Duplicate"),
            ({"cache": [{"image": "a"}]}, 400, "image"),
            ({"cache": [{"id": "a"}]}, 501, "cache"),
        ):
            status, fault = await call("2.81", "POST", images, body)
            assert status == code and words in str(fault), (body, fault)
        status, _ = await call("2.81", "DELETE", f"/os-aggregates/{agg['id']}")
        assert status == 200

        # Server groups: `policies` and `metadata` up to 2.63, `policy` and `rules` from 2.64.
        groups = "/os-server-groups"
        status, g63 = await call(
            "2.63",
            "POST",
            groups,
            {"server_group": {"name": "g", "policies": ["affinity"]}},
            "demo",
        )
        assert status == 200 and (
            g63["server_group"]["policies"],
            g63["server_group"]["metadata"],
        ) == (["affinity"], {})
        gid = g63["server_group"]["id"]
        status, g64 = await call("2.64", "GET", f"{groups}/{gid}", user="demo")
        assert (g64["server_group"]["policy"], g64["server_group"]["rules"]) == ("affinity", {})
        assert not {"policies", "metadata"} & set(g64["server_group"])
        for version, inner, words in (
            ("2.63", {"name": "x", "policy": "affinity"}, "policy"),
            ("2.64", {"name": "x", "policies": ["affinity"]}, "policies"),
            (
                "2.64",
                {"name": "x", "policy": "affinity", "rules": {"max_server_per_host": 2}},
                "anti-affinity",
            ),
            (
                "2.64",
                {"name": "x", "policy": "anti-affinity", "rules": {"max_server_per_host": 0}},
                "max_server_per_host",
            ),
            ("2.64", {"name": "x", "policy": "anti-affinity", "rules": {"spread": 1}}, "spread"),
        ):
            status, fault = await call(version, "POST", groups, {"server_group": inner}, "demo")
            assert status == 400 and words in fault["badRequest"]["message"], (inner, fault)
        status, _ = await call("2.74", "GET", f"{groups}?sort=name", user="demo")
        assert status == 200
        status, fault = await call("2.75", "GET", f"{groups}?sort=name", user="demo")
        assert status == 400 and "sort" in fault["badRequest"]["message"]

        # Keypairs: generated up to 2.91, imported only from 2.92, which also allows "@" and ".".
        keys = "/os-keypairs"
        status, made_key = await call("2.91", "POST", keys, {"keypair": {"name": "gen"}}, "demo")
        assert status == 201 and "private_key" in made_key["keypair"]
        status, fault = await call("2.92", "POST", keys, {"keypair": {"name": "gen2"}}, "demo")
        assert status == 400 and "public_key" in fault["badRequest"]["message"]
        dotted = {"keypair": {"name": "me@laptop.v2", "public_key": line}}
        status, fault = await call("2.91", "POST", keys, dotted, "demo")
        assert status == 400 and "name" in fault["badRequest"]["message"]
        status, imported = await call("2.92", "POST", keys, dotted, "demo")
        assert status == 201 and "private_key" not in imported["keypair"]
        status, _ = await call("2.74", "GET", f"{keys}?sort=name", user="demo")
        assert status == 200
        status, fault = await call("2.75", "GET", f"{keys}?sort=name", user="demo")
        assert status == 400 and "sort" in fault["badRequest"]["message"]
