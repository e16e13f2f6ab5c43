"""Bad payloads on every endpoint: a 4xx naming what is wrong, and no state change."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from hvmesh.core.api.service import ApiService
from hvmesh.core.protocol.subjects import TASKS_STREAM
from hvmesh.core.state.store import BUCKETS
from tests.support import ApiClient, Deployment, make_flavor_image, open_deployment

# (endpoint, raw body, expected code, text the message must contain)
CASES: list[tuple[str, bytes, int, str]] = [
    ("flavors.create", b"{not json", 400, "malformed JSON"),
    ("flavors.create", b"[1, 2]", 400, "Expected `object`"),
    ("flavors.create", b'{"vcpus": 1, "ram_mb": 512}', 400, "missing required field `name`"),
    ("flavors.create", b'{"name": "f", "vcpus": 1, "ram_mb": -512}', 400, "$.ram_mb"),
    ("flavors.create", b'{"name": "f", "vcpus": 0, "ram_mb": 512}', 400, "$.vcpus"),
    ("flavors.create", b'{"name": "f", "vcpus": "two", "ram_mb": 512}', 400, "$.vcpus"),
    (
        "flavors.create",
        b'{"name": "f", "vcpus": 1, "ram_mb": 512, "disk_gb": -1}',
        400,
        "$.disk_gb",
    ),
    (
        "flavors.create",
        b'{"name": "f", "vcpus": 1, "ram_mb": 512, "ram": 1}',
        400,
        "unknown field `ram`",
    ),
    ("flavors.create", b'{"name": "", "vcpus": 1, "ram_mb": 512}', 400, "$.name"),
    (
        "flavors.create",
        b'{"name": "f", "vcpus": 1, "ram_mb": 512, "extra_specs": {"a": 1}}',
        400,
        "$.extra_specs",
    ),
    ("servers.action", b'{"id": "x"}', 400, "missing required field `action`"),
    ("servers.action", b'{"id": "x", "action": "fly"}', 400, "$.action"),
    ("servers.action", b'{"id": "x", "action": "reboot", "type": "WARM"}', 400, "$.type"),
    ("servers.action", b'{"id": "x", "action": "stop", "force": true}', 400, "unknown field"),
    ("servers.action", b'{"id": "nope", "action": "stop"}', 404, "server nope not found"),
    ("servers.action", b'{"id": "x", "action": "resize"}', 400, "missing required field"),
    ("servers.events.list", b'{"id": 1}', 400, "$.id"),
    ("servers.events.list", b'{"id": "nope"}', 404, "server nope not found"),
    ("servers.events.get", b'{"id": "x"}', 400, "missing required field `request_id`"),
    ("flavors.get", b"{}", 400, "id or name"),
    ("flavors.get", b'{"id": 5}', 400, "$.id"),
    ("flavors.get", b'{"id": "nope"}', 404, "flavor nope not found"),
    ("flavors.set_extra_specs", b'{"id": "x"}', 400, "missing required field `extra_specs`"),
    ("flavors.set_extra_specs", b'{"id": "x", "extra_specs": {"k": 1}}', 400, "$.extra_specs"),
    ("flavors.set_extra_specs", b'{"id": "nope", "extra_specs": {"k": "v"}}', 404, "not found"),
    ("flavors.delete", b'{"uuid": "x"}', 400, "unknown field `uuid`"),
    ("flavors.delete", b'{"id": "nope"}', 404, "not found"),
    ("flavors.list", b'{"limit": -1}', 400, "$.limit"),
    ("flavors.list", b'{"marker": "nope"}', 400, "marker nope not found"),
    ("images.create", b'{"disk_format": "qcow2"}', 400, "missing required field `name`"),
    ("images.create", b'{"name": "i", "disk_format": "exe"}', 400, "$.disk_format"),
    ("images.create", b'{"name": "i", "properties": []}', 400, "$.properties"),
    ("images.create", b'{"name": "i", "min_ram_mb": -1}', 400, "$.min_ram_mb"),
    ("images.create", b'{"name": "i", "visibility": "shared"}', 400, "$.visibility"),
    ("images.update", b'{"id": "x", "min_ram_mb": -1}', 400, "$.min_ram_mb"),
    ("images.update", b'{"id": "x", "visibility": "shared"}', 400, "$.visibility"),
    ("images.update", b'{"id": "nope", "name": "n"}', 404, "not found"),
    ("images.get", b'{"name": "nope"}', 404, "image nope not found"),
    ("images.delete", b"nope", 400, "malformed JSON"),
    ("images.list", b'{"x": 1}', 400, "unknown field `x`"),
    (
        "servers.create",
        b'{"flavor": "m1.small", "image": "cirros"}',
        400,
        "missing required field `name`",
    ),
    ("servers.create", b'{"name": "s", "image": "cirros"}', 400, "missing required field `flavor`"),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small"}',
        400,
        "missing required field `image`",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "nope", "image": "cirros"}',
        400,
        "flavor: flavor nope not found",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "nope"}',
        400,
        "image: image nope not found",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "az": "x"}',
        400,
        "unknown field `az`",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "availability_zone": "mars"}',
        400,
        "availability_zone 'mars' does not exist",
    ),
    ("servers.create", b'{"name": 7, "flavor": "m1.small", "image": "cirros"}', 400, "$.name"),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "metadata": {"k": 1}}',
        400,
        "$.metadata",
    ),
    ("servers.get", b"{}", 400, "missing required field `id`"),
    ("servers.get", b'{"id": "00000000-0000-0000-0000-000000000000"}', 404, "not found"),
    ("servers.get", b'{"id": "has spaces"}', 404, "not found"),
    ("servers.delete", b'{"id": null}', 400, "$.id"),
    ("servers.update", b'{"id": "x", "name": ""}', 400, "$.name"),
    ("servers.update", b'{"id": "x", "metadata": {"k": 1}}', 400, "$.metadata"),
    ("servers.update", b'{"id": "nope", "name": "n"}', 404, "not found"),
    ("servers.console", b'{"id": "x", "protocol": "spice"}', 400, "$.protocol"),
    ("servers.console", b'{"protocol": "vnc"}', 400, "id"),
    ("servers.console", b'{"id": "nope", "protocol": "serial"}', 404, "not found"),
    ("servers.delete", b'{"id": "00000000-0000-0000-0000-000000000000"}', 404, "not found"),
    ("servers.list", b'{"all_tenants": true}', 400, "unknown field `all_tenants`"),
    ("servers.list", b'{"name": "web("}', 400, "name: 'web(' is not a regular expression"),
    ("servers.list", b'{"marker": "nope"}', 400, "marker nope not found"),
    ("servers.list", b'{"limit": -1}', 400, "$.limit"),
    ("servers.list", b'{"all_projects": "yes"}', 400, "$.all_projects"),
    ("migrations.list", b'{"kind": "teleport"}', 400, "$.kind"),
    ("migrations.list", b'{"marker": "nope"}', 400, "marker nope not found"),
    ("hypervisors.get", b"{}", 400, "id or name"),
    ("hypervisors.get", b'{"name": "nope"}', 404, "hypervisor nope not found"),
    ("availability_zones.list", b'{"zone": "nova"}', 400, "unknown field `zone`"),
    ("services.list", b'{"binary": "x"}', 400, "unknown field `binary`"),
    ("services.set", b'{"host": "h"}', 400, "missing required field `status`"),
    ("services.set", b'{"host": "a.b", "status": "disabled"}', 400, "$.host"),
    ("services.set", b'{"host": "nope", "status": "down"}', 400, "$.status"),
    ("services.set", b'{"host": "nope", "status": "disabled"}', 404, "nope not found"),
    ("hypervisors.list", b'{"detail": 1}', 400, "unknown field `detail`"),
    ("server_groups.create", b'{"name": "g"}', 400, "missing required field `policy`"),
    ("server_groups.create", b'{"name": "g", "policy": "clustered"}', 400, "$.policy"),
    (
        "server_groups.create",
        b'{"name": "g", "policy": "affinity", "max_server_per_host": 2}',
        400,
        "anti-affinity policy only",
    ),
    (
        "server_groups.create",
        b'{"name": "g", "policy": "anti-affinity", "max_server_per_host": 0}',
        400,
        "$.max_server_per_host",
    ),
    ("server_groups.get", b"{}", 400, "missing required field `id`"),
    ("server_groups.get", b'{"id": "nope"}', 404, "server group nope not found"),
    ("server_groups.delete", b'{"id": "nope"}', 404, "server group nope not found"),
    ("server_groups.list", b'{"policy": "affinity"}', 400, "unknown field `policy`"),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "scheduler_hints": {"group": "nope"}}',
        400,
        "scheduler_hints.group: server group nope not found",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "scheduler_hints": {"same_host": "x"}}',
        400,
        "$.scheduler_hints.same_host",
    ),
    ("aggregates.create", b"{}", 400, "missing required field `name`"),
    ("aggregates.create", b'{"name": "a", "metadata": {"k": 1}}', 400, "$.metadata"),
    ("aggregates.list", b'{"x": 1}', 400, "unknown field `x`"),
    ("aggregates.get", b'{"name": "nope"}', 404, "aggregate nope not found"),
    ("aggregates.delete", b"{}", 400, "id or name"),
    ("aggregates.add_host", b'{"id": "nope"}', 400, "missing required field `host`"),
    (
        "aggregates.add_host",
        b'{"id": "nope", "host": "fake-0001"}',
        404,
        "aggregate nope not found",
    ),
    ("aggregates.remove_host", b'{"id": "nope", "host": ""}', 400, "$.host"),
    ("aggregates.set_metadata", b'{"id": "nope", "metadata": {"k": 2}}', 400, "$.metadata"),
    ("aggregates.set_metadata", b'{"id": "nope", "metadata": {}}', 404, "aggregate nope not found"),
    ("inventory.query", b"{}", 400, "missing required field `sql`"),
    ("inventory.query", b'{"sql": ""}', 400, "$.sql"),
    ("inventory.query", b'{"sql": "DELETE FROM hosts"}', 400, "only SELECT is allowed, not DELETE"),
    ("inventory.query", b'{"sql": "SELECT 1", "params": [{}]}', 400, "$.params"),
    ("inventory.report", b'{"name": "everything"}', 400, "$.name"),
    ("images.upload", b"bytes", 400, "needs headers Hvmesh-Image and Hvmesh-Offset"),
    ("images.upload_finish", b'{"id": "x", "size": 1}', 400, "missing required field `sha256`"),
    ("images.upload_finish", b'{"id": "x", "size": 1, "sha256": "abc"}', 400, "$.sha256"),
    ("networks.create", b'{"name": "n"}', 400, "missing required field `cidr`"),
    ("networks.create", b'{"name": "n", "cidr": "10.0.0.0/24", "id": "n1"}', 400, "$.id"),
    ("networks.create", b'{"name": "n", "cidr": "10.0.0.0/33"}', 400, "cidr '10.0.0.0/33'"),
    ("networks.create", b'{"name": "n", "cidr": "10.0.0.1/24"}', 400, "has host bits set"),
    ("networks.create", b'{"name": "n", "cidr": "fd00::/64"}', 400, "only IPv4"),
    (
        "networks.create",
        b'{"name": "n", "cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}',
        400,
        "gateway: 10.0.1.1 is not a host address of 10.0.0.0/24",
    ),
    (
        "networks.create",
        b'{"name": "n", "cidr": "10.0.0.0/24", "network_type": "vlan"}',
        400,
        "needs segmentation_id",
    ),
    (
        "networks.create",
        b'{"name": "n", "cidr": "10.0.0.0/24", "segmentation_id": 4095}',
        400,
        "$.segmentation_id",
    ),
    (
        "networks.create",
        b'{"name": "n", "cidr": "10.0.0.0/24", "dns_nameservers": ["dns.example"]}',
        400,
        "'dns.example' is not an IP address",
    ),
    ("networks.list", b'{"shared": true}', 400, "unknown field `shared`"),
    ("networks.get", b'{"name": "nope"}', 404, "network nope not found"),
    ("networks.delete", b"{}", 400, "id or name"),
    ("ports.create", b"{}", 400, "missing required field `network`"),
    ("ports.create", b'{"network": "nope"}', 400, "network: network nope not found"),
    ("ports.create", b'{"network": "nope", "mac": "zz"}', 400, "$.mac"),
    ("ports.list", b'{"x": 1}', 400, "unknown field `x`"),
    ("ports.get", b'{"id": "nope"}', 404, "port nope not found"),
    ("ports.delete", b"{}", 400, "missing required field `id`"),
    ("keypairs.create", b'{"name": "k"}', 400, "missing required field `public_key`"),
    (
        "keypairs.create",
        b'{"name": "k", "public_key": "not a key"}',
        400,
        "not an OpenSSH public key",
    ),
    (
        "keypairs.create",
        b'{"name": "k", "public_key": "ssh-ed25519 !!!"}',
        400,
        "not valid base64",
    ),
    ("keypairs.create", b'{"name": "a/b", "public_key": "x"}', 400, "$.name"),
    ("keypairs.list", b'{"x": 1}', 400, "unknown field `x`"),
    ("keypairs.get", b'{"name": "nope"}', 404, "keypair nope not found"),
    ("keypairs.delete", b'{"name": ""}', 400, "$.name"),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "networks": ["nope"]}',
        400,
        "networks[0]: network nope not found",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "ports": ["nope"]}',
        400,
        "ports[0]: port nope not found",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "key_name": "nope"}',
        400,
        "key_name: keypair nope not found",
    ),
    (
        "servers.create",
        b'{"name": "s", "flavor": "m1.small", "image": "cirros", "user_data": "%%%"}',
        400,
        "user_data: not valid base64",
    ),
    (
        "servers.action",
        b'{"id": "x", "action": "attach-interface", "net": "n"}',
        400,
        "unknown field `net`",
    ),
    ("servers.action", b'{"id": "x", "action": "detach-interface"}', 400, "missing required field"),
    ("servers.action", b'{"id": "x", "action": "create-image"}', 400, "missing required field"),
    (
        "servers.action",
        b'{"id": "x", "action": "create-image", "name": "s", "metadata": {"k": 1}}',
        400,
        "$.metadata",
    ),
    # Ids that are no KV key, and bodies nested past any sense: 400s, never tracebacks.
    ("servers.get", b'{"id": "a."}', 404, "server a. not found"),
    ("servers.get", b'{"id": "a..b"}', 404, "server a..b not found"),
    ("flavors.get", b'{"id": "a."}', 404, "flavor a. not found"),
    ("ports.get", b'{"id": ".a"}', 404, "port .a not found"),
    ("servers.action", b'{"id": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, "nested too deeply"),
    (
        "servers.action",
        b'{"x": {"a": ' + b"[" * 3000 + b"]" * 3000 + b'}, "action": "reboot"}',
        400,
        "nested too deeply",
    ),
    ("quotas.show", b'{"project": ""}', 400, "$.project"),
    ("quotas.delete", b"{}", 400, "missing required field `project`"),
    ("quotas.set", b'{"cores": 1}', 400, "missing required field `project`"),
    ("quotas.set", b'{"project": "DEMO", "cores": -2}', 400, "$.cores"),
    ("quotas.set", b'{"project": "DEMO", "resources": {"GPU": 1}}', 400, "$.resources"),
    ("quotas.set", b'{"project": "DEMO"}', 400, "give at least one limit"),
    ("quotas.defaults", b'{"project": "DEMO"}', 400, "unknown field `project`"),
    ("limits.show", b'{"project": 5}', 400, "$.project"),
    ("usage.show", b'{"start": "yesterday"}', 400, "not an ISO 8601 date or time"),
    ("usage.show", b'{"start": "2025-01-02", "end": "2025-01-01"}', 400, "must be before"),
    ("sites.list", b'{"all": true}', 400, "unknown field `all`"),
    ("sites.delete", b'{"name": "no such/site"}', 400, "$.name"),
    ("sites.delete", b'{"name": "nowhere"}', 404, "site nowhere not found"),
    # A site's own requests, on hvmesh-site.* (not under hvmesh.api)
    ("hvmesh-site.join", b"{}", 400, "missing required field `site`"),
    ("hvmesh-site.join", b'{"site": {"name": "bad name"}}', 400, "$.site.name"),
    (
        "hvmesh-site.outcome",
        b'{"request_id": "r", "site": "east", "server_ids": [], "status": "gone", "message": "m"}',
        400,
        "$.status",
    ),
]


async def snapshot(dep: Deployment) -> dict[str, Any]:
    """Every record of every bucket, and how many tasks were ever queued."""
    assert dep.store is not None
    state: dict[str, Any] = {}
    for name in BUCKETS:
        if name == "heartbeats":
            continue  # agents write these on their own clock
        bucket = getattr(dep.store, name)
        state[name] = {e.key: msgspec.to_builtins(e.value) async for e in bucket.entries()}
    info = await dep.nc.jetstream().stream_info(TASKS_STREAM)
    state["tasks_queued"] = info.state.last_seq
    return state


# One deployment serves every case here: each case must leave it exactly as it found it.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    async with open_deployment(tmp_path_factory.mktemp("bad-payloads")) as dep:
        await dep.start_core(fake_hosts=2)
        await make_flavor_image(ApiClient(await dep.connect("admin")))
        yield dep


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(seeded: Deployment) -> ApiClient:
    return ApiClient(await seeded.connect("admin"))


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "text"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
async def test_bad_payload_is_refused_and_changes_nothing(
    seeded: Deployment, admin: ApiClient, endpoint: str, body: bytes, code: int, text: str
) -> None:
    before = await snapshot(seeded)
    if endpoint.startswith("hvmesh-site."):
        msg = await admin.nc.request(endpoint, body, timeout=10)
    else:
        msg = await admin.raw(endpoint, body)
    assert msg.headers["Nats-Service-Error-Code"] == str(code)
    error = json.loads(msg.data)["error"]
    assert error["code"] == code
    assert text in error["message"]
    assert msg.headers["Nats-Service-Error"] == error["message"]
    assert await snapshot(seeded) == before


async def test_every_endpoint_is_covered(seeded: Deployment) -> None:
    api = ApiService(seeded.nc, seeded.config())
    subjects = {p[1].removeprefix("hvmesh.api.") for p in api.service._pending}
    assert subjects == {c[0] for c in CASES}
