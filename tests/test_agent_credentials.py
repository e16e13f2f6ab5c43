"""Agents' own NATS users, on a real nats-server running the shipped nats.conf.

An agent with its own NKEY user boots a server end to end; with the same credentials a
client cannot publish to another host's subjects, write another host's record or a
server record, call the API or JetStream's management API, or read other accounts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from hvmesh.core import config
from hvmesh.core.ops import agent_credentials
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.records import Heartbeat, Host
from tests.support import (
    ApiClient,
    Deployment,
    act,
    boot,
    hvmesh,
    idle,
    until,
    wait_server,
)
from tests.test_snapshot import upload_image


def conf_dir(dep: Deployment) -> Path:
    """Where the deployment's nats.conf runs from, beside its users file."""
    return dep.server.log_path.parent


async def reload(dep: Deployment, issued: agent_credentials.Issued) -> None:
    """Have nats-server read its users again, and wait until the new user can connect."""
    os.kill(dep.server.process.pid, signal.SIGHUP)

    async def accepted() -> bool:
        try:
            nc = await connect_as(dep, issued)
        except Exception:
            return False
        await nc.close()
        return True

    await until(accepted, timeout=20, what=f"nats-server to accept {issued.name}'s user")


async def connect_as(
    dep: Deployment, issued: agent_credentials.Issued, errors: list[str] | None = None
) -> Any:
    async def record(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    return await nats.connect(
        dep.server.address,
        nkeys_seed=str(issued.seed_file),
        inbox_prefix=issued.inbox_prefix,
        error_cb=record,
        allow_reconnect=False,
        connect_timeout=3,
    )


def agent_config(dep: Deployment, issued: agent_credentials.Issued) -> config.Config:
    cfg = dep.config()
    nats_cfg = msgspec.structs.replace(
        cfg.nats, user="", password="", nkey=str(issued.seed_file), inbox_prefix=issued.inbox_prefix
    )
    return msgspec.structs.replace(cfg, nats=nats_cfg)


async def violation(errors: list[str], subject: str) -> None:
    """The server told the client it may not use `subject`."""
    await until(
        lambda: any(  # nats-py lowers the server's message
            "permissions violation" in e and subject.lower() in e for e in errors
        ),
        timeout=10,
        what=f"a permissions violation on {subject}",
    )


async def test_an_agent_with_its_own_user_boots_and_snapshots_a_server(
    deployment: Deployment, admin: ApiClient
) -> None:
    """Everything an agent does for its host works with its own user's permissions: the
    host record and heartbeat, its work, image bytes into its cache, a snapshot's upload,
    the power-state sync and reconcile (every server record read)."""
    issued = agent_credentials.issue(conf_dir(deployment), "own-1")
    await reload(deployment, issued)
    await deployment.start_core()
    agent = await deployment.start_agent("own-1", agent_config(deployment, issued))
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 1})
    await upload_image(admin, "cirros", os.urandom(2000))
    server = await boot(deployment, admin)
    assert server.host == "own-1"
    assert deployment.store is not None
    host = await deployment.store.hosts.get("own-1")
    assert host is not None and host.value.driver == "fake"
    assert await deployment.store.heartbeats.get("own-1") is not None

    reply = await act(admin, server.id, "create-image", name="snap")
    done = await wait_server(deployment.store, server.id, idle)
    assert done is not None and done.vm_state == "active" and done.fault is None
    image = (await admin("images.get", {"id": reply["image_id"]}))["image"]
    assert image["status"] == "active" and image["size"] > 2000

    await agent.report_power_states()
    await agent.reconcile()
    assert "Violation" not in deployment.server.log_path.read_text()


async def test_a_stolen_agent_user_reaches_only_its_own_host(
    deployment: Deployment, admin: ApiClient
) -> None:
    await deployment.start_core(fake_hosts=1)  # fake-0001: another host
    issued = agent_credentials.issue(conf_dir(deployment), "own-1")
    await reload(deployment, issued)
    errors: list[str] = []
    nc = await connect_as(deployment, issued, errors)
    deployment.connections.append(nc)
    js = nc.jetstream(timeout=3)
    other = "fake-0001"

    # Another host's events and work queue: refused by the server.
    await nc.publish(subjects.events(other, "x"), b"{}")
    await violation(errors, subjects.events(other, "x"))
    await nc.publish(subjects.work(other), b"{}")
    await violation(errors, subjects.work(other))
    # Its own events go through (a JetStream publish is acknowledged).
    ack = await js.publish(subjects.events("own-1", "x"), b"{}")
    assert ack.stream == subjects.EVENTS_STREAM

    # Another host's record and heartbeat, and any server record: refused.
    kv_hosts = await js.key_value(subjects.HOSTS_BUCKET)
    mine = msgspec.json.encode(Host(name="own-1", driver="fake"))
    await kv_hosts.put("own-1", mine)
    with pytest.raises(NatsTimeout):
        await kv_hosts.put(other, mine)
    await violation(errors, f"$KV.{subjects.HOSTS_BUCKET}.{other}")
    # Reading it is allowed (gets name the key in the body): a known limit.
    assert (await kv_hosts.get(other)).value is not None
    beat = msgspec.json.encode(Heartbeat(host=other, at="2020-01-01T00:00:00Z", agent_id="x"))
    with pytest.raises(NatsTimeout):
        await (await js.key_value(subjects.HEARTBEATS_BUCKET)).put(other, beat)
    with pytest.raises(NatsTimeout):
        await (await js.key_value(subjects.SERVERS_BUCKET)).put("some-server", b"{}")
    assert deployment.store is not None
    record = await deployment.store.hosts.get(other)
    assert record is not None and record.value.driver == "fake"  # untouched

    # The API and the micro services' $SRV, tasks, JetStream's management API: refused.
    errors.clear()
    with pytest.raises(NatsTimeout):
        await nc.request("hvmesh.api.servers.list", b"{}", timeout=2)
    await violation(errors, "hvmesh.api.servers.list")
    with pytest.raises(NatsTimeout):
        await nc.request("$SRV.PING", b"", timeout=2)
    await violation(errors, "$SRV.PING")
    await nc.publish(subjects.task("build"), b"{}")
    await violation(errors, subjects.task("build"))
    with pytest.raises(NatsTimeout):
        await js.delete_stream(subjects.WORK_STREAM)
    await violation(errors, f"$JS.API.STREAM.DELETE.{subjects.WORK_STREAM}")
    # Nor another host's work consumer.
    with pytest.raises(NatsTimeout):
        await js.pull_subscribe(
            subjects.work(other), durable=subjects.agent_durable(other), stream=subjects.WORK_STREAM
        )
    # Nor listen to other hosts' requests, or to others' replies.
    await nc.subscribe(subjects.agent(other, "console_log"))
    await violation(errors, subjects.agent(other, "console_log"))
    await nc.subscribe("_INBOX.>")
    await violation(errors, "_INBOX.>")
    assert await deployment.store.servers.get("some-server") is None


async def test_an_agent_user_reads_no_tenant_traffic(deployment: Deployment) -> None:
    """Its messages stay in the HVMESH account, and it cannot listen to notifications."""
    issued = agent_credentials.issue(conf_dir(deployment), "own-1")
    await reload(deployment, issued)
    demo = await deployment.connect("demo")
    seen: list[bytes] = []

    async def got(msg: Any) -> None:
        seen.append(msg.data)

    await demo.subscribe(subjects.events("own-1", "x"), cb=got)
    await demo.flush()
    errors: list[str] = []
    nc = await connect_as(deployment, issued, errors)
    deployment.connections.append(nc)
    ack = await nc.jetstream().publish(subjects.events("own-1", "x"), b"{}")
    assert ack.seq > 0
    await demo.flush()
    assert seen == []  # the tenant's account never sees the agent's messages
    await nc.subscribe(subjects.NOTIFY_ALL)
    await violation(errors, subjects.NOTIFY_ALL)


def test_permissions_name_only_the_hosts_given() -> None:
    perms = agent_credentials.permissions("fleet", ["h1", "h2"])
    published = perms["publish"]["allow"]
    assert "hvmesh.events.h1.*" in published and "hvmesh.events.h2.*" in published
    assert "$KV.hosts.h1" in published and "$KV.hosts.h3" not in published
    assert not any(p.startswith("hvmesh.api") or p.startswith("$SRV") for p in published)
    assert not any(p.startswith("$KV.servers") for p in published)
    assert perms["subscribe"]["allow"][0] == "_INBOX.agent-fleet.>"
    with pytest.raises(agent_credentials.CredentialError, match="no dots"):
        agent_credentials.permissions("fleet", ["a.b"])


async def test_the_cli_issues_usable_credentials(deployment: Deployment) -> None:
    directory = conf_dir(deployment)
    code, out, err = await hvmesh(
        "manage", "agent-credentials", "cli-1", "--conf-dir", str(directory), "--format", "json"
    )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["name"] == "cli-1" and shown["hosts"] == ["cli-1"]
    seed_file = Path(shown["seed_file"])
    assert oct(seed_file.stat().st_mode & 0o777) == "0o600"
    assert shown["public_key"] in (directory / agent_credentials.USERS_FILE).read_text()
    issued = agent_credentials.Issued(
        name="cli-1", public_key=shown["public_key"], seed_file=seed_file, hosts=["cli-1"]
    )
    assert f"nkey = {seed_file}" in shown["config"]
    await reload(deployment, issued)
    nc = await connect_as(deployment, issued)
    deployment.connections.append(nc)
    ack = await nc.jetstream().publish(subjects.events("cli-1", "x"), b"{}")
    assert ack.stream == subjects.EVENTS_STREAM

    code, _, err = await hvmesh(
        "manage", "agent-credentials", "bad.name", "--conf-dir", str(directory)
    )
    assert code != 0 and "no dots" in err


async def test_an_agent_user_makes_no_durable_consumer_on_server_records(
    deployment: Deployment,
) -> None:
    """Creating consumers on the servers bucket is allowed for reads, ephemeral ones only."""
    issued = agent_credentials.issue(conf_dir(deployment), "own-1")
    await reload(deployment, issued)
    nc = await connect_as(deployment, issued)
    deployment.connections.append(nc)
    stream = f"KV_{subjects.SERVERS_BUCKET}"
    request = {"stream_name": stream, "config": {"durable_name": "stolen", "ack_policy": "none"}}
    reply = await nc.request(f"$JS.API.CONSUMER.CREATE.{stream}", json.dumps(request).encode())
    error = json.loads(reply.data)["error"]
    assert "durable" in error["description"], error
    with pytest.raises(NatsTimeout):
        await nc.jetstream(timeout=3).consumer_info(stream, "stolen")  # not readable either


async def test_reissuing_a_credential_cuts_off_the_old_seed(deployment: Deployment) -> None:
    first = agent_credentials.issue(conf_dir(deployment), "own-1")
    await reload(deployment, first)
    old_seed = first.seed_file.read_text()
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    async def quiet(exc: Exception) -> None:
        """The reload's disconnection is expected."""

    old = await nats.connect(
        deployment.server.address,
        nkeys_seed_str=old_seed.strip(),
        inbox_prefix=first.inbox_prefix,
        allow_reconnect=False,
        closed_cb=on_closed,
        error_cb=quiet,
    )
    deployment.connections.append(old)
    second = agent_credentials.issue(conf_dir(deployment), "own-1")
    assert second.public_key != first.public_key
    await reload(deployment, second)
    await asyncio.wait_for(closed.wait(), timeout=20)  # the reload closed it
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            deployment.server.address,
            nkeys_seed_str=old_seed.strip(),
            allow_reconnect=False,
            connect_timeout=3,
        )
