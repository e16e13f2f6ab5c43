"""`hvmesh bench boot`'s machinery on a small fleet: every boot reaches ACTIVE and every
delete lands, each stage is seen for the servers, and the writes per boot add up to what
a boot writes. Speed is the benchmark's to report, never asserted here."""

from __future__ import annotations

import pytest

from hvmesh.core.ops import bench_boot


@pytest.mark.timeout(300)
async def test_the_boot_benchmark_sees_every_stage_of_every_boot() -> None:
    result = await bench_boot.run(hosts=4, servers=30, concurrency=5, decisions=50, quiet=True)
    assert (result.active, result.errors) == (30, 0)
    assert result.deletes_per_s > 0 and result.delete_p50_ms > 0
    assert set(result.stages) == set(bench_boot.STAGES)
    assert all(t.p50_ms > 0 for t in result.stages.values()), result.stages
    # One build task, one work item and three server record writes (created, spawning,
    # active) a boot; at least a claim and the end of the build in progress on its host
    # (an agent may write its host record meanwhile).
    per_boot = result.writes_by_stream
    assert per_boot["HVMESH_TASKS"] == 1.0 and per_boot["HVMESH_WORK"] == 1.0, per_boot
    assert per_boot["KV_servers"] == 3.0 and per_boot["KV_hosts"] >= 2.0, per_boot
    assert "KV_heartbeats" not in per_boot
    assert result.scheduler_decisions_per_s > 0 and result.boots_to_decisions > 0
