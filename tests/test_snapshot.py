"""createImage (create-image): a server's disk as a new image, through API, conductor, agent and CLI."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from typing import Any

import pytest

from hvmesh.agents.fake.driver import SNAPSHOT_MAGIC, FakeDriver
from hvmesh.agents.runtime import AgentRuntime
from hvmesh.agents.snapshots import STAGING
from hvmesh.core.bus import connection
from hvmesh.core.ops.launcher import make_agent
from hvmesh.core.protocol import errors
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.records import Server
from hvmesh.core.state import image_data
from hvmesh.plugins import hookimpl, manager
from tests.support import (
    ApiClient,
    Cli,
    Deployment,
    act,
    boot,
    idle,
    resting,
    wait_server,
)
from tests.test_agent_death import last_action
from tests.test_bad_payloads import snapshot as everything

BASE = os.urandom(3000)  # the base image's bytes: a snapshot of its server carries them

NO_SNAPSHOT = FakeDriver.lacking("supports_snapshot", name="fake-nosnap")


class NoSnapshotPlugin:
    @hookimpl
    def hvmesh_register_drivers(self, register: Any) -> None:
        register(NO_SNAPSHOT.name, NO_SNAPSHOT, description="fake hosts that cannot snapshot")


async def _quiet(exc: Exception) -> None:
    """Connection errors during teardown are expected."""


async def start(dep: Deployment, **fake: Any) -> AgentRuntime:
    """Core services, one fake host h1 (with `fake` settings), a flavor and an image with
    uploaded bytes, named m1.small and cirros."""
    cfg = dep.config(fake=fake)
    await dep.start_core(cfg)
    agent = await dep.start_agent("h1", cfg)
    admin = ApiClient(await dep.connect("admin"))
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 2})
    await upload_image(admin, "cirros", BASE, min_ram_mb=64)
    return agent


async def upload_image(client: ApiClient, name: str, data: bytes, **extra: Any) -> dict:
    body = {"name": name, "disk_format": "raw", "upload": True, **extra}
    image = (await client("images.create", body))["image"]
    headers = {"Hvmesh-Image": image["id"], "Hvmesh-Offset": "0"}
    await client("images.upload", data, headers=headers)
    sha = hashlib.sha256(data).hexdigest()
    done = await client(
        "images.upload_finish", {"id": image["id"], "size": len(data), "sha256": sha}
    )
    assert done["image"]["status"] == "active"
    return done["image"]


async def image_bytes(dep: Deployment, image: dict) -> bytes:
    out = io.BytesIO()
    await image_data.download(dep.nc.jetstream(), image["id"], image["checksum"], out)
    return out.getvalue()


async def task_states(dep: Deployment, server_id: str) -> list[str | None]:
    """Every task_state the server's record passes through, from the one it shows now
    until it shows none again after a task."""
    assert dep.store is not None
    seen: list[str | None] = []
    watcher = await dep.store.servers.kv.watch(server_id)
    try:
        async with asyncio.timeout(60):
            async for e in watcher:
                if e is not None and e.value and e.operation is None:
                    state = dep.store.servers.decode(e.value).task_state
                    if not seen or seen[-1] != state:
                        seen.append(state)
                    if state is None and any(seen):
                        return seen
    finally:
        await watcher.stop()
    raise AssertionError(f"the watch ended: {seen}")


async def test_snapshot_becomes_an_active_image_that_boots(
    deployment: Deployment, demo: ApiClient, admin: ApiClient
) -> None:
    agent = await start(deployment)
    server = await boot(deployment, demo, "web")
    watching = asyncio.create_task(task_states(deployment, server.id))

    reply = await act(demo, server.id, "create-image", name="web-snap", metadata={"tier": "web"})
    image_id = reply["image_id"]
    # The image exists at once, queued, the server's project's and private.
    early = (await demo("images.get", {"id": image_id}))["image"]
    assert early["status"] in ("queued", "saving", "active"), early
    assert (early["project"], early["visibility"], early["name"]) == ("DEMO", "private", "web-snap")

    done = await wait_server(deployment.store, server.id, idle)
    assert done is not None and done.vm_state == S.ACTIVE and done.fault is None
    assert done.power_state == S.RUNNING and done.pending_image is None
    seen = await watching
    assert seen[-4:] == [S.IMAGE_SNAPSHOT, S.IMAGE_PENDING_UPLOAD, S.IMAGE_UPLOADING, None], seen

    image = (await demo("images.get", {"id": image_id}))["image"]
    base = (await demo("images.get", {"id": "cirros"}))["image"]
    assert image["status"] == "active" and image["disk_format"] == "raw"
    props = image["properties"]
    assert props["image_type"] == "snapshot" and props["instance_uuid"] == server.id
    assert props["base_image_ref"] == base["id"] and props["tier"] == "web"
    assert (image["min_disk_gb"], image["min_ram_mb"]) == (2, 64)  # the flavor's disk
    data = await image_bytes(deployment, image)
    assert image["size"] == len(data) and image["checksum"] == hashlib.sha256(data).hexdigest()
    header, _, disk = data.partition(b"\n")
    assert header.decode().startswith(f"{SNAPSHOT_MAGIC} server={server.id} name=web")
    assert disk == BASE  # the guest's disk, as it booted
    action = await last_action(deployment, server.id, reply["request_id"])
    assert action.action == "create-image" and action.message is None
    events = {e.event: e.result for e in action.events}
    assert events["compute_snapshot"] == events["compute_upload_snapshot"] == "Success"
    assert not any((agent.images.dir / STAGING).iterdir())  # nothing left staged

    # A server booted from the snapshot comes up ACTIVE on the snapshot's bytes.
    copy = await boot(deployment, demo, "web-copy", image=image_id)
    assert copy.image_id == image_id
    assert agent.driver.disks[copy.id].read_bytes() == data

    # A stopped server is snapshotted and stays stopped; the CLI follows it with --wait.
    await act(admin, server.id, "stop")
    await wait_server(deployment.store, server.id, resting(S.STOPPED))
    made = await Cli(deployment).json("server", "image", "create", server.id, "--wait")
    assert made["name"] == "web" and made["status"] == "active" and made["project"] == "DEMO"
    stopped = await wait_server(deployment.store, server.id, idle)
    assert stopped is not None and stopped.vm_state == S.STOPPED
    assert stopped.power_state == S.SHUTDOWN


async def test_a_failed_snapshot_leaves_no_image_and_a_fault(
    deployment: Deployment, demo: ApiClient
) -> None:
    await start(deployment, fail_steps=["snapshot"])
    server = await boot(deployment, demo)
    images_before = await demo("images.list")

    reply = await act(demo, server.id, "create-image", name="broken")
    done = await wait_server(deployment.store, server.id, idle)
    assert done is not None and done.vm_state == S.ACTIVE and done.pending_image is None
    assert done.fault is not None and "create-image failed" in done.fault.message
    assert "simulated snapshot failure" in done.fault.message
    with pytest.raises(errors.NotFound):
        await demo("images.get", {"id": reply["image_id"]})
    assert await demo("images.list") == images_before
    action = await last_action(deployment, server.id, reply["request_id"])
    assert action.message == "Error"
    assert [e.result for e in action.events if e.event == "compute_snapshot"] == ["Error"]
    view = (await demo("servers.get", {"id": server.id}))["server"]
    assert view["status"] == "ACTIVE"


async def test_snapshot_refusals_change_nothing(
    deployment: Deployment, demo: ApiClient, admin: ApiClient
) -> None:
    await start(deployment)
    server = await boot(deployment, demo)  # on h1, the one host so far
    registry = manager.load(extra=[NoSnapshotPlugin()], strict=True)
    cfg = deployment.config(compute={"availability_zone": "az-nosnap"})
    nc = await connection.connect(cfg.nats, "test-agent-nosnap", error_cb=_quiet)
    deployment.connections.append(nc)
    await deployment.start(make_agent(nc, cfg, NO_SNAPSHOT.name, "nosnap", registry))
    other = await boot(deployment, admin, "elsewhere", availability_zone="az-nosnap")
    before = await everything(deployment)

    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "missing required field `name`"),
        ({"name": ""}, "$.name"),
        ({"name": "x" * 256}, "$.name"),
        ({"name": "s", "metadata": ["a"]}, "$.metadata"),
        ({"name": "s", "metadata": {"k": 1}}, "$.metadata"),
        ({"name": "s", "metadata": {"k": "v" * 256}}, "$.metadata"),
        ({"name": "s", "image_id": "mine"}, "image_id is chosen by the API"),
        ({"name": "s", "force": True}, "unknown field `force`"),
    ]
    for body, text in bad:
        with pytest.raises(errors.BadRequest) as refused:
            await act(demo, server.id, "create-image", **body)
        assert text in refused.value.message, (body, refused.value.message)

    # A host whose driver cannot snapshot: 409 naming the capability.
    with pytest.raises(errors.Conflict, match="supports_snapshot"):
        await act(admin, other.id, "create-image", name="no")
    assert await everything(deployment) == before

    # A state Nova refuses createImage in: 409 naming it, and nothing written.
    await act(demo, server.id, "shelve")
    shelved = await wait_server(deployment.store, server.id, idle)
    assert shelved is not None and shelved.vm_state in (S.SHELVED, S.SHELVED_OFFLOADED)
    before = await everything(deployment)
    with pytest.raises(errors.Conflict, match=f"vm_state {shelved.vm_state}"):
        await act(demo, server.id, "create-image", name="no")
    assert await everything(deployment) == before


async def test_an_abandoned_snapshot_image_is_deleted(
    deployment: Deployment, demo: ApiClient
) -> None:
    """The server is deleted while its snapshot runs: once the action can no longer be
    running (the expiry timer), its image is deleted."""
    cfg = deployment.config(conductor={"action_timeout": 1.0}, fake={"step_delay": 0.5})
    await deployment.start_core(cfg)
    await deployment.start_agent("h1", cfg)
    admin = ApiClient(await deployment.connect("admin"))
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 1})
    await upload_image(admin, "cirros", BASE)
    server: Server = await boot(deployment, demo)
    reply = await act(demo, server.id, "create-image", name="orphan")
    await demo("servers.delete", {"id": server.id})
    assert deployment.store is not None
    watcher = await deployment.store.images.kv.watch(reply["image_id"])
    try:
        async with asyncio.timeout(60):
            async for e in watcher:
                if e is not None and (not e.value or e.operation is not None):
                    break
    finally:
        await watcher.stop()
    assert await deployment.store.images.get(reply["image_id"]) is None
