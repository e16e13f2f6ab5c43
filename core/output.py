"""CLI output: aligned tables for people, JSON for scripts (`-f json`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO | None = None
) -> None:
    """Print `rows` as a table of `columns`."""
    out = out or sys.stdout
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    print(header.rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def record(obj: dict[str, Any], out: TextIO | None = None) -> None:
    """Print one record as FIELD / VALUE lines."""
    out = out or sys.stdout
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        print(f"{key.ljust(width)}  {_cell(value)}", file=out)


def emit(
    data: Any,
    fmt: str,
    columns: Sequence[str] | None = None,
    out: TextIO | None = None,
) -> None:
    """Print `data` (a record or a list of records) as `fmt` ("table" or "json")."""
    out = out or sys.stdout
    if fmt == "json":
        print(json.dumps(data, indent=2, default=str), file=out)
    elif isinstance(data, list):
        table(data, columns or (list(data[0]) if data else []), out)
    else:
        record(data, out)
