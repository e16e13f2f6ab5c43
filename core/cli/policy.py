"""`hvmesh policy list|check`: the policy rules in force, and what they decide for a user.

Both read the configuration ([policy] policy_file and roles) as the API does, without
connecting to NATS: what they show is what an API started with that configuration enforces.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hvmesh.core import config
from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.errors import CliError

# Imported when first used: `hvmesh --help` does not pay for them.
if TYPE_CHECKING:
    from hvmesh.core.api.policy_rules import defaults, enforcer, roles
    from hvmesh.core.bus import micro
else:
    defaults = lazy.module("hvmesh.core.api.policy_rules.defaults")
    enforcer = lazy.module("hvmesh.core.api.policy_rules.enforcer")
    roles = lazy.module("hvmesh.core.api.policy_rules.roles")
    micro = lazy.module("hvmesh.core.bus.micro")


def load_policy(args: argparse.Namespace) -> Any:
    """The policy an API with this configuration enforces (a bad file: ConfigError)."""
    return enforcer.Policy(config.load(args.config).policy)


def cmd_list(args: argparse.Namespace) -> None:
    policy = load_policy(args)
    rows = [
        {
            "name": name,
            "default": rule.check,
            "effective": policy.text[name],
            "overridden": name in policy.overrides,
            "description": rule.description,
        }
        for name, rule in defaults.DEFAULTS.items()
    ]
    output.emit(rows, args.format, ["name", "default", "effective", "overridden", "description"])


def cmd_check(args: argparse.Namespace) -> None:
    policy = load_policy(args)
    if not args.user:
        raise CliError("policy check: give the user as --user ACCOUNT/USER")
    try:
        account, user = roles.split_user(args.user)
    except ValueError as exc:
        raise CliError(f"--user: {exc}") from None
    if args.rule not in defaults.DEFAULTS:
        raise CliError(f"unknown policy rule {args.rule!r} (`hvmesh policy list` lists them)")
    granted = policy.roles(account, user)
    project = micro.ADMIN_PROJECT if account == micro.INTERNAL_ACCOUNT else account
    caller = micro.Caller(project=project, user=user, is_admin="admin" in granted, roles=granted)
    decision = policy.decide(args.rule, caller, args.project)
    output.emit(
        {
            "rule": args.rule,
            "user": f"{account}/{user}",
            "project": decision.project,
            "roles": list(decision.roles),
            "check": decision.check,
            "result": "allowed" if decision.allowed else "denied",
            "why": why(decision, caller),
        },
        args.format,
    )


def why(decision: Any, caller: Any) -> str:
    """One sentence on the decision: the check string and what the caller brings to it."""
    held = ", ".join(decision.roles) or "no role"
    verb = "allows" if decision.allowed else "does not allow"
    scope = "its own project" if decision.project == caller.project else "another project"
    return f"{decision.check!r} {verb} a caller holding {held} acting on {scope}"


def add_parsers(sub: Any, leaf: Any) -> None:
    """The policy command group."""
    po = sub.add_parser("policy", help="policy rules").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(po, "list", cmd_list, "every policy rule: its default and effective check string")
    p = leaf(
        po,
        "check",
        cmd_check,
        "whether a rule allows a user (--user ACCOUNT/USER, as [policy] roles names them)",
    )
    p.add_argument("rule", help="a rule name (`hvmesh policy list`)")
    p.add_argument("--project", help="the project acted on (default: the user's own)")
