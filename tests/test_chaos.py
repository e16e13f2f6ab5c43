"""Chaos: a deployment of separate processes under load while a seeded schedule kill -9's
the API, a conductor, a scheduler, an agent process and nats-server itself (one node of
a 3-node core cluster, in the second run); afterwards nothing acknowledged is lost,
nothing is stuck and nothing is leaked.

The seed is random unless HVMESH_CHAOS_SEED sets it, and printed either way (and named in
every failure), so each run tries another schedule and a failing one can be replayed:
    HVMESH_CHAOS_SEED=<seed> pytest tests/test_chaos.py
or, longer, `hvmesh bench chaos --seed <seed> --duration 600 [--cluster]`.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import msgspec
import pytest

from hvmesh.core.ops import chaos, chaos_checks
from hvmesh.core.ops.chaos_load import Ledger
from hvmesh.core.protocol.records import Flavor, Port, Server
from tests.support import ApiClient, Deployment

LOAD_SECONDS = 120.0  # with 4 requests a second: a few hundred creates and actions
SETTLE_LIMIT = 75.0  # more than any bounded fault takes: action_timeout 20 s, deadline 30 s


def chaos_seed() -> int:
    raw = os.environ.get("HVMESH_CHAOS_SEED", "").strip()
    if not raw:
        return random.SystemRandom().randrange(2**31)
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"HVMESH_CHAOS_SEED must be an integer, not {raw!r}") from None


@pytest.mark.timeout(480)
@pytest.mark.parametrize("cluster", [0, 3], ids=["one-nats-server", "core-cluster"])
async def test_chaos_loses_nothing_and_leaks_nothing(tmp_path: Path, cluster: int) -> None:
    """On one nats-server (killed and started again on its store), and on a 3-node core
    cluster (one node killed and started again: it rejoins and catches up)."""
    seed = chaos_seed()
    print(f"HVMESH_CHAOS_SEED={seed}")
    report = await chaos.run(
        duration=LOAD_SECONDS,
        seed=seed,
        hosts=12,
        rate=4.0,
        settle_limit=SETTLE_LIMIT,
        workdir=tmp_path / "chaos",
        quiet=True,
        cluster=cluster,
    )
    replay = f"seed {seed} (replay: HVMESH_CHAOS_SEED={seed}"
    replay += (
        f", --cluster {cluster}); logs in {report.logs}" if cluster else f"); logs in {report.logs}"
    )

    # The run did what it says: every role was killed, nats-server exactly once, and a
    # few hundred requests were made, most of them acknowledged.
    assert report.kills.get("nats") == 1, replay
    for role in chaos.ROLES:
        assert report.kills.get(role, 0) >= 1, f"{role} never killed; {replay}"
    assert report.requests >= 200, replay
    assert report.servers_acknowledged >= 50, replay
    assert report.process_restarts >= len(chaos.ROLES), replay

    # Afterwards: each check, so a failure names the one that broke.
    by_check: dict[str, list[str]] = {}
    for line in report.findings:
        check, _, text = line.partition(": ")
        by_check.setdefault(check, []).append(text)
    for check in ("exited", "api-failure", "lost", "undeleted", "stuck", "no-fault"):
        assert not by_check.get(check), f"{check}: {by_check[check][:5]}; {replay}"
    assert not by_check.get("open-action"), f"{by_check['open-action'][:5]}; {replay}"
    for check in ("allocation", "address", "port"):
        assert not by_check.get(check), f"leaked {check}: {by_check[check][:5]}; {replay}"
    assert report.audit == [], f"audit: {report.audit[:5]}; {replay}"
    assert not by_check.get("drain"), f"after deleting all: {by_check['drain'][:5]}; {replay}"
    if cluster:
        # The API answered again after the node's loss: its pause bounded (here by half
        # the load, a property of availability, not a speed), and every stream's three
        # copies were current afterwards (the node rejoined and caught up).
        assert report.longest_pause_s < LOAD_SECONDS / 2, replay
        assert not by_check.get("replica"), f"{by_check['replica'][:5]}; {replay}"
    assert report.findings == [], replay  # and the harness's own ("load"), if any
    assert report.passed
    # Every acknowledged server was accounted for: it rests, or an acknowledged delete took it.
    assert sum(report.outcomes.values()) >= report.servers_acknowledged, replay


async def test_the_checks_find_what_a_crash_can_leave(
    deployment: Deployment, admin: ApiClient
) -> None:
    """Each check the chaos run ends with reports what it looks for, planted in the records."""
    await deployment.start_core(fake_hosts=1)
    st = deployment.store
    assert st is not None
    net = await admin("networks.create", {"name": "net1", "cidr": "10.9.0.0/24"})
    flavor = Flavor(id="f1", name="f1", vcpus=1, ram_mb=64, disk_gb=0)
    stuck, faultless, lost, gone = (str(uuid.uuid4()) for _ in range(4))
    base = {
        "project": "admin",
        "user": "admin",
        "flavor": flavor,
        "image_id": "i",
        "image_name": "i",
    }
    await st.servers.create(stuck, Server(id=stuck, name="stuck", **base))
    await st.servers.create(
        faultless, Server(id=faultless, name="bare", vm_state="error", task_state=None, **base)
    )
    await st.hosts.mutate(
        "fake-0001",
        lambda h: msgspec.structs.replace(h, allocations={**h.allocations, gone: {"VCPU": 1}}),
    )
    await st.networks.mutate(
        net["network"]["id"],
        lambda n: msgspec.structs.replace(n, ips={**n.ips, "10.9.0.99": "no-such-port"}),
    )
    port = Port(
        id="p-gone",
        name="",
        network_id=net["network"]["id"],
        project="admin",
        mac="fa:16:3e:00:00:01",
        ip="10.9.0.98",
        server_id=gone,
    )
    await st.ports.put(port.id, port)

    checks = chaos_checks.Checks(deployment.tmp)
    ledger = Ledger(created={lost: "create", stuck: "create"})
    outcomes, _ = await chaos_checks.check_servers(st, ledger, checks)
    await chaos_checks.check_state(st, checks)
    audit = await chaos_checks.check_audit(st, deployment.nc, deployment.config(), checks)

    found = checks.found
    assert outcomes["lost"] == 1 and lost in found["lost"][0]
    assert any(stuck in line for line in found["stuck"])
    assert any(faultless in line for line in found["no-fault"])
    assert any(gone in line for line in found["allocation"])
    assert any("10.9.0.99" in line for line in found["address"])
    assert any("p-gone" in line for line in found["port"])
    assert any(gone in line for line in audit)  # the audit sees the leaked allocation too
