"""The API's input limits: a request over any of them is a 4xx naming the limit and the value,
and nothing a tenant sends can make a reply too large for anyone else."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from hvmesh.core.protocol import limits
from hvmesh.core.protocol.requests import ServerCreate
from hvmesh.core.protocol.subjects import TASKS_STREAM
from hvmesh.core.state.store import BUCKETS
from tests.support import (
    ApiClient,
    Deployment,
    make_flavor_image,
    open_deployment,
    settled,
    wait_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MB = 1024 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    async with open_deployment(tmp_path_factory.mktemp("limits")) as dep:
        await dep.start_core(fake_hosts=1)
        await make_flavor_image(ApiClient(await dep.connect("admin")))
        yield dep


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(seeded: Deployment) -> ApiClient:
    return ApiClient(await seeded.connect("admin"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo(seeded: Deployment) -> ApiClient:
    return ApiClient(await seeded.connect("demo"))


async def records(dep: Deployment) -> dict[str, Any]:
    """Every record of every bucket but heartbeats, and how many tasks were ever queued."""
    assert dep.store is not None
    state: dict[str, Any] = {}
    for name in BUCKETS:
        if name != "heartbeats":
            bucket = getattr(dep.store, name)
            state[name] = {e.key: msgspec.to_builtins(e.value) async for e in bucket.entries()}
    state["tasks_queued"] = (await dep.nc.jetstream().stream_info(TASKS_STREAM)).state.last_seq
    return state


async def refused(client: ApiClient, endpoint: str, body: Any) -> tuple[int, str]:
    """Send `body` (bytes, or JSON-encoded) and return the error's code and message."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await client.raw(endpoint, data)
    code = msg.headers and msg.headers.get("Nats-Service-Error-Code")
    assert code, f"{endpoint} accepted a body over a limit: {msg.data[:200]!r}"
    return int(code), json.loads(msg.data)["error"]["message"]


def server(**extra: Any) -> dict[str, Any]:
    return {"name": "s", "flavor": "m1.small", "image": "cirros", **extra}


async def test_big_metadata_is_refused_and_servers_list_still_answers(
    seeded: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    """Two creates carrying 4.5 MB of metadata each are refused at the door (a 413 naming
    the limit and the size), and servers.list answers every project, the admin included."""
    big = {f"key-{i}": "v" * 250 for i in range(18_000)}  # about 4.5 MB of JSON
    before = await records(seeded)
    for _ in range(2):
        code, message = await refused(demo, "servers.create", server(metadata=big))
        assert code == 413
        assert "max_request_bytes" in message and str(limits.MAX_REQUEST_BYTES) in message
        size = re.search(r"request body is (\d+) bytes", message)
        assert size is not None and int(size.group(1)) > 4 * MB
    assert await records(seeded) == before
    # The most metadata a server may carry fits; lists stay answerable with it.
    most = {
        f"{i:03d}".ljust(limits.MAX_METADATA_KEY_LENGTH, "k"): "v"
        * limits.MAX_METADATA_VALUE_LENGTH
        for i in range(limits.MAX_METADATA_ITEMS)
    }
    created = await demo("servers.create", server(name="full", metadata=most))
    assert created["server"]["metadata"] == most
    listed = await admin("servers.list", {"all_projects": True})
    assert [s["name"] for s in listed["servers"]] == ["full"]
    assert (await demo("servers.list"))["servers"][0]["metadata"] == most
    assert seeded.store is not None
    built = await wait_server(seeded.store, created["server"]["id"], settled)
    assert built is not None and built.vm_state == "active"  # later tests need a still cloud


@pytest.mark.parametrize(
    ("endpoint", "body", "where", "bound", "got"),
    [
        ("servers.create", server(metadata={str(i): "v" for i in range(129)}), "$.metadata", "<= 128", 129),
        ("servers.create", server(metadata={"k" * 256: "v"}), "`key` in `$.metadata`", "<= 255", 256),
        ("servers.create", server(metadata={"k": "v" * 256}), "$.metadata[...]", "<= 255", 256),
        ("servers.create", server(name="n" * 256), "$.name", "<= 255", 256),
        ("servers.create", server(max_count=1001), "$.max_count", "<= 1000", 1001),
        ("servers.create", server(networks=["net"] * 33), "$.networks", "<= 32", 33),
        ("servers.create", server(ports=["p"] * 33), "$.ports", "<= 32", 33),
        ("servers.create", server(scheduler_hints={"same_host": ["x"] * 65}), "$.scheduler_hints.same_host", "<= 64", 65),
        ("servers.create", server(scheduler_hints={"different_host": ["x" * 256]}), "$.scheduler_hints.different_host[0]", "<= 255", 256),
        ("servers.create", server(scheduler_hints={"group": "g" * 256}), "$.scheduler_hints.group", "<= 255", 256),
        ("servers.create", server(user_data="QUFB" * 50001), "$.user_data", "<= 200000", 200004),
        ("flavors.create", {"name": "f", "vcpus": 1, "ram_mb": 64, "extra_specs": {str(i): "v" for i in range(129)}}, "$.extra_specs", "<= 128", 129),
        ("images.create", {"name": "i", "properties": {"p": "v" * 256}}, "$.properties[...]", "<= 255", 256),
        ("networks.create", {"name": "n", "cidr": "10.0.0.0/24", "dns_nameservers": ["10.0.0.9"] * 17}, "$.dns_nameservers", "<= 16", 17),
        ("aggregates.create", {"name": "a", "metadata": {str(i): "v" for i in range(129)}}, "$.metadata", "<= 128", 129),
        ("aggregates.set_metadata", {"id": "a" * 256, "metadata": {}}, "$.id", "<= 255", 256),
        ("aggregates.add_host", {"id": "a" * 300, "host": "h"}, "$.id", "<= 255", 300),
        ("servers.action", {"id": "x", "action": "create-image", "name": "i", "metadata": {str(i): "v" for i in range(129)}}, "$.metadata", "<= 128", 129),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("$") else None,
)  # fmt: skip
async def test_a_field_over_its_limit_is_a_400_naming_the_limit_and_the_value(
    seeded: Deployment,
    admin: ApiClient,
    endpoint: str,
    body: dict[str, Any],
    where: str,
    bound: str,
    got: int,
) -> None:
    before = await records(seeded)
    code, message = await refused(admin, endpoint, body)
    assert code == 400
    assert where in message and bound in message and f"(got {got})" in message, message
    assert await records(seeded) == before


async def test_user_data_is_bounded_once_decoded(admin: ApiClient) -> None:
    """65535 bytes of user_data pass the request type; one byte more is refused by size."""
    most = base64.b64encode(b"x" * limits.MAX_USER_DATA_BYTES).decode()
    assert msgspec.convert(server(user_data=most), ServerCreate).user_data == most
    over = base64.b64encode(b"x" * (limits.MAX_USER_DATA_BYTES + 1)).decode()
    code, message = await refused(admin, "servers.create", server(user_data=over))
    assert (code, message) == (400, "user_data: 65536 bytes, at most 65535")


async def test_every_endpoint_refuses_a_body_over_max_request_bytes(
    seeded: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    """The bound is the service's, before any decoding: every endpoint, either caller."""
    from hvmesh.core.api.service import ApiService

    api = ApiService(seeded.nc, seeded.config())
    body = b'{"name": "' + b"x" * limits.MAX_REQUEST_BYTES + b'"}'
    before = await records(seeded)
    for _, subject, _, _ in api.service._pending:
        # A site's own requests (hvmesh-site.*) are not exported to tenants: admin only.
        callers = (admin, demo) if subject.startswith("hvmesh.api.") else (admin,)
        for client in callers:
            msg = await client.nc.request(subject, body, timeout=10)
            code, message = (
                int(msg.headers["Nats-Service-Error-Code"]),
                msg.headers["Nats-Service-Error"],
            )
            assert code == 413, (subject, message)
            assert message == (
                f"request body is {len(body)} bytes; the limit (max_request_bytes) is "
                f"{limits.MAX_REQUEST_BYTES}"
            )
    assert await records(seeded) == before


async def test_an_image_chunk_of_the_limit_is_taken_and_one_byte_more_is_not(
    admin: ApiClient,
) -> None:
    image = (await admin("images.create", {"name": "chunky", "upload": True}))["image"]
    nc = admin.nc
    headers = {"Hvmesh-Image": image["id"], "Hvmesh-Offset": "0"}
    over = await nc.request(
        "hvmesh.api.images.upload", b"\0" * (MB + 1), timeout=10, headers=headers
    )
    assert over.headers["Nats-Service-Error-Code"] == "413"
    assert "max_request_bytes" in over.headers["Nats-Service-Error"]
    taken = await nc.request("hvmesh.api.images.upload", b"\0" * MB, timeout=10, headers=headers)
    assert json.loads(taken.data) == {"id": image["id"], "uploaded": MB}


async def test_a_reply_too_large_for_nats_is_a_413_not_a_500(admin: ApiClient) -> None:
    """An answer NATS could not carry says so; the service goes on answering."""
    over = admin.nc.max_payload + 1
    code, message = await refused(
        admin, "inventory.query", {"sql": f"SELECT repeat('x', {over}) AS big"}
    )
    assert code == 413
    assert f"max_payload is {admin.nc.max_payload}" in message
    assert (await admin("inventory.query", {"sql": "SELECT 1 AS one"}))["query"]["rows"] == [[1]]


async def test_the_api_doc_lists_every_limit() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    names = [n for n in vars(limits) if n.startswith("MAX_")]
    assert names
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"docs/api.md does not list {missing}"
