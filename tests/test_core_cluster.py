"""The core on a 3-node NATS cluster (three real nats-servers on loopback): every stream and
bucket replicated on each node, compare-and-set that stays compare-and-set, and `hvmesh up
--cluster` carrying on without a node.

The chaos run on a cluster (a node kill -9'd during a stream of boots and actions) is
tests/test_chaos.py's core-cluster case; sites on a core cluster are tests/test_sites.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from hvmesh.core.ops import chaos_checks, natscluster, natsserver
from hvmesh.core.protocol.records import Flavor, Server
from hvmesh.core.state.store import CasConflict, Store
from tests.support import HVMESH, hvmesh, until
from tests.test_first_command import BANNER_END, Lines


async def test_streams_are_scaled_and_conflicts_stay_conflicts(tmp_path: Path) -> None:
    """Streams made with one copy get three when [nats] replicas says 3; compare-and-set on
    a replicated bucket (which reports a stale revision as 10164, not 10071) still raises
    CasConflict."""
    cluster = await natscluster.start(tmp_path / "nats")
    try:
        import nats

        nc = await nats.connect(
            servers=cluster.address.split(","),
            user="hvmesh",
            password=cluster.passwords["service"],
        )
        try:
            js = nc.jetstream()
            await Store(js, replicas=1).open()
            single = await js.streams_info()
            assert single and all(i.config.num_replicas == 1 for i in single)
            store = await Store(js, replicas=3).open()
            changed = await store.scale()
            assert set(changed) == {i.config.name for i in single}
            assert await store.scale() == []  # nothing left to change

            async def all_current() -> bool:
                return not chaos_checks.replicas_behind(await js.streams_info(), 3)

            await until(all_current, 60, "every stream's three copies to be current")

            flavor = Flavor(id="f1", name="f1", vcpus=1, ram_mb=64, disk_gb=0)
            sid = str(uuid.uuid4())
            record = Server(
                id=sid, name="a", project="p", user="u", flavor=flavor, image_id="i",
                image_name="i",
            )  # fmt: skip
            revision = await store.servers.create(sid, record)
            with pytest.raises(CasConflict):
                await store.servers.create(sid, record)
            await store.servers.update(sid, record, revision)
            with pytest.raises(CasConflict):  # the revision read before the update
                await store.servers.update(sid, record, revision)
            with pytest.raises(CasConflict):
                await store.servers.delete(sid, revision)
        finally:
            await nc.close()
    finally:
        cluster.stop()


def _node_pids(data_dir: Path) -> list[int]:
    """The nats-server processes of `hvmesh up --cluster` on `data_dir`."""
    out = subprocess.run(
        ["pgrep", "-f", f"nats-server -c {data_dir}/nats.conf"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


@pytest.mark.timeout(300)
async def test_up_cluster_boots_and_carries_on_without_a_node(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    ports = [str(natsserver.free_port()) for _ in range(3)]
    proc = subprocess.Popen(
        [
            HVMESH, "up", "--cluster", "--fake-hosts", "2", "--data-dir", str(data_dir),
            "--nats-port", ports[0], "--leaf-port", ports[1], "--metadata-port", ports[2],
            "--monitor-port", "0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        banner = Lines(proc).until(BANNER_END, 120)
        assert "NATS cluster of 3 nodes" in banner, banner
        assert len(_node_pids(data_dir)) == 3

        async def ok(*args: str) -> str:
            code, out, err = await hvmesh(*args, env=env)
            assert code == 0, f"hvmesh {' '.join(args)}: {err}"
            return out

        await ok("flavor", "create", "m1.small", "--vcpus", "1", "--ram", "512", "--disk", "1")
        await ok("image", "create", "cirros", "--disk-format", "qcow2")
        await ok("network", "create", "net1", "--cidr", "10.0.0.0/24", "--shared")
        boot = ("--flavor", "m1.small", "--image", "cirros", "--network", "net1", "--wait")
        await ok("server", "create", "vm1", *boot, "-f", "json")
        listed = json.loads(await ok("server", "list", "-f", "json"))
        assert [s["status"] for s in listed] == ["ACTIVE"]

        os.kill(_node_pids(data_dir)[0], signal.SIGKILL)
        await until(lambda: len(_node_pids(data_dir)) == 2, 10, "the killed nats-server gone")

        # The next boot may meet a pause while leaders move (a 503 saying so): it is
        # retried with the same client token, as the error advises.
        attempts: list[str] = []

        async def booted() -> bool:
            code, out, err = await hvmesh(
                "server", "create", "vm2", *boot, "--client-token", "vm2-once", "-f", "json",
                env=env,
            )  # fmt: skip
            attempts.append(err.strip())
            return code == 0 and json.loads(out)["status"] == "ACTIVE"

        try:
            await until(booted, 120, "vm2 ACTIVE with a node down")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (tries: {attempts[-5:]})") from None
        both = [("vm1", "ACTIVE"), ("vm2", "ACTIVE")]

        last: list[Any] = []

        async def both_listed() -> bool:  # the API's index follows the records by a watch,
            # which moves to another node after the loss: it may take a moment to catch up
            listed = json.loads(await ok("server", "list", "-f", "json"))
            last[:] = sorted((s["name"], s["status"]) for s in listed)
            return last == both

        try:
            await until(both_listed, 60, "vm1 and vm2 listed ACTIVE")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; listed last: {last}") from None
        await ok("server", "delete", "vm1", "--wait")
        assert proc.poll() is None  # `up` carries on with two nodes of three
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert _node_pids(data_dir) == []
