"""`hvmesh bench list`'s machinery on a small store: every server and host is walked, page
by page, through a real API process. Speed is the benchmark's to report, never asserted."""

from __future__ import annotations

import pytest

from hvmesh.core.ops import bench_list


@pytest.mark.timeout(300)
async def test_the_list_benchmark_walks_every_page_of_both_listings() -> None:
    result = await bench_list.run(servers=250, hosts=30, page=100, quiet=True)
    assert (result.servers_list.records, result.servers_list.pages) == (250, 3)
    assert (result.hypervisors_list.records, result.hypervisors_list.pages) == (30, 1)
    for times in (result.servers_list, result.hypervisors_list):
        assert 0 < times.p50_ms <= times.p99_ms <= times.max_ms
