"""Example hvmesh plugin: NameSuffixFilter and NameLengthWeigher.

Enable them in the scheduler's configuration, by name:

    [scheduler]
    enabled_filters = ComputeFilter, AvailabilityZoneFilter, CoreFilter, RamFilter, DiskFilter, NameSuffixFilter
    weighers = RAMWeigher, CPUWeigher, NameLengthWeigher

(Listing filters or weighers replaces the default lists; keep the built-ins you want.)

NameSuffixFilter passes only hosts whose name ends with the flavor's extra spec
`example:host_suffix` (a flavor without it passes every host). NameLengthWeigher
prefers hosts with shorter names.
"""

from __future__ import annotations

import numpy as np

from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import Columns, Filter, RegisterFilter, RegisterWeigher, Weigher

SUFFIX_KEY = "example:host_suffix"


def _names(cols: Columns) -> np.ndarray:
    # "name" is an object array of str; numpy's string functions need a str array.
    return cols["name"].astype(str)


def suffix_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    """True for each host whose name ends with the suffix; None (all pass) without one."""
    suffix = spec.flavor.extra_specs.get(SUFFIX_KEY)
    if not suffix:
        return None
    return np.char.endswith(_names(cols), suffix)


def name_length(cols: Columns, spec: RequestSpec) -> np.ndarray:
    """Minus the length of each host's name: the shorter the name, the higher the score."""
    return -np.char.str_len(_names(cols)).astype(np.float64)


NAME_SUFFIX_FILTER = Filter(
    name="NameSuffixFilter",
    mask=suffix_mask,
    # The per-host form is the fallback for tests that cannot be vectorised; the filter
    # scheduler uses `mask` when a filter gives one. The same test per host would be:
    #   host_passes=lambda host, spec: host.name.endswith(
    #       spec.flavor.extra_specs.get(SUFFIX_KEY, "")),
    description=f"Passes hosts whose name ends with the flavor's {SUFFIX_KEY} extra spec.",
)

NAME_LENGTH_WEIGHER = Weigher(
    name="NameLengthWeigher",
    weigh=name_length,
    multiplier=1.0,
    description="Prefers hosts with shorter names (an example weigher).",
)


@hookimpl
def hvmesh_register_filters(register: RegisterFilter) -> None:
    register(NAME_SUFFIX_FILTER)


@hookimpl
def hvmesh_register_weighers(register: RegisterWeigher) -> None:
    register(NAME_LENGTH_WEIGHER)
