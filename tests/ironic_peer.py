"""Test peer: a standalone OpenStack Ironic (API and conductor in one process, fake hardware), a fresh one per test.

`tests/ironic/setup.sh` (run by tests/setup.sh) installs Ironic into a virtualenv of
its own; `start_ironic` writes an ironic.conf into the test's directory (no auth, no
RPC, SQLite, the fake-hardware type with fake or no-op interfaces, automated cleaning
off), creates the schema, starts `ironic` on 127.0.0.1 with a free port, waits until the
API answers, and `Ironic.stop` ends it (SIGTERM, then SIGKILL). Ironic can be stopped
and started again on the same port and database, as an outage.

Nodes are enrolled and moved through Ironic's HTTP API directly (not through the code
under test). A node made with `failing=True` uses the custom-agent deploy interface:
it validates, but its deploy fails at once (no ramdisk agent can call back), so it ends
in `deploy failed`.

Fixtures (import them into the test module): `ironic`, a running Ironic, and
`ironic_factory`, which starts more. Without the virtualenv they skip with "Ironic is
not installed: run tests/setup.sh" (a failure under CI=true).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

NOT_INSTALLED = "Ironic is not installed: run tests/setup.sh"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
API_VERSION = "1.81"

CONF = """\
[DEFAULT]
auth_strategy = noauth
rpc_transport = none
host = {host}
use_stderr = true
enabled_hardware_types = fake-hardware
enabled_boot_interfaces = fake
enabled_deploy_interfaces = fake,custom-agent
enabled_power_interfaces = fake
enabled_management_interfaces = fake
enabled_console_interfaces = fake,no-console
enabled_inspect_interfaces = fake,no-inspect
enabled_raid_interfaces = fake,no-raid
enabled_rescue_interfaces = fake,no-rescue
enabled_bios_interfaces = fake,no-bios
enabled_vendor_interfaces = fake,no-vendor
enabled_firmware_interfaces = fake,no-firmware
enabled_network_interfaces = noop
enabled_storage_interfaces = noop
default_boot_interface = fake
default_deploy_interface = fake
default_power_interface = fake
default_management_interface = fake

[api]
host_ip = 127.0.0.1
port = {port}

[database]
connection = sqlite:///{db}

[conductor]
conductor_group = {conductor_group}
automated_clean = false
check_provision_state_interval = 1
deploy_callback_timeout = 5
sync_power_state_interval = -1

[dhcp]
dhcp_provider = none

[oslo_concurrency]
lock_path = {locks}
"""


def venv_path() -> Path:
    """Where tests/ironic/setup.sh installs Ironic (HVMESH_IRONIC_VENV overrides)."""
    configured = os.environ.get("HVMESH_IRONIC_VENV")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "hvmesh" / "ironic-venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class IronicError(RuntimeError):
    """Ironic did not start, or refused a request; the message carries what it said."""


class Ironic:
    """One running Ironic: its endpoint, and helpers that drive nodes through its API."""

    def __init__(self, venv: Path, workdir: Path, conductor_group: str = "") -> None:
        self.venv = venv
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "ironic.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            CONF.format(
                host="hvmesh-ironic",
                port=self.port,
                db=workdir / "ironic.sqlite",
                locks=workdir / "locks",
                conductor_group=conductor_group,
            )
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"ironic-{self._starts}.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:] or "(no output)"
        except FileNotFoundError:
            return "(no output)"

    def create_schema(self) -> None:
        done = subprocess.run(
            [str(self.venv / "bin" / "ironic-dbsync"), "--config-file", str(self.conf),
             "create_schema"],
            capture_output=True, timeout=START_TIMEOUT, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise IronicError(f"ironic-dbsync create_schema failed: {done.stderr.decode()[-2000:]}")

    def start(self, timeout: float = START_TIMEOUT) -> Ironic:
        """Start the process and wait until its API answers."""
        if self.running():
            raise IronicError("Ironic is already running")
        self._starts += 1
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(self.venv / "bin" / "ironic"), "--config-file", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise IronicError(f"ironic exited ({self.process.returncode}): {self.log()}")
            with contextlib.suppress(OSError, IronicError):
                self.request("GET", "/v1/drivers")
                return self
            time.sleep(0.2)  # noqa: sleep (polled: the API has nothing to watch)
        self.stop()
        raise IronicError(f"Ironic's API did not answer within {timeout:g}s: {self.log()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status (None: never ran)."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        return proc.returncode

    # --- the API ------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        req.add_header("X-OpenStack-Ironic-API-Version", API_VERSION)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise IronicError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None
        return json.loads(raw) if raw else None

    def node(self, node: str) -> dict[str, Any]:
        got: dict[str, Any] = self.request("GET", f"/v1/nodes/{node}")
        return got

    def nodes(self) -> list[dict[str, Any]]:
        fields = "uuid,name,provision_state,power_state,instance_uuid,maintenance"
        listed: list[dict[str, Any]] = self.request("GET", f"/v1/nodes?fields={fields}")["nodes"]
        return listed

    def wait_state(self, node: str, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.node(node)
            if got["provision_state"] in states:
                return got
            if time.monotonic() > deadline:
                raise IronicError(
                    f"node {node} is {got['provision_state']}, not {states} after {timeout:g}s"
                    f" (last error: {got.get('last_error')})"
                )
            time.sleep(0.1)  # noqa: sleep (polled: Ironic has no event stream)

    def provision(self, node: str, target: str, wait_for: str | None = None) -> dict[str, Any]:
        self.request("PUT", f"/v1/nodes/{node}/states/provision", {"target": target})
        return self.wait_state(node, wait_for) if wait_for else self.node(node)

    def enroll(
        self,
        resource_class: str = "baremetal-gold",
        *,
        name: str | None = None,
        traits: tuple[str, ...] = (),
        failing: bool = False,
        conductor_group: str = "",
        available: bool = True,
    ) -> str:
        """A new fake-hardware node, made `available` (manage, then provide) unless told
        not to; `failing`: its deploys fail. Returns its uuid."""
        body: dict[str, Any] = {
            "driver": "fake-hardware",
            "resource_class": resource_class,
            "conductor_group": conductor_group,
            "properties": {"cpus": 8, "memory_mb": 16384, "local_gb": 100, "cpu_arch": "x86_64"},
        }
        if name:
            body["name"] = name
        if failing:
            body["deploy_interface"] = "custom-agent"
        uuid: str = self.request("POST", "/v1/nodes", body)["uuid"]
        if traits:
            self.request("PUT", f"/v1/nodes/{uuid}/traits", {"traits": list(traits)})
        if available:
            self.provision(uuid, "manage", "manageable")
            self.provision(uuid, "provide", "available")
        return uuid

    def set_maintenance(self, node: str, on: bool, reason: str = "hvmesh test") -> None:
        if on:
            self.request("PUT", f"/v1/nodes/{node}/maintenance", {"reason": reason})
        else:
            self.request("DELETE", f"/v1/nodes/{node}/maintenance")

    def set_power(self, node: str, target: str) -> None:
        """target: "power on", "power off", "rebooting"... as Ironic names them."""
        self.request("PUT", f"/v1/nodes/{node}/states/power", {"target": target})

    def by_instance(self, server_id: str) -> dict[str, Any] | None:
        """The node deployed for `server_id`, or None."""
        try:
            got: dict[str, Any] = self.request("GET", f"/v1/nodes/detail?instance_uuid={server_id}")
        except IronicError:
            return None
        nodes: list[dict[str, Any]] = got["nodes"]
        return nodes[0] if nodes else None


def start_ironic(
    workdir: Path, timeout: float = START_TIMEOUT, conductor_group: str = ""
) -> Ironic:
    """An Ironic whose files live under `workdir` (its conductor serving
    `conductor_group`); skips when it is not installed."""
    venv = venv_path()
    if not os.access(venv / "bin" / "ironic", os.X_OK):
        pytest.skip(NOT_INSTALLED)
    peer = Ironic(venv, workdir, conductor_group)
    peer.create_schema()
    return peer.start(timeout)


@contextlib.contextmanager
def running_ironic(workdir: Path) -> Iterator[Ironic]:
    peer = start_ironic(workdir)
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def ironic(tmp_path: Path) -> Iterator[Ironic]:
    """A fresh Ironic with no nodes."""
    with running_ironic(tmp_path / "ironic") as peer:
        yield peer


@pytest.fixture
def ironic_factory(tmp_path: Path) -> Iterator[Callable[..., Ironic]]:
    """start(conductor_group="") -> one more running Ironic, with its own database and port."""
    started: list[Ironic] = []
    numbers = itertools.count()

    def start(conductor_group: str = "") -> Ironic:
        peer = start_ironic(tmp_path / f"ironic{next(numbers)}", conductor_group=conductor_group)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
