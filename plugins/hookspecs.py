"""The hvmesh plugin API: every hook a plugin may implement, in one file.

A plugin is a module (or object) with functions named after these hooks and marked
with `@hookimpl`, made known through the "hvmesh" entry-point group:

    # pyproject.toml of your package
    [project.entry-points.hvmesh]
    my_filters = "my_package.filters"

    # my_package/filters.py
    from hvmesh.plugins import hookimpl
    from hvmesh.plugins.api import Filter, RegisterFilter

    @hookimpl
    def hvmesh_register_filters(register: RegisterFilter) -> None:
        register(Filter(name="EvenHostFilter", host_passes=lambda host, spec: ...))

hvmesh's own filters, weighers, schedulers and drivers register through these same hooks
and the same entry-point group; nothing built in takes a shortcut.

Each hook is called once per plugin when a service loads plugins, always with the one
keyword argument `register`; its return value is ignored. What a plugin registers is
kept only if all of its hooks return without raising (see plugins/manager.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from hvmesh.plugins.api import (
        RegisterDriver,
        RegisterFilter,
        RegisterScheduler,
        RegisterWeigher,
    )

hookspec = pluggy.HookspecMarker("hvmesh")


@hookspec
def hvmesh_register_filters(register: RegisterFilter) -> None:
    """Register host filters: call `register(Filter(...))` once for each.

    A filter (hvmesh.plugins.api.Filter) removes hosts that cannot take a request. It
    may give any of three forms, and the scheduler uses the fastest it has:

    - `mask(cols, spec)`: a boolean numpy array over the rows of `cols`
      (hvmesh.plugins.api.Columns), or None to pass every host;
    - `sql(spec)`: a predicate over the inventory index's `hosts` table, run as one
      DuckDB query with the other filters' predicates, returned as (sql_text,
      parameters) or None to skip;
    - `host_passes(host, spec)`: a per-host check for logic that can't be vectorised.

    :param register: Takes one `Filter`. The filter's name is how operators enable it
        in `[scheduler] enabled_filters`; a name registered twice (by this plugin with
        another object, or by any plugin loaded before) fails this plugin's loading, as
        does an argument that is not a `Filter`.
    """


@hookspec
def hvmesh_register_weighers(register: RegisterWeigher) -> None:
    """Register host weighers: call `register(Weigher(...))` once for each.

    A weigher (hvmesh.plugins.api.Weigher) scores every candidate at once with
    `weigh(cols, spec) -> numpy array`, one score per row of `cols`. The scheduler
    normalises each weigher's scores to 0..1, multiplies them by the weigher's
    multiplier and sums, as Nova does; the highest total wins.

    :param register: Takes one `Weigher`. Its name is how operators enable it in
        `[scheduler] weighers`; names are global, as for filters, and an argument that
        is not a `Weigher` fails this plugin's loading.
    """


@hookspec
def hvmesh_register_schedulers(register: RegisterScheduler) -> None:
    """Register scheduler implementations: call `register(name, factory)`.

    `factory(context)` receives a hvmesh.plugins.api.SchedulerContext (config, index,
    filters, weighers) and returns an object with `async select(spec) -> list[str]`:
    host names, best first, never one named in `spec.ignore_hosts` (the service asks
    again with the hosts whose claims failed added there). Claims are made by the
    scheduler service, not by the implementation, so every scheduler gets the same
    no-oversubscription guarantee.

    :param register: Takes the implementation's `name` (a non-empty string, how
        operators choose it with `[scheduler] driver`) and its `factory` (a callable,
        usually the class itself), called once when the scheduler service starts.
    """


@hookspec
def hvmesh_register_drivers(register: RegisterDriver) -> None:
    """Register hypervisor drivers: call `register(name, driver, requires=(), extra="",
    description="")` once for each.

    `hvmesh agent --driver NAME` runs the driver under the shared agent runtime.

    :param register: Takes the driver's `name` (as written into host records) and
        `driver`: a subclass of hvmesh.agents.driver.ComputeDriver, or a
        "package.module:ClassName" path so the module (and the hypervisor library it
        imports) is imported only by an agent that runs the driver. Keyword-only:
        `requires`, the modules the driver needs, and `extra`, the pip extra that
        installs them (where one is missing the driver is listed as unavailable with
        that reason, and every other part of hvmesh still loads); `description`, one
        line for `hvmesh driver list`.
    """
