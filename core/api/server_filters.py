"""What servers.list's filters take apart: a name pattern safe to run, a changes-since time.

A name pattern is a Python regular expression searched in each server's name. Since one
list call may run it over every server of the cloud, only patterns that run in time
bounded by the name's length are taken: at most one repeat whose maximum is above one
(*, +, {m,n}), and only of a single character, `.` or a class; alternatives and
optional parts giving at most 64 ways together; no backreferences. A leading or
trailing `.*` is dropped first (a search matches anywhere already). The rest is a 400
naming the rule, so `(a+)+$` or `a?a?a?...aaa` cannot stall the API for everyone.
"""

from __future__ import annotations

import importlib
import re
import warnings
from datetime import UTC, datetime
from typing import Any

from hvmesh.core.protocol import errors

_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT))
SINGLE = (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN, _c.CATEGORY)
BACKREFS = (_c.GROUPREF, _c.GROUPREF_EXISTS)
MAX_REPEATS = 1
MAX_WAYS = 64  # the product of alternatives (a|b|c: 3) and optional parts (x?: 2)


def name_pattern(text: str) -> re.Pattern[str]:
    """The compiled pattern of a `name` filter, or a 400 saying what is wrong with it."""
    core = text
    if core.startswith(".*"):
        core = core[2:]
    if core.endswith(".*") and not core.endswith("\\.*"):
        core = core[:-2]
    try:
        with warnings.catch_warnings():  # "possible nested set" and the like
            warnings.simplefilter("ignore")
            check = _Check(text)
            check.walk(_parser.parse(core))
            return re.compile(core)
    except (re.error, OverflowError, RecursionError) as exc:
        raise errors.BadRequest(f"name: {text!r} is not a regular expression: {exc}") from None


class _Check:
    """Walks a parsed pattern, counting its repeats and the ways its alternatives and
    optional parts give; a 400 as soon as one is over its bound."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.repeats = 0
        self.ways = 1

    def refuse(self, why: str) -> errors.BadRequest:
        return errors.BadRequest(f"name: {self.text!r} {why}")

    def walk(self, items: Any) -> None:
        for op, av in items:
            if op in REPEATS:
                self.repeat(*av)
            elif op in BACKREFS:
                raise self.refuse("has a backreference; not taken")
            elif op == _c.SUBPATTERN:
                self.walk(av[-1])
            elif op == _c.BRANCH:
                self.choose(len(av[1]))
                for branch in av[1]:
                    self.walk(branch)
            elif op in (_c.ASSERT, _c.ASSERT_NOT):
                self.walk(av[1])
            elif op == getattr(_c, "ATOMIC_GROUP", None):
                self.walk(av)

    def repeat(self, low: int, high: int, body: Any) -> None:
        if high <= 1:  # optional (?): one more way, whatever it holds
            self.choose(2)
            self.walk(body)
            return
        if len(body) != 1 or body[0][0] not in SINGLE:
            raise self.refuse(
                "repeats a group; a name pattern may repeat only one character, `.` or class"
            )
        if low == high:
            return  # exactly n times: no choice
        self.repeats += 1
        if self.repeats > MAX_REPEATS:
            raise self.refuse(
                "repeats more than once (*, +, {m,n}); a name pattern may repeat one "
                "character, `.` or class once"
            )

    def choose(self, ways: int) -> None:
        self.ways *= ways
        if self.ways > MAX_WAYS:
            raise self.refuse(
                f"has too many alternatives and optional parts (more than {MAX_WAYS} ways)"
            )


def changes_since(value: str | float) -> float:
    """Seconds since the epoch of a changes_since given as ISO 8601 (UTC when it names no
    zone) or as seconds since the epoch."""
    if isinstance(value, int | float):
        return float(value)
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise errors.BadRequest(
                f"changes_since: {value!r} is neither ISO 8601 (2026-12-01T10:00:00Z) "
                f"nor seconds since the epoch"
            ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()
