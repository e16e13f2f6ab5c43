"""Registered hypervisor drivers: imported when an agent uses one, not when it is registered.

A driver plugin registers a class, or a "module:Class" path with the libraries it
`requires` and the pip `extra` that installs them, so registering costs nothing and a
missing hypervisor library makes only that driver unavailable, with a reason.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


class DriverUnavailable(RuntimeError):
    """A registered driver cannot be used on this machine (its library is missing)."""


@dataclass(frozen=True)
class DriverEntry:
    """One registered driver: its name, what to import, and what it needs."""

    name: str
    target: type | str
    plugin: str = ""
    requires: tuple[str, ...] = ()
    extra: str = ""
    description: str = ""

    def _install_hint(self) -> str:
        return f"; install it with: pip install 'hvmesh[{self.extra}]'" if self.extra else ""

    def unavailable_reason(self) -> str | None:
        """Why the driver can't load here, judged without importing it; None when it can."""
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"No module named {module!r}{self._install_hint()}"
        return None

    def load(self) -> type:
        """The driver class, importing its module now."""
        if isinstance(self.target, type):
            return self.target
        module_name, _, attr = self.target.partition(":")
        reason = self.unavailable_reason()
        if reason is not None:
            raise DriverUnavailable(f"driver {self.name} is unavailable: {reason}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DriverUnavailable(
                f"driver {self.name} is unavailable: {exc}{self._install_hint()}"
            ) from exc
        try:
            cls = getattr(module, attr)
        except AttributeError:
            raise DriverUnavailable(
                f"driver {self.name}: {module_name} has no {attr!r} (plugin {self.plugin})"
            ) from None
        if not isinstance(cls, type):
            raise DriverUnavailable(f"driver {self.name}: {self.target} is not a class")
        return cls
