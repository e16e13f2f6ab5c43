"""Tenants discover the API: $SRV.PING and $SRV.INFO from the DEMO account, schemas in INFO.

The shipped nats.conf exports the API service's PING and INFO (and nothing else of the
micro protocol) to tenant accounts; INFO carries every endpoint's request and reply JSON
Schema and the microversion range; `hvmesh api schema` prints them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from nats.errors import NoRespondersError

from hvmesh.core.api.service import MAX_MICROVERSION, MIN_MICROVERSION, ApiService
from hvmesh.core.protocol.requests import ServerCreate
from tests.support import ApiClient, Deployment, hvmesh

TIMEOUT = 10.0


async def ask(nc: Any, subject: str) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads((await nc.request(subject, b"", timeout=TIMEOUT)).data)
    return reply


async def replies_to(
    nc: Any, subject: str, enough: Callable[[list[dict[str, Any]]], bool], then: str
) -> list[dict[str, Any]]:
    """The replies to a request on `subject` once `enough` holds of them, and any other
    that came before a later request on `then` was answered."""
    got: list[dict[str, Any]] = []
    arrived = asyncio.Condition()

    async def on_reply(msg: Any) -> None:
        if msg.data:  # not a no-responders status
            async with arrived:
                got.append(json.loads(msg.data))
                arrived.notify_all()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subject, b"", reply=inbox)
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(lambda: enough(got)), TIMEOUT)
        await nc.request(then, b"", timeout=TIMEOUT)
        await nc.flush()
    finally:
        await sub.unsubscribe()
    return got


async def test_tenant_pings_and_infos_the_api_only(
    deployment: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await deployment.start_core()  # the API and the scheduler, both micro services
    second = await deployment.service_connection()  # and another API instance
    deployment.connections.append(second)
    await deployment.start(ApiService(second, deployment.config()))

    # The operators' account sees every service on a plain $SRV.PING.
    everyone = await replies_to(
        admin.nc,
        "$SRV.PING",
        lambda got: len(got) == 3,
        "$SRV.PING.hvmesh-scheduler",
    )
    assert sorted(r["name"] for r in everyone) == ["hvmesh-api", "hvmesh-api", "hvmesh-scheduler"]

    # The tenant: by name, by instance, and the plain $SRV.PING reach the API only, every
    # instance answering.
    ping = await ask(demo.nc, "$SRV.PING.hvmesh-api")
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert ping["name"] == "hvmesh-api"
    by_id = await ask(demo.nc, f"$SRV.PING.hvmesh-api.{ping['id']}")
    assert by_id["id"] == ping["id"]
    api_ids = {r["id"] for r in everyone if r["name"] == "hvmesh-api"}
    first_api = next(r["id"] for r in everyone if r["name"] == "hvmesh-api")
    for subject in ("$SRV.PING", "$SRV.PING.hvmesh-api"):
        # The first instance shares the scheduler's connection: a reply of the scheduler
        # would come before the first instance's answer to the later request.
        plain = await replies_to(
            demo.nc,
            subject,
            lambda got: len({r["id"] for r in got}) == 2,
            f"$SRV.PING.hvmesh-api.{first_api}",
        )
        assert [r["name"] for r in plain] == ["hvmesh-api", "hvmesh-api"], subject
        assert {r["id"] for r in plain} == api_ids

    info = await ask(demo.nc, "$SRV.INFO")
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["name"] == "hvmesh-api"
    assert info["metadata"]["min_version"] == MIN_MICROVERSION == "1.0"
    assert info["metadata"]["max_version"] == MAX_MICROVERSION == "1.1"
    assert info["metadata"]["version_header"] == "Hvmesh-API-Version"
    assert (await ask(demo.nc, f"$SRV.INFO.hvmesh-api.{ping['id']}"))["id"] == ping["id"]

    # Nothing else of the micro protocol: no STATS (every project's traffic), no scheduler.
    for subject in ("$SRV.STATS", "$SRV.STATS.hvmesh-api", "$SRV.PING.hvmesh-scheduler",
                    "$SRV.INFO.hvmesh-scheduler", "hvmesh.sched.select"):  # fmt: skip
        with pytest.raises(NoRespondersError):
            await demo.nc.request(subject, b"{}", timeout=TIMEOUT)


async def test_info_carries_every_endpoints_schemas(
    deployment: Deployment, demo: ApiClient
) -> None:
    await deployment.start_core()
    info = await ask(demo.nc, "$SRV.INFO.hvmesh-api")
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert len(endpoints) > 40
    for ep in endpoints.values():
        request = json.loads(ep["metadata"]["request_schema"])
        reply = json.loads(ep["metadata"]["reply_schema"])
        assert (
            request["$schema"]
            == reply["$schema"]
            == ("https://json-schema.org/draft/2020-12/schema")
        )
        assert reply["type"] == "object"
    create = endpoints["servers-create"]
    assert create["subject"] == "hvmesh.api.servers.create"
    schema = json.loads(create["metadata"]["request_schema"])
    # Generated from the very type the endpoint decodes.
    assert {k: v for k, v in schema.items() if k != "$schema"} == msgspec.json.schema(ServerCreate)
    body = schema["$defs"]["ServerCreate"]
    assert set(body["required"]) == {"name", "flavor", "image"}
    assert "client_token" in body["properties"]
    assert body["additionalProperties"] is False
    # A raw-bytes endpoint says so; a union of bodies is a oneOf/anyOf.
    upload = json.loads(endpoints["images-upload"]["metadata"]["request_schema"])
    assert upload["contentEncoding"] == "binary"
    action = json.loads(endpoints["servers-action"]["metadata"]["request_schema"])
    assert "anyOf" in action or "oneOf" in action


async def test_cli_prints_the_schemas_as_a_tenant(deployment: Deployment) -> None:
    await deployment.start_core()
    auth = ["--url", deployment.server.address, "--user", "demo",
            "--password", deployment.server.passwords["demo"]]  # fmt: skip

    code, out, err = await hvmesh("api", "schema", "-f", "json", *auth)
    assert code == 0, err
    listed = {e["endpoint"]: e for e in json.loads(out)}
    assert listed["servers-create"]["request"]["$defs"]["ServerCreate"]["required"] == [
        "name",
        "flavor",
        "image",
    ]
    assert listed["flavors-list"]["reply"]["type"] == "object"

    for name in ("servers-create", "servers.create", "hvmesh.api.servers.create"):
        code, out, err = await hvmesh("api", "schema", name, "-f", "yaml", *auth)
        assert code == 0, err
        assert "endpoint: servers-create" in out
        assert "subject: hvmesh.api.servers.create" in out
        assert "client_token:" in out

    code, out, err = await hvmesh("api", "schema", *auth)  # a table: fields, required marked
    assert code == 0, err
    row = next(line for line in out.splitlines() if "servers-create" in line)
    assert "name*" in row and "client_token" in row and "metadata" in row

    code, out, err = await hvmesh("api", "schema", "servers.frobnicate", *auth)
    assert code == 1
    assert "no endpoint 'servers.frobnicate' in hvmesh-api" in err
