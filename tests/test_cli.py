"""The hvmesh CLI against a running deployment, and `hvmesh up` from start to Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import nats

from hvmesh.core.ops import audit, natsserver
from hvmesh.core.state.store import Store
from tests.support import (
    HVMESH,
    Cli,
    Deployment,
    gone,
    hvmesh,
    settled,
    wait_for_services,
    wait_server,
)


async def test_cli_boot_list_show_delete(cloud: Deployment) -> None:
    cli = Cli(cloud)
    flavor = await cli.json(
        "flavor", "create", "m1.small", "--vcpus", "2", "--ram", "1024", "--disk", "5"
    )
    assert flavor["vcpus"] == 2 and flavor["ram_mb"] == 1024
    assert [f["name"] for f in await cli.json("flavor", "list")] == ["m1.small"]
    await cli.ok(
        "image", "create", "cirros", "--disk-format", "qcow2", "--property", "os_distro=cirros"
    )
    image = await cli.json("image", "show", "cirros")
    assert image["properties"] == {"os_distro": "cirros"}

    code, out, err = await hvmesh(
        "server",
        "create",
        "vm1",
        "--flavor",
        "m1.small",
        "--image",
        "cirros",
        "--wait",
        "-f",
        "json",
        *cli.auth,
    )
    assert code == 0, err
    server = json.loads(out)
    assert server["status"] == "ACTIVE"
    assert "ACTIVE" in err  # progress lines go to stderr
    table = await cli.ok("server", "list")
    header = [cell.strip() for cell in table.splitlines()[1].strip("|").split("|")]
    assert header[:3] == ["ID", "Name", "Status"]
    assert "vm1" in table and "ACTIVE" in table
    shown = await cli.json("server", "show", server["id"])
    assert shown["host"] == server["host"]
    hypervisors = await cli.json("hypervisor", "list")
    assert sum(h["running_vms"] for h in hypervisors) == 1
    assert sum(h["memory_mb_used"] for h in hypervisors) == 1024

    await cli.ok("server", "delete", server["id"], "--wait")
    assert await cli.json("server", "list") == []
    assert await audit.audit(cloud.store) == []
    assert all(not h.allocations for h in await cloud.store.hosts.values())


async def test_cli_multi_create(cloud: Deployment) -> None:
    cli = Cli(cloud)
    await cli.ok("flavor", "create", "m1.small", "--vcpus", "1", "--ram", "256")
    await cli.ok("image", "create", "cirros", "--disk-format", "qcow2")
    servers = await cli.json(
        "server", "create", "web", "--flavor", "m1.small", "--image", "cirros",
        "--min", "2", "--max", "3", "--wait",
    )  # fmt: skip
    assert sorted(s["name"] for s in servers) == ["web-1", "web-2", "web-3"]
    assert {s["status"] for s in servers} == {"ACTIVE"}
    assert len({s["reservation_id"] for s in servers}) == 1
    line = await cli.fails(
        "server", "create", "x", "--flavor", "m1.small", "--image", "cirros", "--min", "3",
        "--max", "2",
    )  # fmt: skip
    assert line == "error (400): max_count (2) is less than min_count (3)"
    assert await audit.audit(cloud.store) == []


async def test_cli_errors_are_one_line(cloud: Deployment) -> None:
    cli = Cli(cloud)
    assert await cli.fails("server", "show", "nope") == "error (404): server nope not found"
    line = await cli.fails("flavor", "create", "bad", "--vcpus", "0", "--ram", "512")
    assert line.startswith("error (400):") and "$.vcpus" in line
    line = await cli.fails("server", "create", "x", "--flavor", "none", "--image", "none")
    assert line == "error (400): flavor: flavor none not found"
    line = await cli.fails(
        "flavor", "create", "bad", "--vcpus", "1", "--ram", "1", "--property", "novalue"
    )
    assert "expected KEY=VALUE" in line
    code, _, err = await hvmesh(
        "server", "list", "--url", f"nats://127.0.0.1:{natsserver.free_port()}", "--timeout", "2"
    )
    assert code == 1 and err.startswith("error: cannot connect to NATS")


async def test_cli_raw_request(cloud: Deployment) -> None:
    cli = Cli(cloud)
    await cli.ok("flavor", "create", "m1.small", "--vcpus", "1", "--ram", "256")
    reply = json.loads(await cli.ok("req", "hvmesh.api.flavors.get", '{"name": "m1.small"}'))
    assert reply["flavor"]["ram_mb"] == 256


async def test_hvmesh_up_end_to_end(tmp_path: Path) -> None:
    port, leaf = natsserver.free_port(), natsserver.free_port()
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    proc = await asyncio.create_subprocess_exec(
        HVMESH,
        "up",
        "--data-dir",
        str(tmp_path / "data"),
        "--nats-port",
        str(port),
        "--leaf-port",
        str(leaf),
        "--fake-hosts",
        "2",
        "--metadata-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        banner = ""
        async with asyncio.timeout(60):
            while "Stop: Ctrl-C" not in banner:
                line = (await proc.stdout.readline()).decode()
                assert line, f"hvmesh up exited early: {banner}"
                banner += line
        assert f"nats://127.0.0.1:{port}" in banner
        context_dir = tmp_path / "xdg" / "nats" / "context"
        admin_ctx = json.loads((context_dir / "hvmesh-admin.json").read_text())
        assert admin_ctx["user"] == "admin"
        assert oct((context_dir / "hvmesh-demo.json").stat().st_mode & 0o777) == "0o600"

        # The operator, through the CLI with the context `hvmesh up` wrote.
        for args in (
            ("flavor", "create", "m1.small", "--vcpus", "1", "--ram", "512", "--disk", "1"),
            ("image", "create", "cirros"),
        ):
            code, _, err = await hvmesh(*args, env=env)
            assert code == 0, err
        code, out, err = await hvmesh(
            "server",
            "create",
            "vm1",
            "--flavor",
            "m1.small",
            "--image",
            "cirros",
            "--wait",
            "-f",
            "json",
            env=env,
        )
        assert code == 0, err
        assert json.loads(out)["status"] == "ACTIVE"

        # The demo tenant, with a raw request as `nats req` sends it.
        code, out, err = await hvmesh(
            "--context",
            "hvmesh-demo",
            "req",
            "hvmesh.api.servers.create",
            '{"name": "vm2", "flavor": "m1.small", "image": "cirros"}',
            env=env,
        )
        assert code == 0, err
        tenant_server = json.loads(out)["server"]
        assert tenant_server["project"] == "DEMO"
        nc = await nats.connect(admin_ctx["url"], user="admin", password=admin_ctx["password"])
        try:
            await wait_for_services(nc, "hvmesh-api", 1)
            await wait_for_services(nc, "hvmesh-scheduler", 1)
            store = await Store(nc.jetstream()).open(create=False)
            server = await wait_server(store, tenant_server["id"], settled)
            assert server is not None and server.vm_state == "active"
            code, out, _ = await hvmesh(
                "--context", "hvmesh-demo", "server", "list", "-f", "json", env=env
            )
            assert [s["name"] for s in json.loads(out)] == ["vm2"]
            code, out, _ = await hvmesh("server", "delete", tenant_server["id"], env=env)
            assert code == 0
            await wait_server(store, tenant_server["id"], gone)
        finally:
            await nc.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
    assert code == 0
    # nats-server went down with it.
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        pass
    else:
        writer.close()
        raise AssertionError("nats-server still listens after hvmesh up stopped")


async def test_hvmesh_up_stops_when_its_nats_server_dies(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    proc = await asyncio.create_subprocess_exec(
        HVMESH,
        "up",
        "--data-dir",
        str(tmp_path / "data"),
        "--nats-port",
        str(natsserver.free_port()),
        "--leaf-port",
        str(natsserver.free_port()),
        "--fake-hosts",
        "1",
        "--metadata-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    async with asyncio.timeout(60):
        while b"Stop: Ctrl-C" not in await proc.stdout.readline():
            pass
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid), "nats-server"], capture_output=True, text=True
    )
    (nats_pid,) = children.stdout.split()
    os.kill(int(nats_pid), signal.SIGKILL)
    code = await asyncio.wait_for(proc.wait(), timeout=30)
    err = (await proc.stderr.read()).decode()
    assert code == 1
    assert "error: nats-server exited" in err


async def test_up_refuses_connection_options() -> None:
    code, _, err = await hvmesh("up", "--url", "nats://127.0.0.1:4222")
    assert code == 1
    assert (
        err.strip()
        == "error: hvmesh up runs its own nats-server: --url and --context are for other commands"
    )
