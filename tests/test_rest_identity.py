"""The REST front door's identity and microversions, over raw HTTP against a real hvmesh."""

from __future__ import annotations

import time

import aiohttp
import pytest
from cryptography.fernet import Fernet

from hvmesh.core.ops import natsserver
from hvmesh.core.rest.app import RestService
from tests.rest_support import compute_url, password_auth, start_rest, token
from tests.support import ApiClient, Deployment, boot, make_flavor_image, until


async def test_a_password_gets_a_token_that_validates_and_revokes(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    demo_password = cloud.server.passwords["demo"]
    async with aiohttp.ClientSession() as http:
        async with http.get(rest.auth_url.removesuffix("/v3")) as r:
            assert r.status == 300  # Keystone's multiple choices
            assert (await r.json())["versions"]["values"][0]["id"].startswith("v3")
        async with http.get(rest.auth_url) as r:
            assert (await r.json())["version"]["status"] == "stable"
        async with http.post(
            f"{rest.auth_url}/auth/tokens", json=password_auth("demo", demo_password, "DEMO")
        ) as r:
            assert r.status == 201
            subject = r.headers["X-Subject-Token"]
            body = (await r.json())["token"]
        assert body["project"]["name"] == "DEMO" and body["user"]["name"] == "demo"
        assert [role["name"] for role in body["roles"]] == ["member", "reader"]
        compute = next(s for s in body["catalog"] if s["type"] == "compute")
        assert compute["endpoints"][0]["url"] == compute_url(rest)
        assert body["expires_at"] > body["issued_at"]

        admin = await token(http, rest, "admin", cloud.server.passwords["admin"], "admin")
        both = {"X-Auth-Token": admin, "X-Subject-Token": subject}
        async with http.get(f"{rest.auth_url}/auth/tokens", headers=both) as r:
            assert r.status == 200
            assert (await r.json())["token"]["project"]["id"] == "DEMO"
        async with http.get(f"{compute_url(rest)}/servers", headers={"X-Auth-Token": subject}) as r:
            assert r.status == 200 and (await r.json())["servers"] == []
        async with http.delete(f"{rest.auth_url}/auth/tokens", headers=both) as r:
            assert r.status == 204
        async with http.get(f"{compute_url(rest)}/servers", headers={"X-Auth-Token": subject}) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == 401
        async with http.get(f"{rest.auth_url}/auth/tokens", headers=both) as r:
            assert r.status == 404  # the revoked token is no more
    assert len(rest.tokens) == 1  # the admin's connection; the revoked one's closed


async def test_a_bad_password_or_a_foreign_project_is_401(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    async with aiohttp.ClientSession() as http:
        for user, password, project in (
            ("demo", "not-the-password", "DEMO"),
            ("nobody", "nothing", "DEMO"),
            ("demo", cloud.server.passwords["demo"], "ALT"),  # not demo's account
        ):
            auth = password_auth(user, password, project)
            async with http.post(f"{rest.auth_url}/auth/tokens", json=auth) as r:
                assert r.status == 401, (user, project, await r.text())
                error = (await r.json())["error"]
                assert error["code"] == 401 and error["title"] == "Unauthorized"
                assert "Keystone" in r.headers["WWW-Authenticate"]
        async with http.get(f"{compute_url(rest)}/servers", headers={"X-Auth-Token": "x"}) as r:
            assert r.status == 401
        async with http.get(f"{compute_url(rest)}/servers") as r:
            assert r.status == 401
    assert len(rest.tokens) == 0  # no connection is kept for a refused password


async def test_an_expired_token_is_401(cloud: Deployment) -> None:
    rest = await start_rest(cloud, token_ttl=1.0)
    async with aiohttp.ClientSession() as http:
        demo = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        expires = (await rest.tokens.resolve(demo)).expires_at

        async def refused() -> bool:
            async with http.get(
                f"{compute_url(rest)}/flavors", headers={"X-Auth-Token": demo}
            ) as r:
                return r.status == 401

        await until(refused, what="the token to expire")
        assert time.time() >= expires  # refused because it expired, not before


async def test_a_user_holds_a_bounded_number_of_connections(cloud: Deployment) -> None:
    rest = await start_rest(cloud, max_tokens_per_user=2)
    password = cloud.server.passwords["demo"]
    async with aiohttp.ClientSession() as http:
        first, second, third = [await token(http, rest, "demo", password, "DEMO") for _ in "abc"]
        assert len(rest.tokens) == 2  # the first token's connection made room
        url = f"{compute_url(rest)}/flavors"
        for live in (first, second, third):  # each token still works: its connection reopens
            async with http.get(url, headers={"X-Auth-Token": live}) as r:
                assert r.status == 200
    assert len(rest.tokens) == 2


async def test_another_projects_server_is_404(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    await make_flavor_image(admin)
    theirs = await boot(cloud, ApiClient(await cloud.connect("alt")), name="alt-vm")
    async with aiohttp.ClientSession() as http:
        demo = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        headers = {"X-Auth-Token": demo}
        async with http.get(f"{compute_url(rest)}/servers/{theirs.id}", headers=headers) as r:
            assert r.status == 404
            assert (await r.json())["itemNotFound"]["code"] == 404
            assert r.headers["x-openstack-request-id"].startswith("req-")
            assert r.headers["x-compute-request-id"] == r.headers["x-openstack-request-id"]
        async with http.get(f"{compute_url(rest)}/servers/detail", headers=headers) as r:
            assert (await r.json())["servers"] == []
        alt = await token(http, rest, "alt", cloud.server.passwords["alt"], "ALT")
        url = f"{compute_url(rest)}/servers/{theirs.id}"
        async with http.get(url, headers={"X-Auth-Token": alt}) as r:
            assert r.status == 200
            assert (await r.json())["server"]["tenant_id"] == "ALT"


async def test_microversions_are_negotiated_as_nova_does(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    await make_flavor_image(admin)
    mine = await boot(cloud, ApiClient(await cloud.connect("demo")))
    async with aiohttp.ClientSession() as http:
        demo = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        url = f"{compute_url(rest)}/servers/{mine.id}"

        async def show(**headers: str) -> tuple[int, dict, dict]:
            async with http.get(url, headers={"X-Auth-Token": demo, **headers}) as r:
                return r.status, dict(r.headers), await r.json()

        status, headers, body = await show()
        assert status == 200 and headers["OpenStack-API-Version"] == "compute 2.1"
        assert "locked" not in body["server"]  # from 2.9
        status, headers, body = await show(**{"OpenStack-API-Version": "compute 2.9"})
        assert headers["OpenStack-API-Version"] == "compute 2.9"
        assert body["server"]["locked"] is False and "description" not in body["server"]
        status, headers, body = await show(**{"OpenStack-API-Version": "compute latest"})
        assert headers["X-OpenStack-Nova-API-Version"] == "2.100"
        assert body["server"]["tags"] == [] and body["server"]["description"] is None
        status, headers, body = await show(**{"X-OpenStack-Nova-API-Version": "2.19"})
        assert headers["OpenStack-API-Version"] == "compute 2.19"
        for too_far in ("compute 2.101", "compute 3.0", "compute 2.0"):
            status, _, body = await show(**{"OpenStack-API-Version": too_far})
            assert status == 406 and body["notAcceptable"]["code"] == 406, too_far
        status, _, body = await show(**{"OpenStack-API-Version": "compute two"})
        assert status == 400 and "microversion" in body["badRequest"]["message"]
        async with http.get(compute_url(rest).removesuffix("/v2.1") + "/") as r:
            (doc,) = (await r.json())["versions"]
        assert (doc["min_version"], doc["version"]) == ("2.1", "2.100")


async def test_hvmesh_rest_runs_as_its_own_process(cloud: Deployment) -> None:
    port = natsserver.free_port()
    cloud.spawn("rest", cfg_file=cloud.config_file("rest", rest={"port": port}))
    auth_url = f"http://127.0.0.1:{port}/identity/v3"
    async with aiohttp.ClientSession() as http:

        async def answers() -> bool:
            try:
                async with http.get(auth_url) as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await until(answers, timeout=60, what="hvmesh rest to listen")
        auth = password_auth("demo", cloud.server.passwords["demo"], "DEMO")
        async with http.post(f"{auth_url}/auth/tokens", json=auth) as r:
            assert r.status == 201
            demo = r.headers["X-Subject-Token"]
        url = auth_url.replace("/identity/v3", "/compute/v2.1/servers")
        async with http.get(url, headers={"X-Auth-Token": demo}) as r:
            assert r.status == 200 and (await r.json())["servers"] == []


async def test_instances_with_the_same_keys_share_tokens_and_revocations(
    cloud: Deployment,
) -> None:
    """Behind a load balancer: a token from one instance works on another holding the
    same keys, and on one started later; revoked on one, it is refused on every one."""
    keys = [Fernet.generate_key().decode()]
    first = await start_rest(cloud, token_keys=keys)
    second = await start_rest(cloud, token_keys=keys)
    stranger = await start_rest(cloud)  # keys of its own
    async with aiohttp.ClientSession() as http:
        demo = await token(http, first, "demo", cloud.server.passwords["demo"], "DEMO")
        admin = await token(http, first, "admin", cloud.server.passwords["admin"], "admin")

        async def status(rest: RestService, auth: str) -> int:
            async with http.get(
                f"{compute_url(rest)}/servers", headers={"X-Auth-Token": auth}
            ) as r:
                return r.status

        assert await status(second, demo) == 200
        assert await status(stranger, demo) == 401  # not sealed with its keys
        tampered = demo[:-8] + ("A" * 8 if not demo.endswith("A" * 8) else "B" * 8)
        assert await status(first, tampered) == 401
        later = await start_rest(cloud, token_keys=keys)  # a restarted instance
        assert await status(later, demo) == 200

        both = {"X-Auth-Token": admin, "X-Subject-Token": demo}
        async with http.delete(f"{second.auth_url}/auth/tokens", headers=both) as r:
            assert r.status == 204

        async def refused_everywhere() -> bool:
            return all([await status(r, demo) == 401 for r in (first, second, later)])

        await until(refused_everywhere, what="every instance to know the token is revoked")
        assert await status(first, admin) == 200  # the others stay live


async def test_bad_token_keys_stop_the_service_naming_them(cloud: Deployment) -> None:
    with pytest.raises(ValueError, match=r"\[rest\] token_keys: not a Fernet key"):
        await start_rest(cloud, token_keys=["not-a-key"])
