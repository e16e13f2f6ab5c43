"""API microversions, as Nova's: the request header that picks one, and its negotiation.

A request names the version it speaks in the `Hvmesh-API-Version` header: `MAJOR.MINOR`
or `latest`; without the header it gets the service's minimum, so old clients keep the
behaviour they were written for. A malformed value is a 400, one outside the service's
range a 406, both naming the range; the reply carries the version used in the same header.
"""

from __future__ import annotations

import re

from hvmesh.core.protocol import errors

HEADER = "Hvmesh-API-Version"
LATEST = "latest"
PATTERN = re.compile(r"^(0|[1-9]\d{0,3})\.(0|[1-9]\d{0,3})$")

Version = tuple[int, int]


class NotAcceptable(errors.HvmeshError):
    """The version asked for is well formed but outside what the service speaks (406)."""

    code = 406


def parse(text: str) -> Version:
    """`"1.1"` -> (1, 1); ValueError naming the value if it is not MAJOR.MINOR."""
    m = PATTERN.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not MAJOR.MINOR")
    return int(m.group(1)), int(m.group(2))


def text(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


class VersionRange:
    """The versions a service speaks, from `minimum` to `maximum` (both MAJOR.MINOR)."""

    def __init__(self, minimum: str, maximum: str) -> None:
        self.minimum = parse(minimum)
        self.maximum = parse(maximum)
        if self.minimum > self.maximum:
            raise ValueError(f"microversion range {minimum} to {maximum} is empty")

    def describe(self) -> str:
        return f"{text(self.minimum)} to {text(self.maximum)}"

    def negotiate(self, headers: dict[str, str] | None) -> Version:
        """The version a request's headers ask for (the minimum when they name none)."""
        asked = header_value(headers)
        if asked is None or not asked.strip():
            return self.minimum
        if asked.strip().lower() == LATEST:
            return self.maximum
        try:
            version = parse(asked)
        except ValueError:
            raise errors.BadRequest(
                f"malformed {HEADER} {asked!r}: expected MAJOR.MINOR or {LATEST!r}; "
                f"this service supports {self.describe()}"
            ) from None
        if not self.minimum <= version <= self.maximum:
            raise NotAcceptable(
                f"{HEADER} {text(version)} is not supported: this service supports "
                f"{self.describe()}"
            )
        return version


def header_value(headers: dict[str, str] | None) -> str | None:
    """The version header's value, its name matched without regard to case."""
    for name, value in (headers or {}).items():
        if name.lower() == HEADER.lower():
            return value
    return None
