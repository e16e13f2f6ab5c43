"""Boxed text tables in python-openstackclient's style, shrunk to fit a width when asked."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

# Columns narrower than these are never shrunk: a table overflows the width instead.
LIST_MIN_WIDTH = 8
RECORD_MIN_WIDTH = 16


def _lines(text: str, width: int | None) -> list[str]:
    """The lines a cell shows: its own lines, each wrapped to `width` when one is set."""
    out: list[str] = []
    for line in text.split("\n"):
        if width is not None and len(line) > width:
            out.extend(textwrap.wrap(line, width) or [""])
        else:
            out.append(line)
    return out


def _natural_widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    widths = [max((len(line) for line in h.split("\n")), default=0) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in cell.split("\n")))
    return widths


def fit(widths: list[int], max_width: int, min_width: int) -> list[int]:
    """Column widths whose table fits `max_width` characters, shrinking the widest columns.

    As cliff does: columns narrower than an even share keep their width, the others share
    what is left, but none is made narrower than `min_width`.
    """
    count = len(widths)
    total = sum(widths) + 3 * count + 1
    if count == 0 or total <= max_width:
        return widths
    usable = max(0, max_width - 1 - 3 * count)
    share = usable // count
    wide = [i for i, w in enumerate(widths) if w > share]
    if not wide:
        return widths
    remaining = usable - sum(w for i, w in enumerate(widths) if i not in wide)
    each = remaining // len(wide)
    fitted = list(widths)
    for i in wide[:-1]:
        fitted[i] = max(min_width, each)
        remaining -= each
    fitted[wide[-1]] = max(min_width, remaining)
    return fitted


def render(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Sequence[bool] | None = None,
    max_width: int | None = None,
    min_width: int = LIST_MIN_WIDTH,
) -> str:
    """A `+---+` boxed table of `rows` under `header`; `right` marks right-aligned columns."""
    widths = _natural_widths(header, rows)
    if max_width:
        widths = fit(widths, max_width, min_width)
    align_right = list(right or [False] * len(header))
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def block(cells: Sequence[str]) -> list[str]:
        wrapped = [_lines(c, w) for c, w in zip(cells, widths, strict=True)]
        height = max((len(c) for c in wrapped), default=1)
        out = []
        for n in range(height):
            parts = []
            for lines, w, r in zip(wrapped, widths, align_right, strict=True):
                text = lines[n] if n < len(lines) else ""
                parts.append(text.rjust(w) if r else text.ljust(w))
            out.append("| " + " | ".join(parts) + " |")
        return out

    lines = [border, *block(header), border]
    for row in rows:
        lines.extend(block(row))
    lines.append(border)
    return "\n".join(lines)
