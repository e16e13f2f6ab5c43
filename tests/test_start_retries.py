"""Services ride out a paused or restarted nats-server at start, refused credentials fail at once, and `hvmesh up` stopped while starting leaves no nats-server behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest

from hvmesh.core.api.service import ApiService
from hvmesh.core.bus import connection
from hvmesh.core.bus.start_retry import RetryPolicy, StartGuard
from hvmesh.core.ops import natsserver
from tests.support import HVMESH, ApiClient, Deployment, until

FLEET = 200
PAUSE = 7.0  # seconds nats-server is stopped: longer than a JetStream request's timeout
STOPPED_LINE = "error: hvmesh up: stopped while starting"


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines a process wrote."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def plain_lines(text: str) -> list[str]:
    """What a process wrote that is not a JSON log line."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("{")]


async def count_hosts(dep: Deployment, prefix: str) -> int:
    assert dep.store is not None
    return len([e async for e in dep.store.hosts.entries() if e.key.startswith(prefix)])


def started_hosts(log_path: Path) -> set[str]:
    return {e["host"] for e in log_events(log_path) if e.get("event") == "agent.started"}


async def test_agent_fleet_rides_out_a_paused_nats_server(deployment: Deployment) -> None:
    cfg = deployment.config_file("fleet", DEFAULT={"start_timeout": 90.0})
    proc = deployment.spawn(
        "agent", "--driver", "fake", "--count", str(FLEET), "--host", "paused", cfg_file=cfg
    )
    log_path = deployment.tmp / "proc-0.log"

    async def first_started() -> bool:
        assert proc.poll() is None, log_path.read_text()
        return bool(started_hosts(log_path))

    await until(first_started, 60, "the first host to start")
    nats_pid = deployment.server.process.pid
    os.kill(nats_pid, signal.SIGSTOP)
    try:
        before = len(started_hosts(log_path))
        await asyncio.sleep(PAUSE)  # noqa: sleep (the fault itself: nats-server stopped)
    finally:
        os.kill(nats_pid, signal.SIGCONT)

    async def all_started() -> bool:
        assert proc.poll() is None, "the agent process exited: " + log_path.read_text()[-2000:]
        return len(started_hosts(log_path)) == FLEET

    await until(all_started, 120, f"all {FLEET} hosts to start")
    assert await count_hosts(deployment, "paused-") == FLEET
    assert proc.poll() is None
    assert before < FLEET, "every host had started before the pause: nothing was tested"
    retries = [e for e in log_events(log_path) if e.get("event") == "service.start_retry"]
    assert retries, "no start was retried across the pause"
    assert all(e["service"].startswith("agent paused-") for e in retries)


async def test_api_started_while_nats_server_restarts_comes_up(deployment: Deployment) -> None:
    cfg = deployment.config_file("api", DEFAULT={"start_timeout": 60.0})
    log_path = deployment.tmp / "proc-0.log"
    old = deployment.server
    old.kill()
    proc = deployment.spawn("api", cfg_file=cfg)
    deployment.server = await natsserver.start(
        deployment.tmp / "nats",
        port=old.port,
        leaf_port=old.leaf_port,
        name=f"test-{os.getpid()}",
    )

    async def connected() -> bool:
        assert proc.poll() is None, log_path.read_text()[-2000:]
        return any(e.get("event") == "service.connected" for e in log_events(log_path))

    await until(connected, 30, "the API to connect")
    # JetStream stops answering as the API connects (in its start or just after it).
    nats_pid = deployment.server.process.pid
    os.kill(nats_pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(PAUSE)  # noqa: sleep (the fault itself: nats-server held stopped this long)
    finally:
        os.kill(nats_pid, signal.SIGCONT)
    admin = ApiClient(await deployment.connect("admin"))

    async def answers() -> bool:
        assert proc.poll() is None, "the API exited: " + log_path.read_text()[-2000:]
        try:
            await admin("flavors.list")
        except Exception:
            return False
        return True

    await until(answers, 60, "the API to answer")
    assert proc.poll() is None
    assert [e["event"] for e in log_events(log_path)].count("api.started") == 1


async def test_a_retried_start_leaves_one_service_instance(deployment: Deployment) -> None:
    cfg = deployment.config()
    nc = await connection.connect(cfg.nats, "test-retried-api")
    deployment.connections.append(nc)
    guard = StartGuard(RetryPolicy(timeout=60.0))
    made: list[ApiService] = []

    def make() -> ApiService:
        made.append(ApiService(nc, cfg))
        return made[-1]

    api = guard.component("api", make)
    nats_pid = deployment.server.process.pid
    os.kill(nats_pid, signal.SIGSTOP)  # connected, then JetStream stops answering
    try:
        starting = asyncio.create_task(api.start())
        await asyncio.sleep(PAUSE)  # noqa: sleep (the fault itself: nats-server held stopped this long)
    finally:
        os.kill(nats_pid, signal.SIGCONT)
    await asyncio.wait_for(starting, 60)
    deployment.components.append(api)
    assert len(made) >= 2, "the start was not retried"
    assert api.current is made[-1]
    admin = ApiClient(await deployment.connect("admin"))
    assert (await admin("flavors.list"))["flavors"] == []
    # Every failed attempt's micro service was stopped: one instance answers.
    answers = await ping_all(await deployment.connect("admin"), "hvmesh-api")
    assert answers == [made[-1].service.id]


async def ping_all(nc: Any, name: str) -> list[str]:
    """The ids of every instance of micro service `name` that answers $SRV.PING within 1 s."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
    ids = []
    try:
        while True:
            msg = await sub.next_msg(timeout=1.0)
            if msg.data:
                ids.append(json.loads(msg.data)["id"])
    except nats.errors.TimeoutError:
        return ids  # no more answers within the window
    finally:
        await sub.unsubscribe()


async def test_refused_credentials_fail_at_once(deployment: Deployment) -> None:
    cfg = deployment.config_file(
        "bad", nats={"password": "not-the-password"}, DEFAULT={"start_timeout": 120.0}
    )
    proc = deployment.spawn("api", cfg_file=cfg)
    code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=30)
    lines = plain_lines((deployment.tmp / "proc-0.log").read_text())
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: hvmesh-api: NATS refused the connection"), lines
    assert "authorization" in lines[0].lower()


async def test_a_start_gives_up_after_start_timeout(deployment: Deployment) -> None:
    nowhere = f"nats://127.0.0.1:{natsserver.free_port()}"
    cfg = deployment.config_file("nowhere", nats={"url": nowhere}, DEFAULT={"start_timeout": 3.0})
    proc = deployment.spawn("scheduler", cfg_file=cfg)
    code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=60)
    text = (deployment.tmp / "proc-0.log").read_text()
    assert code == 1
    assert plain_lines(text) == [
        "error: hvmesh-scheduler did not start within 3s ([DEFAULT] start_timeout); "
        "last error: connection refused"
    ], text


LIMITED_CONF = """
host: $HVMESH_NATS_HOST
port: $HVMESH_NATS_PORT
jetstream { store_dir: $HVMESH_STORE_DIR }
accounts {
  HVMESH {
    jetstream: enabled
    users: [
      { user: hvmesh, password: $HVMESH_SERVICE_PASSWORD },
      {
        user: limited, password: $HVMESH_SERVICE_PASSWORD,
        permissions: { publish: ["hvmesh.>"], subscribe: ["_INBOX.>", "hvmesh.>"] }
      }
    ]
  }
}
"""


async def test_a_permission_violation_fails_at_once(deployment: Deployment) -> None:
    conf = deployment.tmp / "limited.conf"
    conf.write_text(LIMITED_CONF)
    limited = await natsserver.start(
        deployment.tmp / "limited", port=natsserver.free_port(), conf=conf, ready_timeout=15
    )
    try:
        cfg = deployment.config_file(
            "limited",
            nats={
                "url": limited.address,
                "user": "limited",
                "password": limited.passwords["service"],
            },
            DEFAULT={"start_timeout": 120.0},
        )
        proc = deployment.spawn("api", cfg_file=cfg)
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=30)
    finally:
        limited.stop()
    lines = plain_lines((deployment.tmp / "proc-0.log").read_text())
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: api could not start: NATS refused: "), lines
    assert "permissions violation" in lines[0].lower()


# --- hvmesh up stopped while starting --------------------------------------------------------


def nats_child(pid: int) -> int | None:
    found = subprocess.run(["pgrep", "-P", str(pid), "nats-server"], capture_output=True, text=True)
    pids = found.stdout.split()
    return int(pids[0]) if pids else None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def port_free(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


class Up:
    """`hvmesh up` as a process, on free ports under a test directory."""

    def __init__(self, tmp: Path, fake_hosts: int) -> None:
        self.data = tmp / "data"
        self.port = natsserver.free_port()
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "xdg"), "HVMESH_LOG_FORMAT": "json"}
        argv = [HVMESH, "up", "--data-dir", str(self.data), "--nats-port", str(self.port)]
        argv += ["--leaf-port", str(natsserver.free_port()), "--metadata-port", "0"]
        argv += ["--fake-hosts", str(fake_hosts)]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.nats_pid: int | None = None

    async def nats_started(self) -> bool:
        assert self.proc.poll() is None, self.proc.communicate()
        self.nats_pid = self.nats_pid or nats_child(self.proc.pid)
        return self.nats_pid is not None

    async def connect(self) -> Any:
        secrets = json.loads((self.data / "secrets.json").read_text())
        return await nats.connect(
            f"nats://127.0.0.1:{self.port}",
            user="hvmesh",
            password=secrets["service"],
            max_reconnect_attempts=0,
        )

    async def finish(self) -> tuple[int, str]:
        _, err = await asyncio.to_thread(self.proc.communicate, timeout=60)
        return self.proc.returncode, err

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.nats_pid is not None and alive(self.nats_pid):
            os.kill(self.nats_pid, signal.SIGKILL)


async def assert_nothing_left(up: Up) -> None:
    assert up.nats_pid is not None
    pid = up.nats_pid

    async def gone() -> bool:
        return not alive(pid)

    await until(gone, 20, f"nats-server (pid {pid}) to exit")
    assert await port_free(up.port)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", ["nats-server", "streams", "hosts"])
async def test_up_stopped_while_starting_leaves_nothing(
    tmp_path: Path, sig: signal.Signals, moment: str
) -> None:
    # Starting 100 simulated hosts takes about 0.1 s here, shorter than a poll can be
    # sure to land in; 1,000 take about 1 s, which it does.
    up = Up(tmp_path, fake_hosts=1000 if moment == "hosts" else 100)
    try:
        await until(up.nats_started, 30, "nats-server to be started")
        if moment != "nats-server":
            nc = None

            async def reached() -> bool:
                nonlocal nc
                assert up.proc.poll() is None, up.proc.communicate()
                try:
                    nc = nc or await up.connect()
                    names = await nc.jetstream().streams_info()
                    if moment == "streams":
                        return bool(names)
                    kv = await nc.jetstream().key_value("hosts")
                    return bool(await kv.keys())
                except Exception:
                    return False

            try:
                await until(reached, 60, f"hvmesh up to reach {moment}")
            finally:
                if nc is not None:
                    await nc.close()
        up.proc.send_signal(sig)
        code, err = await up.finish()
        assert code == 1, err
        assert plain_lines(err) == [STOPPED_LINE], err
        await assert_nothing_left(up)
    finally:
        up.cleanup()


async def test_up_killed_takes_its_nats_server_along(tmp_path: Path) -> None:
    up = Up(tmp_path, fake_hosts=0)
    try:
        await until(up.nats_started, 30, "nats-server to be started")
        up.proc.kill()  # SIGKILL: nothing runs in hvmesh up; the kernel tells nats-server
        up.proc.wait()
        await assert_nothing_left(up)
    finally:
        up.cleanup()
