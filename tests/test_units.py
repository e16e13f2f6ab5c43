"""Unit tests: config, resource fit, the filter scheduler over the index, plugin loading."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import get_args

import msgspec
import pytest

from hvmesh.core import config
from hvmesh.core.protocol import states
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.protocol.records import Flavor, Heartbeat, Host, Inventory
from hvmesh.core.state.host_columns import HOST_COLUMNS
from hvmesh.core.state.inventory import Index
from hvmesh.core.state.store import Entry
from hvmesh.core.tasks import stop_tasks
from hvmesh.plugins import manager
from hvmesh.plugins.api import ColumnName
from hvmesh.schedulers.filter_scheduler import FilterScheduler


def host(
    name: str, vcpus: int = 8, ram: int = 8192, disk: int = 100, az: str = "nova", **kw
) -> Host:  # type: ignore[no-untyped-def]
    return Host(
        name=name,
        driver="fake",
        availability_zone=az,
        inventories={
            "VCPU": Inventory(total=vcpus, allocation_ratio=kw.pop("cpu_ratio", 1.0)),
            "MEMORY_MB": Inventory(total=ram, reserved=kw.pop("ram_reserved", 0)),
            "DISK_GB": Inventory(total=disk, max_unit=kw.pop("disk_max_unit", None)),
        },
        **kw,
    )


def spec(vcpus: int = 1, ram: int = 1024, disk: int = 10, **kw) -> RequestSpec:  # type: ignore[no-untyped-def]
    flavor = Flavor(id="f", name="f", vcpus=vcpus, ram_mb=ram, disk_gb=disk)
    return RequestSpec(server_id="s1", project="p", flavor=flavor, **kw)


# --- config ---------------------------------------------------------------------------------


def test_config_reads_ini_and_converts_types(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hvmesh.ini"
    path.write_text(
        "[scheduler]\nenabled_filters = ComputeFilter, RamFilter\nhost_subset_size = 3\n"
        "[compute]\nram_allocation_ratio = 1.5\n"
    )
    cfg = config.load(path)
    assert cfg.scheduler.enabled_filters == ["ComputeFilter", "RamFilter"]
    assert cfg.scheduler.host_subset_size == 3
    assert cfg.compute.ram_allocation_ratio == 1.5
    assert cfg.conductor.max_attempts == 3  # untouched default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scheduler]\nhost_subset_size = many\n", "$.scheduler.host_subset_size"),
        ("[scheduler]\nhost_subset_size = 0\n", "$.scheduler.host_subset_size"),
        ("[scheduler]\nhost_subset = 2\n", "unknown option [scheduler] host_subset"),
        ("[schedular]\n", "unknown section [schedular]"),
        ("not an ini file", "cannot parse config"),
    ],
)
def test_bad_config_names_the_option(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.ini"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("$", r"\$")):
        config.load(path)


def test_config_sample_lists_every_option_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = config.sample()
    for section in msgspec.structs.fields(config.Config):
        assert f"[{section.name}]" in text
        for option in msgspec.structs.fields(section.type):
            assert f"#{option.name} = " in text
    # Uncommenting every option gives the defaults back.
    path = tmp_path / "sample.ini"
    path.write_text(
        "\n".join(
            line[1:] if line.startswith("#") and " = " in line else line
            for line in text.splitlines()
        )
    )
    assert config.load(path) == config.Config()


# --- resource fit ---------------------------------------------------------------------------


def test_fit_honours_reserved_ratio_and_max_unit() -> None:
    h = host("h", vcpus=4, ram=4096, cpu_ratio=2.0, ram_reserved=1024, disk=100, disk_max_unit=50)
    assert h.inventories["VCPU"].capacity() == 8
    assert h.inventories["MEMORY_MB"].capacity() == 3072
    assert h.fits({"VCPU": 8, "MEMORY_MB": 3072, "DISK_GB": 50}) is None
    assert "MEMORY_MB" in (h.fits({"MEMORY_MB": 3073}) or "")
    assert "max_unit" in (h.fits({"DISK_GB": 60}) or "")
    h.allocations["a"] = {"VCPU": 6, "MEMORY_MB": 1000}
    assert h.fits({"VCPU": 3}) == "VCPU: 6 used + 3 requested > 8"
    assert h.fits({"CUSTOM_GPU": 1}) == "CUSTOM_GPU: no inventory"


def test_status_is_derived_from_vm_state() -> None:
    assert states.status("building", "scheduling") == "BUILD"
    assert states.status("active", "deleting") == "ACTIVE"
    assert states.status("stopped", None) == "SHUTOFF"
    assert states.status("error", None) == "ERROR"


# --- scheduler ------------------------------------------------------------------------------


def make_index(*hosts: Host, down: tuple[str, ...] = ()) -> Index:
    index = Index(service_down_time=60)
    for rev, h in enumerate(hosts, start=1):
        index.apply_host(Entry(key=h.name, value=h, revision=rev), h.name, rev)
        at = time.time() - (600 if h.name in down else 0)
        index.apply_heartbeat(Heartbeat(host=h.name, at=at, agent_id="x"))
    return index


def scheduler(index: Index, **options) -> FilterScheduler:  # type: ignore[no-untyped-def]
    cfg = config.Config()
    cfg = msgspec.structs.replace(cfg, scheduler=msgspec.structs.replace(cfg.scheduler, **options))
    reg = manager.load()
    ctx = reg.context(cfg, index)
    return FilterScheduler(ctx)


async def test_filters_remove_hosts_that_cannot_take_the_request() -> None:
    full = host("full", ram=2048)
    full.allocations["x"] = {"MEMORY_MB": 1536}
    disabled = host("disabled", status="disabled")
    index = make_index(
        host("ok"), full, disabled, host("down"), host("elsewhere", az="az9"), down=("down",)
    )
    assert set(await scheduler(index).select(spec())) == {"ok", "elsewhere"}
    assert await scheduler(index).select(spec(availability_zone="az9")) == ["elsewhere"]
    assert await scheduler(index).select(spec(ram=512, availability_zone="nova")) == ["ok", "full"]
    assert await scheduler(index).select(spec(vcpus=9)) == []
    assert await scheduler(index).select(spec(disk=101)) == []
    assert await scheduler(index).select(spec(ignore_hosts=["ok", "elsewhere"])) == []


async def test_weighers_spread_by_default_and_pack_with_negative_multipliers() -> None:
    index = make_index(
        host("small", vcpus=4, ram=4096),
        host("big", vcpus=32, ram=65536),
        host("mid", vcpus=16, ram=16384),
    )
    assert await scheduler(index).select(spec()) == ["big", "mid", "small"]
    packed = scheduler(index, ram_weight_multiplier=-1.0, cpu_weight_multiplier=-1.0)
    assert await packed.select(spec()) == ["small", "mid", "big"]
    # RAM alone decides when CPU weighs nothing.
    index = make_index(host("cpu-rich", vcpus=64, ram=4096), host("ram-rich", vcpus=2, ram=65536))
    assert await scheduler(index, cpu_weight_multiplier=0.0).select(spec()) == [
        "ram-rich",
        "cpu-rich",
    ]
    assert await scheduler(index, ram_weight_multiplier=0.0).select(spec()) == [
        "cpu-rich",
        "ram-rich",
    ]


async def test_host_subset_size_spreads_among_the_best() -> None:
    index = make_index(*(host(f"h{i}", ram=8192 + i * 1024) for i in range(6)))
    firsts = {(await scheduler(index, host_subset_size=3).select(spec()))[0] for _ in range(200)}
    assert firsts == {"h5", "h4", "h3"}


async def test_weights_are_normalised_before_the_multiplier() -> None:
    """As Nova: each weigher's scores are scaled to 0..1, so a huge range cannot drown another."""
    index = make_index(
        host("ram-rich", ram=1_000_000, vcpus=8), host("cpu-rich", ram=8192, vcpus=9)
    )
    # Free RAM differs a thousandfold more than free VCPU; normalised, a multiplier of 2 on CPU wins.
    assert (
        await scheduler(index, disk_weight_multiplier=0.0, cpu_weight_multiplier=2.0).select(spec())
    )[0] == "cpu-rich"
    assert (
        await scheduler(index, disk_weight_multiplier=0.0, cpu_weight_multiplier=0.5).select(spec())
    )[0] == "ram-rich"


# --- plugins --------------------------------------------------------------------------------


def test_builtins_register_through_entry_points() -> None:
    reg = manager.load()
    names = {p.name for p in reg.plugins if p.status == "loaded"}
    assert {
        "builtin_filters",
        "builtin_weighers",
        "filter_scheduler",
        "best_fit_scheduler",
        "fake_driver",
    } <= names
    assert {
        "ComputeFilter",
        "AvailabilityZoneFilter",
        "CoreFilter",
        "RamFilter",
        "DiskFilter",
    } <= set(reg.filters)
    assert {"RAMWeigher", "CPUWeigher"} <= set(reg.weighers)
    assert {"filter_scheduler", "best_fit"} <= set(reg.schedulers)
    assert "fake" in reg.drivers
    with pytest.raises(manager.PluginError, match="unknown filter NoSuchFilter"):
        reg.pick("filters", ["NoSuchFilter"])


def test_index_grows_past_its_first_capacity_in_any_order() -> None:
    index = Index(service_down_time=60)
    n = 3000
    for i in range(n):  # heartbeats before records for the first half
        if i < n // 2:
            index.apply_heartbeat(Heartbeat(host=f"h{i}", at=time.time(), agent_id="x"))
    for i in range(n):
        h = host(f"h{i}", ram=1024 + i)
        index.apply_host(Entry(key=h.name, value=h, revision=i + 1), h.name, i + 1)
    for i in range(n // 2, n):
        index.apply_heartbeat(Heartbeat(host=f"h{i}", at=time.time(), agent_id="x"))
    cols = index.candidate_columns()
    assert index.columns.size == n
    assert cols["present"].all() and cols["up"].all()
    assert int(cols["memory_mb"][index.columns.row["h2999"]]) == 1024 + 2999
    columns, rows = index.query("SELECT count(*), max(memory_mb) FROM hosts WHERE up")
    assert columns == ["count_star()", "max(memory_mb)"]
    assert rows == [(n, 1024 + 2999)]
    # A deleted host leaves the candidates and the SQL table.
    index.apply_host(None, "h0", n + 1)
    assert not index.candidate_columns()["present"][index.columns.row["h0"]]
    assert index.query("SELECT count(*) FROM hosts")[1] == [(n - 1,)]


async def test_weight_multipliers_by_name_override_and_bad_ones_fail() -> None:
    index = make_index(host("ram-rich", ram=65536), host("cpu-rich", vcpus=64))
    by_ram = scheduler(index, disk_weight_multiplier=0.0)
    assert (await by_ram.select(spec()))[0] in {"ram-rich", "cpu-rich"}
    cpu_only = scheduler(
        index, weight_multipliers=["RAMWeigher=0", "DiskWeigher=0", "CPUWeigher=1.5"]
    )
    assert (await cpu_only.select(spec()))[0] == "cpu-rich"
    ram_only = scheduler(index, weight_multipliers=["CPUWeigher=0", "DiskWeigher=0"])
    assert (await ram_only.select(spec()))[0] == "ram-rich"
    with pytest.raises(ValueError, match="'RAMWeigher:2' is not Name=number"):
        scheduler(index, weight_multipliers=["RAMWeigher:2"])


def test_the_plugin_api_names_every_index_column() -> None:
    assert set(get_args(ColumnName)) == set(HOST_COLUMNS) | {"up"}


async def test_stop_tasks_ends_a_task_that_swallows_its_cancellation() -> None:
    """A loop that loses one cancellation (as under 3.11's wait_for race) still ends."""
    swallowed = asyncio.Event()

    async def stubborn_loop() -> None:
        while True:
            try:
                await asyncio.sleep(3600)  # noqa: sleep (a task that waits until cancelled)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # lose this one, as a finished inner wait_for would

    task = asyncio.create_task(stubborn_loop())
    await asyncio.sleep(0)  # noqa: sleep (let the task reach its first await)
    await stop_tasks([task], grace=5.0)
    assert swallowed.is_set() and task.cancelled()


async def test_stop_tasks_gives_up_after_its_grace(caplog: pytest.LogCaptureFixture) -> None:
    """A task that never ends is named in the log and left behind after `grace`."""

    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)  # noqa: sleep (a task that waits until cancelled)

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)  # noqa: sleep (let the task reach its first await)
    try:
        await stop_tasks([task], grace=0.5)
        assert not task.done()
        [record] = [r for r in caplog.records if r.msg == "tasks.not_stopped"]
        assert record.tasks == ["immortal"]  # type: ignore[attr-defined]
    finally:
        release.set()
        task.cancel()
        await asyncio.wait_for(task, timeout=5)
