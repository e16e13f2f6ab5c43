"""Plugin loading is guarded per plugin: a broken one is reported by name and skipped.

The broken plugins here are real installed distributions: a dist-info directory with an
entry_points.txt on PYTHONPATH, found by importlib.metadata as pip's installs are.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from hvmesh.plugins import manager
from hvmesh.plugins.drivers import DriverUnavailable
from tests.support import HVMESH, Deployment, hvmesh, wait_for_services

BROKEN = {
    # Fails at import.
    "hvmesh_broken_import": "import no_such_module_for_hvmesh_tests\n",
    # A misspelt hook: no hook is called hvmesh_register_filter.
    "hvmesh_broken_hookname": (
        "from hvmesh.plugins import hookimpl\n\n"
        "@hookimpl\n"
        "def hvmesh_register_filter(register):\n"
        "    pass\n"
    ),
    # Raises while registering.
    "hvmesh_broken_register": (
        "from hvmesh.plugins import hookimpl\n\n"
        "@hookimpl\n"
        "def hvmesh_register_weighers(register):\n"
        "    raise KeyError('oops')\n"
    ),
    # Takes a name a built-in already has.
    "hvmesh_broken_duplicate": (
        "from hvmesh.plugins import hookimpl\n"
        "from hvmesh.plugins.api import Filter\n\n"
        "@hookimpl\n"
        "def hvmesh_register_filters(register):\n"
        "    register(Filter(name='RamFilter', host_passes=lambda host, spec: True))\n"
    ),
    # A driver whose hypervisor library is not installed.
    "hvmesh_missing_lib_driver": (
        "from hvmesh.plugins import hookimpl\n\n"
        "@hookimpl\n"
        "def hvmesh_register_drivers(register):\n"
        "    register('acme', 'acme_hv_driver:AcmeDriver', requires=('acme_hypervisor_sdk',),\n"
        "             extra='acme')\n"
    ),
}
BROKEN_ONLY = [name for name in BROKEN if name != "hvmesh_missing_lib_driver"]


def install_plugins(
    root: Path, modules: dict[str, str], dist: str = "hvmesh-broken-plugins"
) -> Path:
    """Write `modules` and one distribution whose "hvmesh" entry points name them."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[hvmesh]\n" + "".join(f"{name} = {name}\n" for name in modules)
    )
    return root


@pytest.fixture
def broken_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = install_plugins(tmp_path / "site", BROKEN)
    monkeypatch.syspath_prepend(str(root))
    return root


def env_with(path: Path, **extra: str) -> dict[str, str]:
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{path}{os.pathsep}{old}" if old else str(path), **extra}


def test_each_broken_plugin_is_reported_and_skipped(broken_path: Path) -> None:
    failed: list[str] = []
    reg = manager.load(on_failure=lambda info: failed.append(info.name))
    by_name = {p.name: p for p in reg.plugins}

    assert by_name["builtin_filters"].status == "loaded"
    assert "RamFilter" in by_name["builtin_filters"].registered["filters"]
    assert by_name["builtin_filters"].package == "hvmesh"
    assert {"filter_scheduler", "best_fit"} <= set(reg.schedulers)

    errors = {name: by_name[name].error for name in BROKEN if by_name[name].status == "failed"}
    assert sorted(failed) == sorted(errors) == sorted(set(BROKEN_ONLY))
    assert "no_such_module_for_hvmesh_tests" in errors["hvmesh_broken_import"]
    assert "hvmesh_register_filter" in errors["hvmesh_broken_hookname"]
    assert "KeyError" in errors["hvmesh_broken_register"]
    assert (
        "'RamFilter' is already registered by builtin_filters" in errors["hvmesh_broken_duplicate"]
    )
    # The duplicate took nothing from the built-in.
    assert reg.filters["RamFilter"].host_passes is None
    for name in BROKEN:
        assert by_name[name].package == "hvmesh-broken-plugins"
        assert by_name[name].module == name


def test_a_driver_with_a_missing_library_is_unavailable_with_the_extra_to_install(
    broken_path: Path,
) -> None:
    reg = manager.load()
    entry = reg.drivers["acme"]
    reason = entry.unavailable_reason()
    assert (
        reason
        == "No module named 'acme_hypervisor_sdk'; install it with: pip install 'hvmesh[acme]'"
    )
    with pytest.raises(DriverUnavailable, match=r"driver acme is unavailable: No module named"):
        reg.driver("acme")
    assert reg.driver("fake").__name__ == "FakeDriver"


def test_strict_loading_fails_on_the_first_broken_plugin(broken_path: Path) -> None:
    with pytest.raises(
        manager.PluginError, match=r"plugin hvmesh_broken_\w+ \(hvmesh_broken_\w+\) failed"
    ):
        manager.load(strict=True)


def test_plugins_are_disabled_by_name_and_by_environment(
    broken_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(manager.DISABLE_ENV, "hvmesh_broken_import, hvmesh_broken_register")
    reg = manager.load(
        disabled=["hvmesh_broken_hookname", "hvmesh_broken_duplicate", "best_fit_scheduler"],
        strict=True,
    )
    by_name = {p.name: p.status for p in reg.plugins}
    assert {by_name[n] for n in BROKEN_ONLY} == {"disabled"}
    assert by_name["best_fit_scheduler"] == "disabled" and "best_fit" not in reg.schedulers


async def test_plugins_list_shows_builtins_and_the_broken_plugin(broken_path: Path) -> None:
    code, out, err = await hvmesh("plugins", "list", "-f", "json", env=env_with(broken_path))
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["builtin_weighers"]["status"] == "loaded"
    assert "RAMWeigher" in rows["builtin_weighers"]["registered"]["weighers"]
    assert rows["fake_driver"]["registered"] == {"drivers": ["fake"]}
    assert rows["hvmesh_broken_import"]["status"] == "failed"
    assert "no_such_module_for_hvmesh_tests" in rows["hvmesh_broken_import"]["error"]
    assert rows["hvmesh_broken_import"]["package"] == "hvmesh-broken-plugins"

    code, out, err = await hvmesh("driver", "list", "-f", "json", env=env_with(broken_path))
    assert code == 0, err
    drivers = {r["name"]: r for r in json.loads(out)}
    assert drivers["fake"]["available"] is True
    assert drivers["acme"]["available"] is False
    assert "pip install 'hvmesh[acme]'" in drivers["acme"]["reason"]


async def test_agent_with_an_unavailable_driver_fails_in_one_line(broken_path: Path) -> None:
    code, _out, err = await hvmesh(
        "agent",
        "--driver",
        "acme",
        "--url",
        "nats://127.0.0.1:1",
        env=env_with(broken_path, **{manager.DISABLE_ENV: ",".join(BROKEN_ONLY)}),
    )
    assert code == 1
    assert err.strip() == (
        "error: driver acme is unavailable: No module named 'acme_hypervisor_sdk'; "
        "install it with: pip install 'hvmesh[acme]'"
    )


async def test_a_service_runs_beside_a_broken_plugin_unless_strict(
    deployment: Deployment, broken_path: Path, tmp_path: Path
) -> None:
    cfg_file = deployment.config_file("scheduler.ini")
    env = {**os.environ, **env_with(broken_path), "HVMESH_CONFIG": str(cfg_file)}
    log_path = tmp_path / "scheduler.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [HVMESH, "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        nc = await deployment.connect("admin")
        await wait_for_services(nc, "hvmesh-scheduler", 1)
        logged = [json.loads(line) for line in log_path.read_text().splitlines() if line]
        failures = {r["plugin"]: r for r in logged if r["event"] == "plugins.load_failed"}
        assert set(failures) == set(BROKEN_ONLY)
        assert failures["hvmesh_broken_register"]["entry_point"] == "hvmesh_broken_register"
    finally:
        proc.terminate()
        proc.wait(10)

    strict = await asyncio.create_subprocess_exec(
        HVMESH,
        "scheduler",
        "--strict-plugins",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(strict.communicate(), timeout=60)
    assert strict.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "failed to load" in lines[0], err.decode()
