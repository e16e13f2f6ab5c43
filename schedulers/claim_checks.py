"""Claim-time checks: the enabled filters' rules a claim re-checks on the host record it writes.

A filter judges hosts on the scheduler's index, which concurrent placements outrun: two
requests can each see room under an instance limit, or neither see the other's server
on a host its hint forbids. A filter that declares a `claim_check` gets a second say on
the authoritative record, inside the compare-and-set claim, so such races end with one
claim held and the other moving on to the next host.
"""

from __future__ import annotations

from collections.abc import Callable

from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.protocol.errors import PluginFailed
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.protocol.records import Host
from hvmesh.plugins.api import Filter

LOG = log.get_logger(__name__)

HostCheck = Callable[[Host], str | None]


class ClaimChecks:
    """The claim checks of a scheduler's enabled filters, combined per request."""

    def __init__(self, filters: list[Filter], config: Config, origin: Callable[[str], str]) -> None:
        self.filters = [f for f in filters if f.claim_check is not None]
        self.config = config
        self.origin = origin  # who registered a filter, by name, for error messages

    def for_request(self, spec: RequestSpec) -> HostCheck | None:
        """One check running every claim check that applies to `spec` (None: none does)."""
        applying: list[Filter] = []
        for f in self.filters:
            try:
                if f.applies is None or f.applies(spec):
                    applying.append(f)
            except Exception as exc:
                raise self._failed(f, exc, spec) from exc
        if not applying:
            return None

        def check(host: Host) -> str | None:
            for f in applying:
                assert f.claim_check is not None
                try:
                    reason = f.claim_check(host, spec, self.config)
                except Exception as exc:
                    raise self._failed(f, exc, spec) from exc
                if reason:
                    return f"{f.name}: {reason}"
            return None

        return check

    def _failed(self, f: Filter, exc: Exception, spec: RequestSpec) -> PluginFailed:
        message = f"filter {f.name} ({self.origin(f.name)}) raised {type(exc).__name__}: {exc}"
        LOG.exception("scheduler.plugin_failed", server=spec.server_id, error=message)
        return PluginFailed(message)
