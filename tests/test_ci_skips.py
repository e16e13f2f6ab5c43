"""Under CI=true a skipping test fails, so a green CI proves the real-peer tests ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"
    )
    (tmp_path / "test_peer.py").write_text(
        "import pytest\n\n"
        "def test_needs_a_peer():\n"
        "    pytest.skip('the peer is not installed')\n\n"
        "@pytest.mark.skipif(True, reason='no peer daemon')\n"
        "def test_marked():\n"
        "    pass\n\n"
        "def test_passes():\n"
        "    assert 1 + 1 == 2\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_skips_fail_under_ci(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    assert "the peer is not installed" in done.stdout and "no peer daemon" in done.stdout
    assert "1 failed, 1 passed, 1 error" in done.stdout


def test_skips_stay_skips_outside_ci(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped" in done.stdout
