"""The effective policy: the default rules, a policy file's overrides, and checking requests.

`Policy.guard` is what the API's micro service calls before every handler: it finds the
endpoint's rules (defaults.rules_for) and refuses with a 403 naming the first rule that
does not allow the request. Records of other projects are never told apart from missing
ones: that is the lookups' 404, after the rule allowed the operation itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from hvmesh.core import log
from hvmesh.core.api.policy_rules import checks, defaults
from hvmesh.core.api.policy_rules.roles import Roles
from hvmesh.core.bus.micro import Caller
from hvmesh.core.config import ConfigError
from hvmesh.core.config_policy import PolicySection
from hvmesh.core.protocol import errors

LOG = log.get_logger(__name__)


class Decision(msgspec.Struct, frozen=True):
    """Whether a rule allows a caller, and why."""

    rule: str
    allowed: bool
    check: str
    roles: tuple[str, ...]
    project: str


class Policy:
    """The rules in force, each parsed once, and the users' roles."""

    def __init__(self, section: PolicySection) -> None:
        self.roles = Roles(section)
        self.overrides = load_file(section.policy_file) if section.policy_file else {}
        self.source = section.policy_file
        self.text = {name: r.check for name, r in defaults.DEFAULTS.items()}
        self.text.update(self.overrides)
        self.parsed: dict[str, checks.Check] = {}
        for name, text in self.text.items():
            try:
                self.parsed[name] = checks.parse(text)
            except checks.CheckError as exc:
                raise ConfigError(f"policy rule {name!r}: {exc}") from None
        self._check_references()

    def _check_references(self) -> None:
        """Every `rule:NAME` names a rule, and no rule refers back to itself."""
        for name, check in self.parsed.items():
            for ref in check.rules():
                if ref not in self.parsed:
                    raise ConfigError(f"policy rule {name!r} refers to unknown rule {ref!r}")
        state: dict[str, int] = {}  # 1: being visited, 2: done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ConfigError(
                    f"policy rules refer to each other in a loop: {' -> '.join(path)}"
                )
            state[name] = 1
            for ref in sorted(self.parsed[name].rules()):
                visit(ref, [*path, ref])
            state[name] = 2

        for name in sorted(self.parsed):
            visit(name, [name])

    def require(self, endpoints: Iterable[str]) -> None:
        """ConfigError naming the endpoints no rule guards (an API that would not start)."""
        missing = sorted(e for e in endpoints if e not in defaults.ENDPOINTS)
        if missing:
            raise ConfigError(f"endpoints without a policy rule: {', '.join(missing)}")

    def _rule(self, name: str, creds: checks.Credentials) -> bool:
        return self.parsed[name](creds, self._rule)

    def decide(self, rule: str, caller: Caller, project: str | None = None) -> Decision:
        """Whether `rule` allows `caller` on `project` (default: the caller's own)."""
        if rule not in self.parsed:
            raise errors.BadRequest(f"unknown policy rule {rule!r}")
        roles = caller.roles or (("admin", "member", "reader") if caller.is_admin else ())
        creds = checks.Credentials(
            project_id=caller.project,
            user_id=caller.user,
            roles=frozenset(roles),
            target={"project_id": project or caller.project, "user_id": caller.user},
        )
        return Decision(
            rule=rule,
            allowed=self._rule(rule, creds),
            check=self.text[rule],
            roles=tuple(roles),
            project=project or caller.project,
        )

    def authorize(self, rule: str, caller: Caller, project: str | None = None) -> None:
        """403 naming the rule when it does not allow `caller`."""
        decision = self.decide(rule, caller, project)
        if not decision.allowed:
            LOG.info("policy.denied", rule=rule, project=caller.project, user=caller.user)
            roles = ", ".join(decision.roles) or "none"
            raise errors.Forbidden(
                f"policy does not allow {rule} for {caller.project}/{caller.user} (roles: {roles})"
            )

    def guard(self, endpoint: str, caller: Caller, body: Any) -> None:
        """Refuse a request on `endpoint` that one of its rules does not allow."""
        for rule in defaults.rules_for(endpoint, body, caller.project):
            self.authorize(rule, caller)


def load_file(path: str) -> dict[str, str]:
    """A policy file's rules (YAML or JSON: name -> check string); ConfigError says why not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"[policy] policy_file: cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"[policy] policy_file: {path} is not YAML or JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"[policy] policy_file: {path} must map rule names to check strings")
    out: dict[str, str] = {}
    for name, check in data.items():
        if name not in defaults.DEFAULTS:
            raise ConfigError(f"[policy] policy_file: {path}: unknown rule {name!r}")
        if not isinstance(check, str):
            raise ConfigError(
                f"[policy] policy_file: {path}: rule {name!r}: the check must be a string"
            )
        out[str(name)] = check
    return out
