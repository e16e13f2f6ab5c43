"""NATS over TLS (a demo CA's certificate), and the monitoring port on loopback.

A real nats-server runs the shipped nats.conf with the TLS blocks `hvmesh up --tls` writes:
a client without the CA cannot connect, one with it can, the services and the CLI work
through it, and `hvmesh up --tls` itself boots and answers the contexts it writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from hvmesh.core import config
from hvmesh.core.bus import connection
from hvmesh.core.ops import natsserver, tls
from tests.support import HVMESH, ApiClient, Deployment, fast_config, hvmesh


def varz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=10) as reply:
        return dict(json.loads(reply.read()))


@pytest.fixture
async def tls_deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    files = tls.demo_certificates(tmp_path / "tls", ["127.0.0.1"])
    server = await natsserver.start(
        tmp_path / "nats",
        port=natsserver.free_port(),
        leaf_port=natsserver.free_port(),
        tls_files=files,
    )
    dep = Deployment(server, tmp_path)
    try:
        yield dep
    finally:
        await dep.close()


def tls_config(dep: Deployment) -> config.Config:
    cfg = fast_config(dep.server.address, dep.server.passwords["service"])
    assert dep.server.tls is not None
    nats_cfg = msgspec.structs.replace(cfg.nats, tls_ca=str(dep.server.tls.ca))
    return msgspec.structs.replace(cfg, nats=nats_cfg)


async def test_a_client_must_check_the_server_against_the_ca(tls_deployment: Deployment) -> None:
    server = tls_deployment.server
    assert server.address.startswith("tls://")
    with pytest.raises((ssl.SSLError, OSError, nats.errors.Error)):
        await nats.connect(  # the system's CAs do not know the demo CA
            server.url_for("admin"), allow_reconnect=False, connect_timeout=3
        )
    plain = f"nats://admin:{server.passwords['admin']}@{server.host}:{server.port}"
    with pytest.raises((ssl.SSLError, OSError, nats.errors.Error)):
        await nats.connect(plain, allow_reconnect=False, connect_timeout=3, tls=None)
    nc = await nats.connect(
        server.url_for("admin"), tls=server.tls_context(), allow_reconnect=False
    )
    try:
        assert nc.is_connected
    finally:
        await nc.close()


async def test_services_and_the_cli_work_over_tls(tls_deployment: Deployment) -> None:
    dep = tls_deployment
    cfg = tls_config(dep)
    await dep.start_core(cfg, fake_hosts=1)
    nc = await connection.connect(cfg.nats, "test-tls-client")
    dep.connections.append(nc)
    admin = ApiClient(nc)
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 1})
    hypervisors = await admin("hypervisors.list")
    assert [h["name"] for h in hypervisors["hypervisors"]] == ["fake-0001"]

    cfg_file = dep.tmp / "cli.ini"
    config.write(cfg, cfg_file)
    code, out, err = await hvmesh(
        "flavor", "list", "--format", "json", env={"HVMESH_CONFIG": str(cfg_file)}
    )
    assert code == 0, err
    assert [f["name"] for f in json.loads(out)] == ["m1.small"]
    # Without the CA, the CLI says why it cannot connect.
    bare = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, tls_ca=""))
    config.write(bare, cfg_file)
    code, _, err = await hvmesh("flavor", "list", env={"HVMESH_CONFIG": str(cfg_file)})
    assert code != 0 and "TLS: CERTIFICATE_VERIFY_FAILED" in err, err


async def test_leaf_nodes_need_tls_too(tls_deployment: Deployment) -> None:
    shown = varz(tls_deployment.server.monitor_port)
    assert shown["tls_required"] is True
    assert shown["leaf"]["tls_required"] is True


async def test_the_monitoring_port_answers_on_loopback(deployment: Deployment) -> None:
    shown = varz(deployment.server.monitor_port)
    assert shown["server_name"] == f"test-{os.getpid()}"
    assert shown["http_host"] == "127.0.0.1"
    assert shown["http_port"] == deployment.server.monitor_port
    assert not shown.get("tls_required")  # no TLS unless asked for


def test_own_certificates_must_all_exist(tmp_path: Path) -> None:
    with pytest.raises(tls.TlsError, match="--tls-cert, --tls-key and --tls-ca"):
        tls.TlsFiles.given(str(tmp_path / "a.pem"), "", "")
    with pytest.raises(tls.TlsError, match="no such file"):
        tls.TlsFiles.given(*(str(tmp_path / n) for n in ("a.pem", "b.pem", "c.pem")))


def test_demo_certificates_are_made_once(tmp_path: Path) -> None:
    first = tls.demo_certificates(tmp_path, ["127.0.0.1"])
    made = first.cert.read_bytes(), first.ca.read_bytes()
    again = tls.demo_certificates(tmp_path, ["127.0.0.1"])
    assert (again.cert.read_bytes(), again.ca.read_bytes()) == made
    other = tls.demo_certificates(tmp_path, ["10.1.2.3"])  # a new name: a new certificate
    assert other.cert.read_bytes() != made[0] and other.ca.read_bytes() == made[1]
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"


async def test_hvmesh_up_tls_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    monitor = natsserver.free_port()
    proc = await asyncio.create_subprocess_exec(
        HVMESH, "up", "--tls", "--data-dir", str(tmp_path / "data"),
        "--nats-port", str(natsserver.free_port()), "--leaf-port", str(natsserver.free_port()),
        "--monitor-port", str(monitor), "--metadata-port", "0", "--fake-hosts", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            first = (await proc.stdout.readline()).decode()
            while "hvmesh is up" not in first:
                first = (await proc.stdout.readline()).decode()
                assert first, "hvmesh up exited before its banner"
        assert "tls://" in first and f"127.0.0.1:{monitor}/varz" in first
        assert varz(monitor)["tls_required"] is True
        code, out, err = await hvmesh(
            "--context", "hvmesh-admin", "hypervisor", "list", "--format", "json", env=env
        )
        assert code == 0, err
        assert [h["name"] for h in json.loads(out)] == ["fake-0001"]
        context = json.loads((tmp_path / "xdg/nats/context/hvmesh-admin.json").read_text())
        assert context["ca"] == str(tmp_path / "data" / "tls" / "ca.pem")
        assert "Permissions Violation" not in (tmp_path / "data/nats-server.log").read_text()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=60)
