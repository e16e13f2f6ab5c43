"""Idempotent servers.create: a client_token makes a retried create return the same server.

A retry (or many concurrent ones) with the same token and body, from the same project,
makes one server, boots it once and charges the quota once; the same token with another
body is a 409; a create that failed lets its token go; projects' tokens are their own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hvmesh.core.api import idempotency
from hvmesh.core.api.service import ApiService
from hvmesh.core.bus.microversion import HEADER
from hvmesh.core.protocol import errors
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server

V11 = {HEADER: "1.1"}


async def create(client: ApiClient, **body: Any) -> dict[str, Any]:
    full = {"flavor": "m1.small", "image": "cirros", **body}
    reply: dict[str, Any] = await client("servers.create", full, headers=V11)
    return reply


async def servers_named(client: ApiClient, name: str) -> list[dict[str, Any]]:
    listed = (await client("servers.list", {}))["servers"]
    return [s for s in listed if s["name"] == name]


async def instances_used(client: ApiClient) -> int:
    used: int = (await client("limits.show", {}))["limits"]["absolute"]["totalInstancesUsed"]
    return used


async def test_a_retry_returns_the_same_server(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    first = await create(demo, name="web", client_token="boot-web-1")
    server = await wait_server(cloud.store, first["server"]["id"], settled)
    assert server is not None and server.vm_state == "active"

    again = await create(demo, name="web", client_token="boot-web-1")
    assert again["server"]["id"] == first["server"]["id"]
    assert again["reservation_id"] == first["reservation_id"]
    assert again["server"]["status"] == "ACTIVE"  # the server as it is now
    assert len(await servers_named(demo, "web")) == 1
    assert await instances_used(demo) == 1
    events = await demo("servers.events.list", {"id": first["server"]["id"]})
    assert [a["action"] for a in events["instance_actions"]] == ["create"]  # one boot

    # Key order in maps does not make another request.
    meta = {"a": "1", "b": "2"}
    one = await create(demo, name="db", metadata=meta, client_token="boot-db")
    two = await create(
        demo, name="db", metadata=dict(reversed(meta.items())), client_token="boot-db"
    )
    assert one["server"]["id"] == two["server"]["id"]


async def test_concurrent_retries_make_one_server(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    second = await cloud.service_connection()  # two API processes share the requests
    cloud.connections.append(second)
    await cloud.start(ApiService(second, cloud.config()))
    await make_flavor_image(admin)
    replies = await asyncio.gather(
        *(create(demo, name="burst", client_token="same-token") for _ in range(16))
    )
    assert len({r["server"]["id"] for r in replies}) == 1
    assert len(await servers_named(demo, "burst")) == 1
    assert await instances_used(demo) == 1


async def test_another_body_with_the_same_token_conflicts(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    await create(demo, name="a", client_token="tok")
    with pytest.raises(errors.Conflict) as refused:
        await create(demo, name="b", client_token="tok")
    assert refused.value.code == 409
    assert "client_token 'tok' was used for a different servers.create request" in str(
        refused.value
    )
    assert await servers_named(demo, "b") == []
    assert await instances_used(demo) == 1


async def test_a_failed_create_lets_its_token_go(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    with pytest.raises(errors.BadRequest, match="flavor"):
        await create(demo, name="x", flavor="no-such-flavor", client_token="retry-me")
    fixed = await create(demo, name="x", client_token="retry-me")
    assert fixed["server"]["name"] == "x"
    assert await instances_used(demo) == 1


async def test_tokens_are_per_project(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await make_flavor_image(admin)
    mine = await create(demo, name="twin", client_token="shared")
    theirs = await create(admin, name="twin", client_token="shared")
    assert mine["server"]["id"] != theirs["server"]["id"]
    assert theirs["server"]["project"] == "admin"
    assert mine["server"]["project"] == "DEMO"
    alt = ApiClient(await cloud.connect("alt"))
    other = await create(alt, name="twin", client_token="shared")
    assert other["server"]["project"] == "ALT"
    assert other["server"]["id"] not in {mine["server"]["id"], theirs["server"]["id"]}


async def test_the_token_is_kept_in_its_bucket_with_a_day_to_live(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    reply = await create(demo, name="kept", client_token="k")
    assert cloud.store is not None
    bucket = cloud.store.client_tokens
    entry = await bucket.get(idempotency.token_key("DEMO", "k"))
    assert entry is not None
    assert entry.value.reply is not None
    assert entry.value.reply["server"]["id"] == reply["server"]["id"]
    status = await bucket.kv.status()
    assert status.ttl == 24 * 3600
