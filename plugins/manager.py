"""The plugin manager: loads every "hvmesh" entry point and collects what they register."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pluggy

from hvmesh.plugins import hookspecs
from hvmesh.plugins.api import Filter, SchedulerContext, SchedulerFactory, Weigher

ENTRY_POINT_GROUP = "hvmesh"


class PluginError(ValueError):
    """A plugin registered something invalid, or a configured name is unknown."""


@dataclass
class Registry:
    """Everything the loaded plugins registered, by name."""

    filters: dict[str, Filter] = field(default_factory=dict)
    weighers: dict[str, Weigher] = field(default_factory=dict)
    schedulers: dict[str, SchedulerFactory] = field(default_factory=dict)
    drivers: dict[str, type] = field(default_factory=dict)

    def pick(self, kind: str, names: list[str]) -> list[Any]:
        table: dict[str, Any] = getattr(self, kind)
        unknown = [n for n in names if n not in table]
        if unknown:
            raise PluginError(
                f"unknown {kind[:-1]} {', '.join(unknown)}; known: {', '.join(sorted(table))}"
            )
        return [table[n] for n in names]

    def context(self, config: Any, index: Any) -> SchedulerContext:
        """What a scheduler is built with: the filters and weighers `config` enables."""
        return SchedulerContext(
            config=config,
            index=index,
            filters=self.pick("filters", config.scheduler.enabled_filters),
            weighers=self.pick("weighers", config.scheduler.weighers),
        )


def _add(table: dict[str, Any], kind: str, name: str, obj: Any) -> None:
    if name in table and table[name] is not obj:
        raise PluginError(f"two plugins register the {kind} {name!r}")
    table[name] = obj


def plugin_manager(extra: list[Any] | None = None) -> pluggy.PluginManager:
    """A manager with every installed "hvmesh" entry point (and `extra` objects) loaded."""
    pm = pluggy.PluginManager("hvmesh")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra or []:
        pm.register(plugin)
    return pm


def load(extra: list[Any] | None = None) -> Registry:
    """Load all plugins and return what they registered."""
    pm = plugin_manager(extra)
    reg = Registry()
    pm.hook.hvmesh_register_filters(register=lambda f: _add(reg.filters, "filter", f.name, f))
    pm.hook.hvmesh_register_weighers(register=lambda w: _add(reg.weighers, "weigher", w.name, w))
    pm.hook.hvmesh_register_schedulers(
        register=lambda name, factory: _add(reg.schedulers, "scheduler", name, factory)
    )
    pm.hook.hvmesh_register_drivers(
        register=lambda name, cls: _add(reg.drivers, "driver", name, cls)
    )
    return reg
