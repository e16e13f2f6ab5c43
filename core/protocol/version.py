"""The hvmesh version, read from the installed package's metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

UNKNOWN = "0.0.0"


def package_version() -> str:
    """The installed hvmesh distribution's version, or UNKNOWN when it is not installed."""
    try:
        return version("hvmesh")
    except PackageNotFoundError:
        return UNKNOWN


VERSION = package_version()
