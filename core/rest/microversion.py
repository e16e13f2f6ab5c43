"""Compute microversions as Nova negotiates them: OpenStack-API-Version and the legacy header."""

from __future__ import annotations

import re
from collections.abc import Mapping

from hvmesh.core.rest.errors import RestError

MIN_VERSION = (2, 1)
# The highest version whose every change in what this service implements it honours
# (docs/rest-api.md lists them).
MAX_VERSION = (2, 100)
HEADER = "OpenStack-API-Version"
LEGACY_HEADER = "X-OpenStack-Nova-API-Version"
_VERSION = re.compile(r"^([1-9]\d{0,3})\.(0|[1-9]\d{0,3})$")


def text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _requested(headers: Mapping[str, str]) -> str | None:
    """The version asked for: the compute entry of OpenStack-API-Version, else the legacy one."""
    for part in (headers.get(HEADER) or "").split(","):
        words = part.strip().split()
        if len(words) == 2 and words[0].lower() == "compute":
            return words[1]
    legacy = headers.get(LEGACY_HEADER)
    return legacy.strip() if legacy else None


def negotiate(headers: Mapping[str, str]) -> tuple[int, int]:
    """The version a request speaks: 2.1 when it names none, the maximum for "latest";
    400 for a malformed one, 406 for one outside MIN_VERSION..MAX_VERSION."""
    asked = _requested(headers)
    if asked is None:
        return MIN_VERSION
    if asked.lower() == "latest":
        return MAX_VERSION
    match = _VERSION.match(asked)
    if match is None:
        raise RestError(400, f"invalid microversion {asked!r}: expected X.Y or latest")
    version = (int(match.group(1)), int(match.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise RestError(
            406,
            f"Version {asked} is not supported by the API. Minimum is {text(MIN_VERSION)} "
            f"and maximum is {text(MAX_VERSION)}.",
        )
    return version


def response_headers(version: tuple[int, int]) -> dict[str, str]:
    """The headers every versioned compute response carries."""
    return {
        HEADER: f"compute {text(version)}",
        LEGACY_HEADER: text(version),
        "Vary": f"{HEADER}, {LEGACY_HEADER}",
    }
