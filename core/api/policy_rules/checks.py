"""Check strings, as oslo.policy writes them: parsed once, evaluated against a caller.

A check string combines checks with `and`, `or`, `not` and parentheses:

- `role:NAME`: the caller holds role NAME (admin implies member, member implies reader);
- `rule:NAME`: the rule NAME allows it;
- `project_id:%(project_id)s`, `user_id:%(user_id)s`: the caller's project (or user) is
  the target's; `project_id:DEMO`: the caller's project is DEMO;
- `is_admin:True`: the caller is an admin;
- `@` (or an empty string): always; `!`: never.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

TOKEN = re.compile(r"\s*([^\s()]*%\(\w+\)s|\(|\)|[^\s()]+)")
CREDENTIALS = ("project_id", "user_id", "is_admin")
TARGET_VALUE = re.compile(r"^%\((\w+)\)s$")


class CheckError(ValueError):
    """A check string that cannot be parsed."""


@dataclass(frozen=True)
class Credentials:
    """What a check is evaluated against: who asks, and on what."""

    project_id: str
    user_id: str
    roles: frozenset[str]
    target: Mapping[str, str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


RuleLookup = Callable[[str, Credentials], bool]


class Check:
    """A parsed check string node."""

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        raise NotImplementedError

    def rules(self) -> set[str]:
        """The rule names this check refers to (`rule:NAME`)."""
        return set()


@dataclass(frozen=True)
class Always(Check):
    value: bool

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        return self.value


@dataclass(frozen=True)
class Role(Check):
    name: str

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        return self.name in creds.roles


@dataclass(frozen=True)
class RuleRef(Check):
    name: str

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        return rules(self.name, creds)

    def rules(self) -> set[str]:
        return {self.name}


@dataclass(frozen=True)
class Match(Check):
    """`project_id:...`, `user_id:...` or `is_admin:...` against a target field or a literal."""

    field: str
    value: str

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        have = str(creds.is_admin) if self.field == "is_admin" else getattr(creds, self.field)
        found = TARGET_VALUE.match(self.value)
        want = creds.target.get(found.group(1)) if found else self.value
        return want is not None and have == want


@dataclass(frozen=True)
class Not(Check):
    inner: Check

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        return not self.inner(creds, rules)

    def rules(self) -> set[str]:
        return self.inner.rules()


@dataclass(frozen=True)
class All(Check):
    parts: tuple[Check, ...]

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        return all(p(creds, rules) for p in self.parts)

    def rules(self) -> set[str]:
        return set().union(*(p.rules() for p in self.parts))


@dataclass(frozen=True)
class Any_(Check):
    parts: tuple[Check, ...]

    def __call__(self, creds: Credentials, rules: RuleLookup) -> bool:
        return any(p(creds, rules) for p in self.parts)

    def rules(self) -> set[str]:
        return set().union(*(p.rules() for p in self.parts))


def parse(text: str) -> Check:
    """The check a check string means; CheckError says what is wrong with it."""
    tokens = [m.group(1) for m in TOKEN.finditer(text)]
    if "".join(tokens) != re.sub(r"\s+", "", text):
        raise CheckError(f"cannot read {text!r}")
    if not tokens:
        return Always(True)
    parser = _Parser(tokens)
    check = parser.either()
    if parser.pos != len(tokens):
        raise CheckError(f"unexpected {tokens[parser.pos]!r} in {text!r}")
    return check


class _Parser:
    """Recursive descent: either := both ('or' both)*; both := one ('and' one)*."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise CheckError(f"unexpected end of {' '.join(self.tokens)!r}")
        self.pos += 1
        return token

    def either(self) -> Check:
        parts = [self.both()]
        while self.peek() == "or":
            self.take()
            parts.append(self.both())
        return parts[0] if len(parts) == 1 else Any_(tuple(parts))

    def both(self) -> Check:
        parts = [self.one()]
        while self.peek() == "and":
            self.take()
            parts.append(self.one())
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def one(self) -> Check:
        token = self.take()
        if token == "not":
            return Not(self.one())
        if token == "(":
            inner = self.either()
            if self.take() != ")":
                raise CheckError(f"missing ')' in {' '.join(self.tokens)!r}")
            return inner
        if token in ("@", "!"):
            return Always(token == "@")
        kind, sep, value = token.partition(":")
        if not sep or not value:
            raise CheckError(f"{token!r} is not KIND:VALUE, @ or !")
        if kind == "role":
            return Role(value)
        if kind == "rule":
            return RuleRef(value)
        if kind in CREDENTIALS:
            return Match(kind, value)
        known = ", ".join(["role", "rule", *CREDENTIALS])
        raise CheckError(f"unknown check kind {kind!r} in {token!r} (known: {known})")
