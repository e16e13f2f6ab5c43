"""`hvmesh bench idle`'s machinery on a small fleet: `hvmesh up` starts, is measured and
stops, leaving no nats-server behind. Speed is the benchmark's to report, never asserted."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support import HVMESH


@pytest.mark.timeout(300)
def test_the_idle_benchmark_measures_both_processes_and_stops_them() -> None:
    run = subprocess.run(
        [HVMESH, "bench", "idle", "--hosts", "20", "--seconds", "2", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["hosts"] == 20 and result["seconds"] == 2
    assert result["start_s"] > 0
    # CPU is a measure, not a promise: it is there and not negative; memory is real.
    assert result["hvmesh_core"] >= 0 and result["nats_server_core"] >= 0
    assert result["hvmesh_mb"] > 20 and result["nats_server_mb"] > 5
    assert result["total_mb"] == result["hvmesh_mb"] + result["nats_server_mb"]
    left = subprocess.run(["pgrep", "-f", "hvmesh-bench-idle-"], capture_output=True, text=True)
    assert left.stdout == "", f"the benchmark left processes running: {left.stdout}"


def test_the_idle_benchmark_refuses_bad_input() -> None:
    run = subprocess.run(
        [HVMESH, "bench", "idle", "--hosts", "0"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0 and "--hosts must be at least 1" in run.stderr
