"""mypy over the production packages finds no error ([tool.mypy] in pyproject.toml).

The packages install from folders (core/, agents/, ...) mapped onto `hvmesh.*`, which
type checkers cannot follow through an editable install, so the check runs on a tree of
links laid out as the installed package is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "agents", "schedulers", "plugins")


def test_mypy_finds_no_error(tmp_path: Path) -> None:
    tree = tmp_path / "tree" / "hvmesh"
    tree.mkdir(parents=True)
    for name in PACKAGES:
        (tree / name).symlink_to(ROOT / name, target_is_directory=True)
    argv = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--python-executable", sys.executable]
    for name in PACKAGES:
        argv += ["-p", f"hvmesh.{name}"]
    done = subprocess.run(argv, cwd=tree.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
