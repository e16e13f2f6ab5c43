"""The README's first command, as a fresh install sees it: a wheel without extras, `hvmesh up`.

Builds a wheel from a copy of the working tree, installs it with its declared dependencies
and no extras into a new virtualenv, checks that libvirt-python is not there, runs that
virtualenv's `hvmesh up --fake-hosts 2`, runs every command its start-up banner suggests,
exactly as printed and in order (so the banner is proven too), sees the server ACTIVE and
stops `up` with SIGINT.

Dependencies come from a local wheelhouse (`$XDG_CACHE_HOME/hvmesh-tests/wheelhouse`,
default `~/.cache/...`), filled from the package index with the machine's pip settings the
first time, when the declared dependencies change, or when it is a week old; the install
itself runs with `--no-index` and no pip configuration at all, so it resolves the wheel's
own requirements from that wheelhouse alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hvmesh.core.ops import natsserver

ROOT = Path(__file__).resolve().parent.parent
# Not part of the installable tree: virtualenvs, build output, caches, VCS data.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".build",
    ".cache",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".pytest_cache",
    ".ruff_cache",
)
WHEELHOUSE_MAX_AGE = 7 * 24 * 3600.0  # seconds before the wheelhouse is filled afresh
BANNER_END = "Stop: Ctrl-C"
CONTEXTS_HEADING = "NATS CLI contexts written:"


def wheelhouse_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hvmesh-tests" / "wheelhouse"


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 300.0) -> str:
    """Run `cmd`; its combined output, or a failure showing it."""
    done = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}")
    return done.stdout


def offline_pip_env() -> dict[str, str]:
    """pip with no configuration file and no PIP_* variable: only the options given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the wheelhouse while filling or reading it: test runs may overlap."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fill(wheelhouse: Path, *requirements: str) -> None:
    """Download or build `requirements` and their dependencies into the wheelhouse (online)."""
    run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheelhouse), *requirements])
    for stray in wheelhouse.glob("hvmesh-*.whl"):  # only dependencies belong there
        stray.unlink()
    (wheelhouse / ".filled").touch()


def try_offline(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        env=offline_pip_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300,
        text=True,
    )


def build_wheel(src: Path, dist: Path, wheelhouse: Path) -> Path:
    """`pip wheel --no-deps` of the copied tree, its build requirements from the wheelhouse."""
    build_requires = tomllib.loads((src / "pyproject.toml").read_text())["build-system"]["requires"]
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index"]
    cmd += ["--find-links", str(wheelhouse), "-w", str(dist), str(src)]
    if try_offline(cmd).returncode != 0:
        fill(wheelhouse, *build_requires)
        run(cmd, env=offline_pip_env())
    (wheel,) = dist.glob("hvmesh-*.whl")
    return wheel


def install(venv: Path, wheel: Path, wheelhouse: Path) -> None:
    """The venv's own pip installs the wheel, no extras, dependencies from the wheelhouse."""
    cmd = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    cmd += ["--no-index", "--find-links", str(wheelhouse), str(wheel)]
    if try_offline(cmd).returncode != 0:
        fill(wheelhouse, str(wheel))
        run(cmd, env=offline_pip_env())


def clean_env(home: Path) -> dict[str, str]:
    """The user's environment with a temporary home, no hvmesh settings and no other hvmesh."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HVMESH_", "PIP_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(d for d in path if d and not (Path(d) / "hvmesh").exists())
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return env


class Lines:
    """Lines of a child's stdout, read by a thread, taken with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, marker: str, timeout: float) -> str:
        """Everything read up to and including the first line holding `marker`."""
        deadline = time.monotonic() + timeout
        seen = ""
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {marker!r} within {timeout:g}s; got:\n{seen}") from None
            if line is None:
                raise AssertionError(f"stdout closed before {marker!r}; got:\n{seen}")
            seen += line
            if marker in line:
                return seen


def banner_commands(banner: str) -> list[str]:
    """The commands a banner suggests: four-space lines under any heading but the contexts'."""
    commands: list[str] = []
    heading = ""
    for line in banner.splitlines():
        if re.match(r"^  \S", line):
            heading = line.strip()
        elif line.startswith("    ") and line.strip() and heading != CONTEXTS_HEADING:
            commands.append(line.strip())
    return commands


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def say(request: pytest.FixtureRequest, line: str) -> None:
    """One line on the terminal, past output capture, so every run shows what was proven."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(line, bold=True)


@pytest.mark.timeout(900)
def test_readme_first_command_wheel_without_extras_boots_a_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    timings: dict[str, float] = {}
    started = mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[name] = now - mark
        mark = now

    # A wheel of the tree as it is, built away from the working tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    wheelhouse = wheelhouse_dir()
    with locked(wheelhouse):
        stamp = wheelhouse / ".filled"
        if stamp.exists() and time.time() - stamp.stat().st_mtime > WHEELHOUSE_MAX_AGE:
            for old in wheelhouse.glob("*.whl"):
                old.unlink()
        wheel = build_wheel(src, tmp_path / "dist", wheelhouse)
        lap("wheel")

        # A new virtualenv and a plain install: the wheel's dependencies, no extras.
        venv = tmp_path / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        lap("venv")
        install(venv, wheel, wheelhouse)
        lap("install")
    python = str(venv / "bin" / "python")
    probe = subprocess.run(
        [python, "-c", "import libvirt"], capture_output=True, text=True, timeout=60
    )
    assert probe.returncode != 0 and "No module named 'libvirt'" in probe.stderr, probe.stderr
    where = run([python, "-c", "import hvmesh.core, sys; print(hvmesh.core.__file__)"])
    assert where.strip().startswith(str(venv)), f"hvmesh imported from {where.strip()}"
    installed = json.loads(run([python, "-m", "pip", "list", "--format", "json"]))
    assert "libvirt-python" not in {p["name"].lower() for p in installed}

    # `hvmesh up`, as the README runs it, on free ports and a temporary home.
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    hvmesh = str(venv / "bin" / "hvmesh")
    nats_port, leaf_port, metadata_port = (natsserver.free_port() for _ in range(3))
    up_log = tmp_path / "up.log"
    with open(up_log, "w") as log_file:
        proc = subprocess.Popen(
            [
                hvmesh, "up", "--fake-hosts", "2", "--data-dir", str(tmp_path / "data"),
                "--nats-port", str(nats_port), "--leaf-port", str(leaf_port),
                "--metadata-port", str(metadata_port),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )  # fmt: skip
    try:
        try:
            banner = Lines(proc).until(BANNER_END, timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nhvmesh up's log:\n{up_log.read_text()[-4000:]}") from None
        lap("up")
        assert f"nats://127.0.0.1:{nats_port}" in banner
        assert f"metadata service at http://127.0.0.1:{metadata_port}" in banner
        contexts = home / ".config" / "nats" / "context"
        assert (contexts / "hvmesh-admin.json").exists(), banner

        # The banner's own suggestions, as printed and in order.
        commands = banner_commands(banner)
        words = [c.split()[1:3] for c in commands if not c.startswith("nats ")]
        assert words.index(["server", "create"]) > max(
            words.index([kind, "create"]) for kind in ("flavor", "image", "network")
        ), commands
        for command in commands:
            program = command.split()[0]
            assert program == hvmesh or program == "nats", f"{command!r} runs {program}"
            if program == "nats":
                assert shutil.which("nats", path=env["PATH"]), f"{command!r}: no nats CLI"
            done = subprocess.run(
                command,
                shell=True,
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (
                f"banner command failed ({done.returncode}): {command}\n{done.stdout}{done.stderr}"
            )
            if " server create " in command and "--wait" in command:
                assert "ACTIVE" in done.stdout + done.stderr, done.stdout + done.stderr
        servers = json.loads(run([hvmesh, "-f", "json", "server", "list"], env=env))
        assert [(s["name"], s["status"]) for s in servers if s["name"] == "vm1"] == [
            ("vm1", "ACTIVE")
        ], servers
        lap("banner commands")

        # Ctrl-C: the services stop, then nats-server, and `up` exits 0.
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        lap("stop")
        log_text = up_log.read_text()
        assert code == 0, f"hvmesh up exited {code}:\n{log_text[-4000:]}"
        assert "hvmesh stopped." in log_text
        assert port_closed(nats_port), "nats-server still listens after hvmesh up exited"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    total = time.monotonic() - started
    spent = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
    say(
        request,
        f"README first command: wheel without extras installed, libvirt not importable, "
        f"{len(commands)} banner commands ran, vm1 ACTIVE ({spent}; {total:.1f}s)",
    )
