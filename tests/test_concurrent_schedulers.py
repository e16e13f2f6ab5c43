"""2,000 concurrent placements through 4 scheduler processes never oversubscribe a host.

The benchmark's own machinery does the work (it is what operators run): real
`hvmesh scheduler` processes, claims by compare-and-set, an audit of every host
record afterwards. The hosts are small, so most requests race for the last room.
"""

from __future__ import annotations

from hvmesh.core.ops import bench

HOSTS = 40
PER_HOST = 25  # 50 VCPU at ratio 1.0 / 2 VCPU per placement; memory and disk are ample


async def test_four_schedulers_2000_placements_audit_clean() -> None:
    size = bench.HostSize(vcpus=50, cpu_ratio=1.0, memory_mb=1_000_000, disk_gb=100_000)
    result = await bench.run(
        hosts=HOSTS, requests=2000, schedulers=4, concurrency=200, quiet=True, size=size
    )
    assert result.errors == 0
    assert result.audit == "clean", result.audit_problems
    assert result.placed == HOSTS * PER_HOST
    assert result.no_valid_host == 2000 - HOSTS * PER_HOST
