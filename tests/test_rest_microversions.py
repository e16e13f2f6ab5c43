"""Servers and flavors through the compute REST API change shape where Nova's microversions do."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.rest_support import compute_url, start_rest, token
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server


class Http:
    """Raw compute requests as one user, at a chosen microversion."""

    def __init__(self, http: aiohttp.ClientSession, base: str, auth: str) -> None:
        self.http, self.base, self.auth = http, base, auth

    async def __call__(
        self, verb: str, path: str, version: str, body: dict | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"X-Auth-Token": self.auth, "OpenStack-API-Version": f"compute {version}"}
        async with self.http.request(verb, f"{self.base}{path}", json=body, headers=headers) as r:
            data = await r.json() if r.content_length != 0 and r.status != 204 else None
            return r.status, data, dict(r.headers)

    async def server(self, sid: str, version: str) -> dict[str, Any]:
        status, body, _ = await self("GET", f"/servers/{sid}", version)
        assert status == 200, body
        return dict(body["server"])

    async def refused(self, verb: str, path: str, version: str, body: dict | None = None) -> str:
        status, reply, _ = await self(verb, path, version, body)
        assert status == 400, (path, version, reply)
        return str(reply["badRequest"]["message"])


async def test_server_and_flavor_shapes_follow_the_microversion(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin_nats = ApiClient(await cloud.connect("admin"))
    await make_flavor_image(admin_nats)
    flavor = (
        await admin_nats(
            "flavors.create",
            {
                "name": "m1.spec",
                "vcpus": 1,
                "ram_mb": 256,
                "disk_gb": 1,
                "extra_specs": {"hw:cpu_policy": "shared"},
            },
        )
    )["flavor"]["id"]
    image = (await admin_nats("images.get", {"name": "cirros"}))["image"]["id"]
    demo_nats = ApiClient(await cloud.connect("demo"))
    group = (await demo_nats("server_groups.create", {"name": "g1", "policy": "anti-affinity"}))[
        "server_group"
    ]["id"]
    zones = (await demo_nats("availability_zones.list", {}))["availability_zones"]
    zone = next(z["zone_name"] for z in zones if z["zone_status"] == "available")
    sid = (
        await demo_nats(
            "servers.create",
            {
                "name": "Web_1",
                "flavor": flavor,
                "image": image,
                "availability_zone": zone,
                "scheduler_hints": {"group": group},
            },
        )
    )["server"]["id"]
    await wait_server(cloud.store, sid, settled)

    async with aiohttp.ClientSession() as session:
        base = compute_url(rest)
        demo = Http(session, base, await token(
            session, rest, "demo", cloud.server.passwords["demo"], "DEMO"
        ))  # fmt: skip
        admin = Http(session, base, await token(
            session, rest, "admin", cloud.server.passwords["admin"], "admin"
        ))  # fmt: skip

        # 2.47: the flavor embedded; 2.63, 2.71, 2.73, 2.90, 2.96, 2.98, 2.100.
        old = await demo.server(sid, "2.46")
        assert set(old["flavor"]) == {"id", "links"} and old["flavor"]["id"] == flavor
        new = await demo.server(sid, "2.47")
        assert new["flavor"] == {
            "original_name": "m1.spec", "vcpus": 1, "ram": 256, "disk": 1, "ephemeral": 0,
            "swap": 0, "extra_specs": {"hw:cpu_policy": "shared"},
        }  # fmt: skip
        for key, version in (
            ("trusted_image_certificates", "2.63"),
            ("server_groups", "2.71"),
            ("locked_reason", "2.73"),
            ("OS-EXT-SRV-ATTR:hostname", "2.90"),
            ("pinned_availability_zone", "2.96"),
            ("scheduler_hints", "2.100"),
        ):
            minor = int(version.split(".")[1])
            assert key not in await demo.server(sid, f"2.{minor - 1}"), key
            assert key in await demo.server(sid, version), key
        latest = await demo.server(sid, "2.100")
        assert latest["trusted_image_certificates"] is None
        assert latest["server_groups"] == [group] and latest["locked_reason"] is None
        assert latest["OS-EXT-SRV-ATTR:hostname"] == "web-1"
        assert latest["pinned_availability_zone"] == zone
        assert latest["scheduler_hints"] == {"group": [group]}
        assert latest["image"]["properties"] == {} and latest["image"]["id"] == image
        assert "properties" not in (await demo.server(sid, "2.97"))["image"]
        status, listed, _ = await demo("GET", "/servers/detail", "2.100")
        assert status == 200 and "server_groups" not in listed["servers"][0]  # show only
        assert listed["servers"][0]["scheduler_hints"] == {"group": [group]}

        # 2.73: lock with a reason.
        status, _, _ = await demo("POST", f"/servers/{sid}/action", "2.73",
                                  {"lock": {"locked_reason": "maintenance"}})  # fmt: skip
        assert status == 202
        locked = await demo.server(sid, "2.73")
        assert (locked["locked"], locked["locked_reason"]) == (True, "maintenance")
        assert (await demo("POST", f"/servers/{sid}/action", "2.73", {"unlock": None}))[0] == 202

        # GET /servers: unknown parameters from 2.75, filters hvmesh cannot apply.
        assert (await demo("GET", "/servers?colour=red", "2.74"))[0] == 200
        assert "colour" in await demo.refused("GET", "/servers?colour=red", "2.75")
        assert (await demo("GET", "/servers?changes-before=2030-01-01", "2.65"))[0] == 200
        assert "changes-before" in await demo.refused(
            "GET", "/servers?changes-before=2030-01-01", "2.66"
        )
        assert (await demo("GET", "/servers?user_id=demo", "2.82"))[0] == 200  # dropped
        assert "user_id" in await demo.refused("GET", "/servers?user_id=demo", "2.83")
        assert "ip" in await admin.refused("GET", "/servers?ip=10.0.0.1", "2.1")

        # What hvmesh cannot do is a 400 naming the field.
        boot = {"name": "x", "flavorRef": flavor, "imageRef": image, "networks": "none"}
        for field, value, version in (
            ("tags", ["a"], "2.52"),
            ("personality", [{"path": "/a", "contents": "YQ=="}], "2.56"),
            ("trusted_image_certificates", ["c"], "2.63"),
            ("host", "h1", "2.74"),
            ("hostname", "h", "2.90"),
        ):
            message = await admin.refused(
                "POST", "/servers", version, {"server": {**boot, field: value}}
            )
            assert field in message, message
        action = f"/servers/{sid}/action"
        rebuild = {"imageRef": image, "key_name": "k"}
        assert "key_name" in await demo.refused("POST", action, "2.54", {"rebuild": rebuild})
        unshelve = {"unshelve": {"availability_zone": zone}}
        assert "availability_zone" in await demo.refused("POST", action, "2.77", unshelve)
        live = {"os-migrateLive": {"host": None, "block_migration": "auto", "force": False}}
        assert "force" in await admin.refused("POST", action, "2.68", live)

        # 2.45: createImage answers with the image id, not a Location.
        status, body, headers = await demo(
            "POST", action, "2.45", {"createImage": {"name": "snap-245"}}
        )
        assert status == 202 and "Location" not in headers and body["image_id"]
        await wait_server(cloud.store, sid, settled)
        status, body, headers = await demo(
            "POST", action, "2.44", {"createImage": {"name": "snap-244"}}
        )
        assert status == 202 and body is None
        assert headers["Location"].endswith(f"/image/v2/images/{headers['Location'][-36:]}")
        await wait_server(cloud.store, sid, settled)

        # Flavors: 2.55 description, 2.61 extra_specs, 2.75 swap 0.
        path = f"/flavors/{flavor}"
        shown = {v: (await demo("GET", path, v))[1]["flavor"] for v in ("2.54", "2.55", "2.60")}
        assert "description" not in shown["2.54"] and shown["2.55"]["description"] is None
        assert "extra_specs" not in shown["2.60"] and shown["2.54"]["swap"] == ""
        spec = (await demo("GET", path, "2.61"))[1]["flavor"]
        assert spec["extra_specs"] == {"hw:cpu_policy": "shared"} and spec["swap"] == ""
        assert (await demo("GET", path, "2.75"))[1]["flavor"]["swap"] == 0
        status, brief, _ = await demo("GET", "/flavors", "2.55")
        assert status == 200 and all(f["description"] is None for f in brief["flavors"])
        assert "extra_specs" not in brief["flavors"][0]
        assert (await admin("PUT", path, "2.54", {"flavor": {"description": "x"}}))[0] == 404
        assert "description" in await admin.refused(
            "PUT", path, "2.55", {"flavor": {"description": "x"}}
        )
        new_flavor = {"name": "f2", "vcpus": 1, "ram": 64, "description": "small"}
        assert "description" in await admin.refused(
            "POST", "/flavors", "2.55", {"flavor": new_flavor}
        )

        # 2.71: a deleted group is no longer the server's.
        await demo_nats("server_groups.delete", {"id": group})
        assert (await demo.server(sid, "2.71"))["server_groups"] == []
