"""CLI output as python-openstackclient prints it: `-f table|json|yaml|value|csv`, `-c`, `--max-width`.

Commands call `emit(data, fmt, columns)` with a record (a dict) or a list of records and
the field keys a list shows by default. `configure(args)` sets, once per run, what every
command shares: the `-c` columns, `--max-width` and `--noindent`. json and yaml print the
data itself (only the chosen keys with `-c`); table, value and csv print cells, nested
dicts and lists written `key='v', key2='v2'` and `a, b`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import select as select_module
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from hvmesh.core.cli import lazy, output_table

# Imported when first used: only `-f yaml` needs it.
if TYPE_CHECKING:
    import yaml
else:
    yaml = lazy.module("yaml")

FORMATS = ("table", "json", "yaml", "value", "csv")
# Formats printed as cells for people and shell scripts, not as the API's structures.
TEXT_FORMATS = ("table", "value", "csv")

# A column: a field key, or (key, header) to show another header than the key's label.
Column = str | tuple[str, str]

# Header words spelled as python-openstackclient spells them.
_WORDS = {
    "id": "ID",
    "ip": "IP",
    "ips": "IPs",
    "mac": "MAC",
    "cidr": "CIDR",
    "vcpu": "VCPU",
    "vcpus": "VCPUs",
    "mb": "MB",
    "gb": "GB",
    "vms": "VMs",
    "az": "AZ",
    "dns": "DNS",
    "mtu": "MTU",
    "cpu": "CPU",
    "ram": "RAM",
    "pci": "PCI",
    "uuid": "UUID",
    "url": "URL",
    "vlan": "VLAN",
    "os": "OS",
}
_LABELS = {"ram_mb": "RAM", "disk_gb": "Disk"}


class ColumnError(ValueError):
    """`-c` named a column the output does not have."""


@dataclass
class Settings:
    """The output options of this run, shared by every `emit`."""

    columns: list[str] = field(default_factory=list)
    max_width: int | None = None  # None: the terminal's width when stdout is a terminal
    noindent: bool = False


SETTINGS = Settings()


def configure(args: argparse.Namespace) -> None:
    """Take `-c`, `--max-width` and `--noindent` from the parsed command line."""
    SETTINGS.columns = list(getattr(args, "column", None) or [])
    SETTINGS.max_width = getattr(args, "max_width", None)
    SETTINGS.noindent = bool(getattr(args, "noindent", False))


def for_people(fmt: str) -> bool:
    """Whether `fmt` prints display cells (names, not nested API objects)."""
    return fmt in TEXT_FORMATS


def label(key: str) -> str:
    """A field key's column header: `task_state` is "Task State", `vcpus_used` "VCPUs Used"."""
    if key in _LABELS:
        return _LABELS[key]
    return " ".join(_WORDS.get(w.lower(), w.capitalize()) for w in key.split("_") if w)


# --- cells -----------------------------------------------------------------------------


def format_dict(data: dict[Any, Any], prefix: str = "") -> str:
    """`key='v', key2='v2'`, keys sorted, nested dicts as `outer.inner='v'`."""
    parts = []
    for key in sorted(data, key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        value = data[key]
        if isinstance(value, dict) and value:
            parts.append(format_dict(value, name))
        elif value is None:
            parts.append(f"{name}=")
        else:
            parts.append(f"{name}='{cell(value, flat=True)}'")
    return ", ".join(parts)


def cell(value: Any, flat: bool = False) -> str:
    """A value as one table cell; `flat` keeps a list of dicts on one line."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return value.replace("\r\n", "\n").replace("\r", " ")
    if isinstance(value, dict):
        return format_dict(value)
    if isinstance(value, list | tuple):
        if any(isinstance(v, dict) for v in value):
            return ("; " if flat else "\n").join(cell(v, flat) for v in value)
        return ", ".join(cell(v, flat) for v in value)
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return cell(value, flat=True)


# --- columns ---------------------------------------------------------------------------


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _as_pairs(columns: Sequence[Column]) -> list[tuple[str, str]]:
    return [c if isinstance(c, tuple) else (c, label(c)) for c in columns]


def _list_columns(rows: Sequence[dict[str, Any]], columns: Sequence[Column] | None) -> list:
    if columns:
        return _as_pairs(columns)
    return _as_pairs(list(rows[0]) if rows else [])


def _available(rows: Sequence[dict[str, Any]], shown: list[tuple[str, str]]) -> list:
    """The shown columns, then every other field the rows have (any may be chosen with -c)."""
    keys = {k for k, _ in shown}
    extra: list[tuple[str, str]] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.add(key)
                extra.append((key, label(key)))
    return [*shown, *extra]


def select(wanted: Sequence[str], available: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The columns `-c` names, in its order, matched by key or header, in any case."""
    by_name: dict[str, tuple[str, str]] = {}
    for key, header in available:
        for name in (key, header, label(key)):
            by_name.setdefault(_norm(name), (key, header))
    chosen: list[tuple[str, str]] = []
    for name in wanted:
        hit = by_name.get(_norm(name))
        if hit is None:
            known = ", ".join(header for _, header in available) or "none"
            raise ColumnError(f"unknown column {name!r}; the columns are: {known}")
        if hit not in chosen:
            chosen.append(hit)
    return chosen


def _selected_data(data: Any, columns: Sequence[Column] | None) -> Any:
    """json and yaml with -c: the records with the chosen keys only."""
    wanted = SETTINGS.columns
    if not wanted:
        return data
    if isinstance(data, dict):
        keys = [k for k, _ in select(wanted, [(k, k) for k in data])]
        return {k: data[k] for k in keys}
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        keys = [k for k, _ in select(wanted, _available(data, _list_columns(data, columns)))]
        return [{k: row.get(k) for k in keys} for row in data]
    return data


# --- formats ---------------------------------------------------------------------------


def _max_width(out: TextIO) -> int | None:
    if SETTINGS.max_width is not None:
        return SETTINGS.max_width if SETTINGS.max_width > 0 else None
    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _csv_writer(out: TextIO) -> Any:
    return csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator=os.linesep, escapechar="\\")


def _emit_rows(
    rows: Sequence[dict[str, Any]],
    columns: list[tuple[str, str]],
    fmt: str,
    out: TextIO,
    width: int | None,
) -> None:
    keys = [k for k, _ in columns]
    if fmt == "csv":
        writer = _csv_writer(out)
        writer.writerow([header for _, header in columns])
        writer.writerows([_csv_cell(row.get(k)) for k in keys] for row in rows)
    elif fmt == "value":
        for row in rows:
            print(" ".join(cell(row.get(k), flat=True) if k in row else "" for k in keys), file=out)
    elif rows:
        cells = [[cell(row[k]) if k in row else "" for k in keys] for row in rows]
        right = [
            isinstance(rows[0].get(k), int | float) and not isinstance(rows[0].get(k), bool)
            for k in keys
        ]
        header = [h for _, h in columns]
        print(output_table.render(header, cells, right, width), file=out)


def _emit_record(record: dict[str, Any], fmt: str, out: TextIO, width: int | None) -> None:
    keys = list(record)
    if SETTINGS.columns:
        keys = [k for k, _ in select(SETTINGS.columns, [(k, k) for k in keys])]
    if fmt == "csv":
        writer = _csv_writer(out)
        writer.writerow(keys)
        writer.writerow([_csv_cell(record[k]) for k in keys])
    elif fmt == "value":
        for key in keys:
            print(cell(record[key], flat=True), file=out)
    elif keys:
        rows = [[key, cell(record[key])] for key in keys]
        table = output_table.render(
            ["Field", "Value"], rows, max_width=width, min_width=output_table.RECORD_MIN_WIDTH
        )
        print(table, file=out)


def _emit_yaml(data: Any, out: TextIO) -> None:
    # Through JSON first, so yaml shows exactly the data json would.
    plain = json.loads(json.dumps(data, default=str))
    out.write(yaml.safe_dump(plain, default_flow_style=False, sort_keys=False, allow_unicode=True))


def emit(
    data: Any,
    fmt: str,
    columns: Sequence[Column] | None = None,
    out: TextIO | None = None,
) -> None:
    """Print `data` (a record or a list of records) as `fmt`; `columns`: a list's default ones."""
    out = out or sys.stdout
    text = io.StringIO()
    if fmt == "json":
        indent = None if SETTINGS.noindent else 2
        print(json.dumps(_selected_data(data, columns), indent=indent, default=str), file=text)
    elif fmt == "yaml":
        _emit_yaml(_selected_data(data, columns), text)
    elif isinstance(data, dict):
        _emit_record(data, fmt, text, _max_width(out))
    elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
        shown = _list_columns(data, columns)
        if SETTINGS.columns:
            shown = select(SETTINGS.columns, _available(data, shown))
        _emit_rows(data, shown, fmt, text, _max_width(out))
    elif isinstance(data, list):
        for item in data:
            print(cell(item, flat=True), file=text)
    else:
        print(cell(data), file=text)
    write_all(text.getvalue(), out)


def write_all(text: str, out: TextIO) -> None:
    """Write `text` to `out` to the last byte, however slowly its reader reads.

    A write to a pipe may place only part of the bytes (the pipe is full and the write is
    interrupted, or the pipe is non-blocking), and Python's buffered stdout can drop the
    rest without a word: a long `-f json` list would be cut at the pipe's 64 KiB. So the
    bytes go straight to the descriptor, again and again until all are written.
    """
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        out.write(text)  # not a file: a StringIO
        return
    out.flush()
    data = memoryview(text.encode(out.encoding or "utf-8", errors="replace"))
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            select_module.select([], [fd], [])


def stdout_closed() -> int:
    """Whoever read stdout has gone (`hvmesh ... | head -1`): end quietly.

    As Python's documentation advises for SIGPIPE: point stdout at /dev/null, so that
    flushing it at exit raises nothing, and exit with status 1.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1
