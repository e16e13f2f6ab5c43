"""The hvmesh plugin API: every hook a plugin may implement, in one file.

A plugin is a module (or object) with functions named after these hooks and marked
with `@hookimpl`, made known through the "hvmesh" entry-point group:

    # pyproject.toml of your package
    [project.entry-points.hvmesh]
    my_filters = "my_package.filters"

    # my_package/filters.py
    from hvmesh.plugins import hookimpl
    from hvmesh.plugins.api import Filter

    @hookimpl
    def hvmesh_register_filters(register):
        register(Filter(name="EvenHostFilter", host_passes=lambda host, spec: ...))

hvmesh's own filters, weighers, schedulers and drivers register through these same hooks
and the same entry-point group; nothing built in takes a shortcut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("hvmesh")


@hookspec
def hvmesh_register_filters(register: Callable[[Any], None]) -> None:
    """Register host filters: call `register(Filter(...))` once for each.

    A filter (hvmesh.plugins.api.Filter) removes hosts that cannot take a request. It
    may give any of three forms, and the scheduler uses the fastest it has:

    - `sql(spec)`: a predicate over the inventory index's `hosts` table, pushed down into
      the DuckDB candidate query, returned as (sql_text, parameters) or None to skip;
    - `mask(columns, spec)`: a boolean numpy array over the candidate columns;
    - `host_passes(host, spec)`: a per-host check for logic that can't be vectorised.

    The name is how operators enable it in `[scheduler] enabled_filters`.
    """


@hookspec
def hvmesh_register_weighers(register: Callable[[Any], None]) -> None:
    """Register host weighers: call `register(Weigher(...))` once for each.

    A weigher (hvmesh.plugins.api.Weigher) scores every candidate at once with
    `weigh(columns, spec) -> numpy array`. The scheduler normalises each weigher's scores
    to 0..1, multiplies them by the weigher's multiplier and sums, as Nova does; the
    highest total wins. Enable it by name in `[scheduler] weighers`.
    """


@hookspec
def hvmesh_register_schedulers(register: Callable[[str, Any], None]) -> None:
    """Register scheduler implementations: call `register(name, factory)`.

    `factory(context)` receives a hvmesh.plugins.api.SchedulerContext (config, index,
    filters, weighers) and returns an object with `async select(spec) -> list[str]`:
    host names, best first, never one named in `spec.ignore_hosts` (the service asks
    again with the hosts whose claims failed added there). Claims are made by the scheduler service, not by the
    implementation, so every scheduler gets the same no-oversubscription guarantee.
    Choose one with `[scheduler] driver`.
    """


@hookspec
def hvmesh_register_drivers(register: Callable[..., None]) -> None:
    """Register hypervisor drivers: call `register(name, driver, requires=(), extra="")`.

    `driver` subclasses hvmesh.agents.driver.ComputeDriver; give it as the class, or as a
    "package.module:ClassName" path so the module (and the hypervisor library it imports)
    is imported only by an agent that runs the driver. `requires` names the modules the
    driver needs and `extra` the pip extra that installs them: where one is missing the
    driver is listed as unavailable with that reason, and every other part of hvmesh
    still loads. `hvmesh agent --driver NAME` runs it under the shared agent runtime.
    """
