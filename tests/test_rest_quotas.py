"""Quotas, limits and usage through the REST front door, driven by the openstack CLI and openstacksdk."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.rest_support import compute_url, openstack, os_env, sdk, start_rest, token
from tests.support import ApiClient, Deployment, boot, make_flavor_image


def limits_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`openstack quota show -f json`'s rows (Resource, Limit[, In Use, Reserved]) by resource."""
    return {row["Resource"]: row for row in rows}


async def test_the_openstack_cli_shows_and_sets_quotas_limits_and_usage(
    cloud: Deployment,
) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    await make_flavor_image(admin, vcpus=2, ram=512)
    server = await boot(cloud, ApiClient(await cloud.connect("demo")), "counted")
    await admin("networks.create", {"name": "net1", "cidr": "10.3.0.0/24", "shared": True})
    await ApiClient(await cloud.connect("demo"))("ports.create", {"network": "net1"})
    demo_env = os_env(rest, cloud)
    admin_env = os_env(rest, cloud, "admin", "admin")
    defaults = (await admin("quotas.defaults", {}))["quota_set"]

    own = limits_of(await openstack(demo_env, "quota", "show", "-f", "json"))
    assert own["instances"]["Limit"] == defaults["instances"]
    assert own["cores"]["Limit"] == defaults["cores"]
    assert own["networks"]["Limit"] == own["ports"]["Limit"] == -1  # no network quotas

    await openstack(admin_env, "quota", "set", "--instances", "5", "--cores", "9", "DEMO")
    shown = limits_of(
        await openstack(admin_env, "quota", "show", "--compute", "DEMO", "-f", "json")
    )
    assert (shown["instances"]["Limit"], shown["cores"]["Limit"]) == (5, 9)
    assert shown["ram"]["Limit"] == defaults["ram"]  # not given: kept
    # Another project's quotas are untouched.
    assert (await admin("quotas.show", {"project": "ALT"}))["quota_set"]["instances"] == (
        defaults["instances"]
    )

    used = limits_of(await openstack(demo_env, "quota", "show", "--usage", "-f", "json"))
    assert (used["instances"]["Limit"], used["instances"]["In Use"]) == (5, 1)
    assert (used["cores"]["In Use"], used["ram"]["In Use"]) == (2, 512)
    assert (used["ports"]["In Use"], used["networks"]["In Use"]) == (1, 0)  # net1: the admin's

    absolute = {
        row["Name"]: row["Value"]
        for row in await openstack(demo_env, "limits", "show", "--absolute", "-f", "json")
    }
    # The CLI names them as openstacksdk does (maxTotalInstances is `instances`).
    assert (absolute["instances"], absolute["instances_used"]) == (5, 1)
    assert (absolute["total_cores"], absolute["total_cores_used"]) == (9, 2)
    assert absolute["total_ram_used"] == 512
    theirs = {
        row["Name"]: row["Value"]
        for row in await openstack(
            admin_env, "limits", "show", "--absolute", "--project", "DEMO", "-f", "json"
        )
    }
    assert (theirs["instances"], theirs["instances_used"]) == (5, 1)

    usage = await openstack(demo_env, "usage", "show", "-f", "json")
    # -f json shows the server usages themselves where the table counts them.
    assert usage["Project"] == "DEMO"
    assert [(u["instance_id"], u["vcpus"]) for u in usage["Servers"]] == [(server.id, 2)]
    assert float(usage["CPU Hours"]) > 0
    listed = await openstack(admin_env, "usage", "list", "-f", "json")
    rows = {row["Project"]: row for row in listed}
    assert [u["instance_id"] for u in rows["DEMO"]["Servers"]] == [server.id]
    assert "ALT" not in rows

    # From 2.40 usage is paged by server: a full page links to the next.
    url = compute_url(rest)
    async with aiohttp.ClientSession() as http:
        admin_token = await token(http, rest, "admin", cloud.server.passwords["admin"], "admin")
        for version, paged in (("2.39", False), ("2.40", True)):
            headers = {"X-Auth-Token": admin_token, "OpenStack-API-Version": f"compute {version}"}
            async with http.get(f"{url}/os-simple-tenant-usage/DEMO?limit=1", headers=headers) as r:
                page = await r.json()
            assert [u["instance_id"] for u in page["tenant_usage"]["server_usages"]] == [server.id]
            assert ("tenant_usage_links" in page) == paged
            async with http.get(
                f"{url}/os-simple-tenant-usage?limit=1&detailed=1", headers=headers
            ) as r:
                index = await r.json()
            assert ("tenant_usages_links" in index) == paged
            assert [u["tenant_id"] for u in index["tenant_usages"]] == ["DEMO"]
        (link,) = page["tenant_usage_links"]
        assert link["rel"] == "next" and f"marker={server.id}" in link["href"]
        async with http.get(link["href"], headers=headers) as r:
            assert await r.json() == {"tenant_usage": {}}  # nothing after the last server
        async with http.get(index["tenant_usages_links"][0]["href"], headers=headers) as r:
            assert await r.json() == {"tenant_usages": []}
        async with http.get(f"{url}/os-simple-tenant-usage/DEMO?marker=nope", headers=headers) as r:
            assert r.status == 400 and "nope" in (await r.json())["badRequest"]["message"]

    # openstacksdk reads the same, with usage, and the server in the usage report.
    conn = sdk(rest, cloud, "admin", "admin")
    detail = await asyncio.to_thread(lambda: conn.compute.get_quota_set("DEMO", usage=True))
    assert (detail.instances, detail.usage["instances"], detail.usage["cores"]) == (5, 1, 2)
    report = await asyncio.to_thread(lambda: conn.compute.get_usage("DEMO"))
    assert [u["instance_id"] for u in report.server_usages] == [server.id]
    assert report.server_usages[0]["vcpus"] == 2


async def test_quota_requests_are_checked_and_shaped_by_microversion(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    before = (await admin("quotas.show", {"project": "DEMO"}))["quota_set"]
    url = compute_url(rest)
    async with aiohttp.ClientSession() as http:
        admin_token = await token(http, rest, "admin", cloud.server.passwords["admin"], "admin")
        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        as_admin = {"X-Auth-Token": admin_token}

        for body, field in (
            ({"instances": "many"}, "instances"),
            ({"cores": -2}, "cores"),
            ({"instances": 3, "gpus": 1}, "gpus"),
            ({}, "at least one"),
        ):
            async with http.put(
                f"{url}/os-quota-sets/DEMO", json={"quota_set": body}, headers=as_admin
            ) as r:
                assert r.status == 400, await r.text()
                assert field in (await r.json())["badRequest"]["message"]
        assert (await admin("quotas.show", {"project": "DEMO"}))["quota_set"] == before

        async with http.put(
            f"{url}/os-quota-sets/DEMO",
            json={"quota_set": {"instances": 3}},
            headers={"X-Auth-Token": demo_token},
        ) as r:
            assert r.status == 403 and "forbidden" in await r.json()  # a policy refusal
        async with http.get(f"{url}/os-quota-sets/ALT", headers={"X-Auth-Token": demo_token}) as r:
            assert r.status == 403
        async with http.get(
            f"{url}/os-simple-tenant-usage", headers={"X-Auth-Token": demo_token}
        ) as r:
            assert r.status == 403

        async with http.get(f"{url}/os-quota-sets/DEMO", headers=as_admin) as r:
            old = (await r.json())["quota_set"]
        assert old["id"] == "DEMO" and old["floating_ips"] == -1
        assert old["injected_files"] == -1 and old["instances"] == before["instances"]
        newer = {**as_admin, "OpenStack-API-Version": "compute 2.36"}
        async with http.get(f"{url}/os-quota-sets/DEMO", headers=newer) as r:
            new = (await r.json())["quota_set"]
        assert "floating_ips" not in new and "security_groups" not in new
        async with http.get(f"{url}/limits", headers=newer) as r:
            absolute = (await r.json())["limits"]["absolute"]
        assert "maxTotalFloatingIps" not in absolute and "maxTotalInstances" in absolute
        async with http.get(f"{url}/os-quota-sets/DEMO/defaults", headers=as_admin) as r:
            assert (await r.json())["quota_set"]["id"] == "defaults"

        # 2.39 drops maxImageMeta; 2.57 maxPersonality(Size) and the injected_file quotas.
        def at(version: str) -> dict[str, str]:
            return {**as_admin, "OpenStack-API-Version": f"compute {version}"}

        personality = {"maxPersonality", "maxPersonalitySize"}
        injected = {"injected_files", "injected_file_content_bytes", "injected_file_path_bytes"}
        for version, image_meta, files in (
            ("2.38", True, True), ("2.39", False, True), ("2.56", False, True),
            ("2.57", False, False), ("2.100", False, False),
        ):  # fmt: skip
            async with http.get(f"{url}/limits", headers=at(version)) as r:
                absolute = (await r.json())["limits"]["absolute"]
            assert ("maxImageMeta" in absolute) == image_meta, version
            assert personality & set(absolute) == (personality if files else set()), version
            for path in ("", "/detail", "/defaults"):
                async with http.get(f"{url}/os-quota-sets/DEMO{path}", headers=at(version)) as r:
                    quota_set = (await r.json())["quota_set"]
                assert injected & set(quota_set) == (injected if files else set()), path
        async with http.put(
            f"{url}/os-quota-sets/DEMO",
            json={"quota_set": {"injected_files": 5}},
            headers=at("2.57"),
        ) as r:
            assert r.status == 400 and "injected_files" in (await r.json())["badRequest"]["message"]

        # From 2.75 an unknown query parameter is a 400 naming it (ignored before).
        for path in ("/limits?foo=1", "/os-quota-sets/DEMO?foo=1", "/os-simple-tenant-usage?foo=1"):
            async with http.get(f"{url}{path}", headers=at("2.74")) as r:
                assert r.status == 200, path
            async with http.get(f"{url}{path}", headers=at("2.75")) as r:
                assert r.status == 400 and "foo" in (await r.json())["badRequest"]["message"]

        # A quota set to 0 refuses the next boot with Nova's overLimit.
        async with http.put(
            f"{url}/os-quota-sets/ALT",
            json={"quota_set": {"instances": "0", "force": True}},
            headers=as_admin,
        ) as r:
            assert r.status == 200, await r.text()
            updated = (await r.json())["quota_set"]
        assert updated["instances"] == 0 and "id" not in updated
        await make_flavor_image(admin)
        alt_token = await token(http, rest, "alt", cloud.server.passwords["alt"], "ALT")
        boot_body = {"server": {"name": "x", "flavorRef": "m1.small", "imageRef": "cirros"}}
        async with http.post(
            f"{url}/servers", json=boot_body, headers={"X-Auth-Token": alt_token}
        ) as r:
            assert r.status == 403, await r.text()
            assert "instances" in (await r.json())["overLimit"]["message"]
        assert (await ApiClient(await cloud.connect("alt"))("servers.list", {}))["servers"] == []

        async with http.delete(
            f"{url}/os-quota-sets/DEMO", headers={"X-Auth-Token": demo_token}
        ) as r:
            assert r.status == 403
        async with http.delete(f"{url}/os-quota-sets/DEMO", headers=as_admin) as r:
            assert r.status == 202
        reverted = await ApiClient(await cloud.connect("admin"))("quotas.show", {"project": "DEMO"})
        defaults = await ApiClient(await cloud.connect("admin"))("quotas.defaults")
        assert {**reverted["quota_set"], "id": "defaults"} == defaults["quota_set"]
        async with http.get(f"{url}/os-quota-sets/DEMO?user_id=demo", headers=as_admin) as r:
            assert r.status == 400 and "user_id" in (await r.json())["badRequest"]["message"]
