"""The plugin manager: loads each "hvmesh" entry point on its own and collects what it registers.

Loading is guarded per plugin, as pytest and datasette do: a plugin that fails to import,
implements a hook that does not exist, or raises or registers something invalid while
registering is recorded with its error and skipped, and the others load. With `strict`
the first such failure is an error instead. Plugins can be disabled by entry-point name
(the `disabled` argument, or the HVMESH_DISABLE_PLUGINS environment variable).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pluggy

from hvmesh.core import log
from hvmesh.plugins import hookspecs
from hvmesh.plugins.api import Filter, SchedulerContext, SchedulerFactory, Weigher
from hvmesh.plugins.drivers import DriverEntry, DriverUnavailable

LOG = log.get_logger(__name__)
ENTRY_POINT_GROUP = "hvmesh"
DISABLE_ENV = "HVMESH_DISABLE_PLUGINS"
KINDS = ("filters", "weighers", "schedulers", "drivers")
BUILTIN_PACKAGE = "hvmesh"  # the distribution whose entry points are hvmesh's own

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "DriverEntry",
    "DriverUnavailable",
    "PluginError",
    "PluginInfo",
    "Registry",
    "configured",
    "load",
    "plugin_manager",
]


class PluginError(ValueError):
    """A plugin failed to load or registered something invalid, or a configured name is unknown."""


class PluginInfo(msgspec.Struct, kw_only=True):
    """One plugin as loading found it: where it came from, what it registered, or why not."""

    name: str
    module: str = ""
    package: str = ""
    version: str = ""
    status: str = "loaded"  # loaded | failed | disabled
    error: str = ""
    registered: dict[str, list[str]] = msgspec.field(default_factory=dict)


@dataclass
class Registry:
    """Everything the loaded plugins registered, by name, and a record of every plugin."""

    filters: dict[str, Filter] = field(default_factory=dict)
    weighers: dict[str, Weigher] = field(default_factory=dict)
    schedulers: dict[str, SchedulerFactory] = field(default_factory=dict)
    drivers: dict[str, DriverEntry] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def pick(self, kind: str, names: list[str]) -> list[Any]:
        table: dict[str, Any] = getattr(self, kind)
        unknown = [n for n in names if n not in table]
        if unknown:
            raise PluginError(
                f"unknown {kind[:-1]} {', '.join(unknown)}; known: {', '.join(sorted(table))}"
                + self._failed_hint()
            )
        return [table[n] for n in names]

    def driver(self, name: str) -> type:
        """The driver class registered as `name`, imported now (DriverUnavailable if it can't be)."""
        entry: DriverEntry = self.pick("drivers", [name])[0]
        return entry.load()

    def context(self, config: Any, index: Any) -> SchedulerContext:
        """What a scheduler is built with: the filters and weighers `config` enables."""
        return SchedulerContext(
            config=config,
            index=index,
            filters=self.pick("filters", config.scheduler.enabled_filters),
            weighers=self.pick("weighers", config.scheduler.weighers),
        )

    def origin(self, kind: str, name: str) -> str:
        """Who registered the `kind` ("filters", "weighers", ...) called `name`, for messages:
        "built into hvmesh, entry point builtin_filters", or "plugin my-filters, entry point
        myfilters = my_filters.plugin"; "unknown origin" if no loaded plugin did."""
        for p in self.plugins:
            if p.status != "loaded" or name not in p.registered.get(kind, []):
                continue
            if p.package == BUILTIN_PACKAGE:
                return f"built into hvmesh, entry point {p.name}"
            if p.package:
                return f"plugin {p.package}, entry point {p.name} = {p.module}"
            return f"plugin {p.name}" + (f" ({p.module})" if p.module else "")
        return "unknown origin"

    def _failed_hint(self) -> str:
        failed = self.failures
        if not failed:
            return ""
        return " (plugins that failed to load: " + ", ".join(p.name for p in failed) + ")"


def disabled_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


def plugin_manager() -> pluggy.PluginManager:
    """An empty manager that knows hvmesh's hookspecs."""
    pm = pluggy.PluginManager("hvmesh")
    pm.add_hookspecs(hookspecs)
    return pm


def _describe(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(
        name=ep.name,
        module=ep.value,
        package=dist.name if dist is not None else "",
        version=dist.version if dist is not None else "",
    )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Staging:
    """What one plugin registers, kept apart until all its hooks have run without error."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.items: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {kind[:-1]} needs a non-empty name, got {name!r}")
        table = self.items[kind]
        if name in table and table[name] is not obj:
            raise PluginError(f"registers the {kind[:-1]} {name!r} twice")
        table[name] = obj

    def filter(self, f: Any) -> None:
        if not isinstance(f, Filter):
            raise PluginError(f"register_filters got {type(f).__name__}, expected Filter")
        self.add("filters", f.name, f)

    def weigher(self, w: Any) -> None:
        if not isinstance(w, Weigher):
            raise PluginError(f"register_weighers got {type(w).__name__}, expected Weigher")
        self.add("weighers", w.name, w)

    def scheduler(self, name: str, factory: Any) -> None:
        if not callable(factory):
            raise PluginError(f"scheduler {name!r}: the factory is not callable")
        self.add("schedulers", name, factory)

    def driver(
        self,
        name: str,
        driver: type | str,
        *,
        requires: Iterable[str] = (),
        extra: str = "",
        description: str = "",
    ) -> None:
        entry = DriverEntry(
            name=name,
            target=driver,
            plugin=self.plugin,
            requires=tuple(requires),
            extra=extra,
            description=description,
        )
        self.add("drivers", name, entry)


def _run_hooks(pm: pluggy.PluginManager, plugin: object, staging: _Staging) -> None:
    """Call each register hook `plugin` implements, in its own guard."""
    registers: dict[str, Callable[..., None]] = {
        "hvmesh_register_filters": staging.filter,
        "hvmesh_register_weighers": staging.weigher,
        "hvmesh_register_schedulers": staging.scheduler,
        "hvmesh_register_drivers": staging.driver,
    }
    for hook_name, register in registers.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                impl.function(register=register)


def _merge(reg: Registry, staging: _Staging, info: PluginInfo) -> None:
    for kind in KINDS:
        table: dict[str, Any] = getattr(reg, kind)
        for name, obj in staging.items[kind].items():
            if name in table and table[name] is not obj:
                owner = next(
                    (p.name for p in reg.plugins if name in p.registered.get(kind, [])), "?"
                )
                raise PluginError(f"{kind[:-1]} {name!r} is already registered by {owner}")
    for kind in KINDS:
        getattr(reg, kind).update(staging.items[kind])
        if staging.items[kind]:
            info.registered[kind] = sorted(staging.items[kind])


def _load_one(
    pm: pluggy.PluginManager, reg: Registry, info: PluginInfo, load: Callable[[], object]
) -> None:
    plugin = None
    try:
        plugin = load()
        pm.register(plugin, name=info.name)
        pm.check_pending()  # a hook function whose name is no hook: a misspelling
        staging = _Staging(info.name)
        _run_hooks(pm, plugin, staging)
        _merge(reg, staging, info)
    except Exception as exc:
        info.status = "failed"
        info.error = _error(exc)
        if plugin is not None and pm.is_registered(plugin):
            pm.unregister(plugin)


def load(
    extra: list[Any] | None = None,
    *,
    disabled: Iterable[str] = (),
    strict: bool = False,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    on_failure: Callable[[PluginInfo], None] | None = None,
) -> Registry:
    """Load every "hvmesh" entry point (and `extra` plugin objects), each on its own.

    `disabled` (plus $HVMESH_DISABLE_PLUGINS) names entry points not to load. A plugin
    that fails is recorded in `Registry.plugins` and reported to `on_failure`; with
    `strict` it raises PluginError instead.
    """
    skip = set(disabled) | set(disabled_from_env())
    pm = plugin_manager()
    reg = Registry()
    eps = (
        entry_points
        if entry_points is not None
        else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    )
    seen: set[str] = set()
    for ep in sorted(eps, key=lambda e: e.name):
        if ep.name in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(ep.name)
        info = _describe(ep)
        reg.plugins.append(info)
        if ep.name in skip:
            info.status = "disabled"
            continue
        _load_one(pm, reg, info, ep.load)
        _report(info, strict, on_failure)
    for i, obj in enumerate(extra or []):
        name = getattr(obj, "__name__", None) or f"{type(obj).__name__}-{i}"
        info = PluginInfo(name=name, module=getattr(obj, "__module__", "") or "")
        reg.plugins.append(info)
        _load_one(pm, reg, info, functools.partial(_same, obj))
        _report(info, strict, on_failure)
    return reg


def _same(obj: object) -> object:
    return obj


def _report(
    info: PluginInfo, strict: bool, on_failure: Callable[[PluginInfo], None] | None
) -> None:
    if info.status != "failed":
        return
    if strict:
        raise PluginError(f"plugin {info.name} ({info.module}) failed to load: {info.error}")
    if on_failure is not None:
        on_failure(info)


def configured(cfg: Any) -> Registry:
    """The plugins as configuration `cfg` asks ([plugins] disabled, strict), failures logged."""
    return load(disabled=cfg.plugins.disabled, strict=cfg.plugins.strict, on_failure=_log_failure)


def _log_failure(info: PluginInfo) -> None:
    LOG.error(
        "plugins.load_failed",
        plugin=info.name,
        entry_point=info.module,
        package=info.package,
        error=info.error,
    )
