"""`CliError`: a usage problem the CLI reports in one line (`--debug` adds the traceback)."""

from __future__ import annotations


class CliError(Exception):
    """A usage problem the CLI reports in one line."""
