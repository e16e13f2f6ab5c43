"""`hvmesh plugins list` and `hvmesh driver list`: what the installed plugins registered, and what failed."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core import config
from hvmesh.core.cli import lazy, output

# Imported when first used: loading plugins pulls in numpy and every plugin's modules,
# which the rest of the CLI's start-up does not need.
if TYPE_CHECKING:
    from hvmesh.plugins import manager
else:
    manager = lazy.module("hvmesh.plugins.manager")

PLUGIN_COLUMNS = ["name", "package", "version", "status", "registered", "error"]
DRIVER_COLUMNS = ["name", "plugin", "available", "reason", "description"]


def _registry(args: argparse.Namespace) -> Any:
    """A `manager.Registry` (typed Any: mypy cannot see through a lazy module)."""
    cfg = config.load(args.config)
    # Listing never stops at a failed plugin: showing the failure is its job.
    return manager.load(disabled=cfg.plugins.disabled)


def _registered_text(registered: dict[str, list[str]]) -> str:
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in registered.items())


def cmd_plugins_list(args: argparse.Namespace) -> None:
    reg = _registry(args)
    rows: list[dict[str, Any]] = [msgspec.to_builtins(p) for p in reg.plugins]
    if output.for_people(args.format):
        rows = [{**r, "registered": _registered_text(r["registered"])} for r in rows]
    output.emit(rows, args.format, PLUGIN_COLUMNS)


def cmd_driver_list(args: argparse.Namespace) -> None:
    reg = _registry(args)
    rows = []
    for name in sorted(reg.drivers):
        entry = reg.drivers[name]
        reason = entry.unavailable_reason()
        rows.append(
            {
                "name": name,
                "plugin": entry.plugin,
                "available": reason is None,
                "reason": reason or "",
                "description": entry.description,
            }
        )
    output.emit(rows, args.format, DRIVER_COLUMNS)


def add_parsers(sub: Any, leaf: Any) -> None:
    """The plugins and driver command groups."""
    pl = sub.add_parser("plugins", help="installed plugins").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(
        pl,
        "list",
        cmd_plugins_list,
        "every plugin: its package, what it registered, or why it failed to load",
    )
    dr = sub.add_parser("driver", help="hypervisor drivers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(dr, "list", cmd_driver_list, "registered drivers and whether each can run here")
