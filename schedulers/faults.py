"""PluginRaised: a filter or weigher raised while a scheduler decided one request.

The scheduler implementations raise it with the plugin's kind and name around each plugin
call (once per request, never per host); the scheduler service turns it into the
PluginFailed error it answers with, adding which plugin registered it.
"""

from __future__ import annotations

from typing import Literal

PluginKind = Literal["filter", "weigher"]


class PluginRaised(Exception):
    """Filter or weigher `name` raised `error` (`name` may list several: "A or B", when
    the error cannot tell them apart, as with SQL predicates run together)."""

    def __init__(self, kind: PluginKind, name: str | list[str], error: BaseException) -> None:
        self.kind: PluginKind = kind
        self.names = [name] if isinstance(name, str) else list(name)
        self.name = " or ".join(self.names)
        self.error = error
        super().__init__(f"{kind} {self.name} raised {type(error).__name__}: {error}")

    @property
    def table(self) -> str:
        """The Registry table it is registered in ("filters" or "weighers")."""
        return f"{self.kind}s"
