"""The policy rules hvmesh knows, with their default check strings, and which endpoint uses which.

Names follow Nova's vocabulary: `compute:<resource>:<operation>` (networks and ports:
`network:...`), one per API endpoint, `compute:servers:action:<action>` per server action,
and a few that a request's body calls for (listing every project's servers, another
project's quotas, a public image). A handful of base rules (`context_is_admin`,
`project_reader`, `project_member`, ...) are what the others refer to; a policy file may
override any rule.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hvmesh.core.protocol import actions


class RuleDefault(msgspec.Struct, frozen=True):
    """One rule: its name, default check string, and what it guards."""

    name: str
    check: str
    description: str


ADMIN = "rule:admin_api"
READER = "rule:project_reader_or_admin"
MEMBER = "rule:project_member_or_admin"

BASE = [
    RuleDefault("context_is_admin", "role:admin", "The caller is a cloud admin."),
    RuleDefault("admin_api", "rule:context_is_admin", "Admin-only operations."),
    RuleDefault(
        "project_reader",
        "role:reader and project_id:%(project_id)s",
        "A reader (or member, or admin) of the project the operation is on.",
    ),
    RuleDefault(
        "project_member",
        "role:member and project_id:%(project_id)s",
        "A member (or admin) of the project the operation is on.",
    ),
    RuleDefault(
        "project_reader_or_admin",
        "rule:project_reader or rule:context_is_admin",
        "Read operations: the project's readers, and admins.",
    ),
    RuleDefault(
        "project_member_or_admin",
        "rule:project_member or rule:context_is_admin",
        "Operations that change a project's records: its members, and admins.",
    ),
]


def _crud(prefix: str, what: str, create: str, read: str, delete: str) -> list[RuleDefault]:
    return [
        RuleDefault(f"{prefix}:create", create, f"Create {what}."),
        RuleDefault(f"{prefix}:list", read, f"List {what}."),
        RuleDefault(f"{prefix}:show", read, f"Show one of the {what}."),
        RuleDefault(f"{prefix}:delete", delete, f"Delete one of the {what}."),
    ]


def _action_rules() -> list[RuleDefault]:
    out = []
    for name, rule in actions.RULES.items():
        check = ADMIN if rule.admin_only else MEMBER
        out.append(RuleDefault(f"compute:servers:action:{name}", check, f"The {name} action."))
    return out


OPERATIONS = [
    *_crud("compute:flavors", "flavors", ADMIN, READER, ADMIN),
    RuleDefault("compute:flavors:extra_specs:update", ADMIN, "Set or remove flavor extra specs."),
    *_crud("compute:images", "images", MEMBER, READER, MEMBER),
    RuleDefault("compute:images:create:public", ADMIN, "Create a public image."),
    RuleDefault("compute:images:upload", MEMBER, "Upload an image's data."),
    RuleDefault("compute:images:update", MEMBER, "Change an image's name, minimums or properties."),
    RuleDefault("compute:images:update:public", ADMIN, "Make an image public."),
    *_crud("network:networks", "networks", ADMIN, READER, ADMIN),
    *_crud("network:ports", "ports", MEMBER, READER, MEMBER),
    *_crud("compute:keypairs", "the caller's key pairs", MEMBER, READER, MEMBER),
    *_crud("compute:servers", "servers", MEMBER, READER, MEMBER),
    RuleDefault(
        "compute:servers:list:all_projects", ADMIN, "List every project's servers (all_projects)."
    ),
    RuleDefault("compute:servers:list:host", ADMIN, "Filter servers by host."),
    RuleDefault("compute:servers:update", MEMBER, "Rename a server, set or remove metadata."),
    RuleDefault(
        "compute:servers:console", MEMBER, "Get a one-time URL to a server's live console."
    ),
    *_action_rules(),
    RuleDefault("compute:servers:events:list", READER, "List a server's actions (its log)."),
    RuleDefault("compute:servers:events:show", READER, "Show one action of a server's log."),
    *_crud("compute:server_groups", "server groups", MEMBER, READER, MEMBER),
    *_crud("compute:aggregates", "host aggregates", ADMIN, ADMIN, ADMIN),
    RuleDefault("compute:aggregates:add_host", ADMIN, "Add a host to an aggregate."),
    RuleDefault("compute:aggregates:remove_host", ADMIN, "Remove a host from an aggregate."),
    RuleDefault("compute:aggregates:set_metadata", ADMIN, "Set an aggregate's metadata."),
    RuleDefault("compute:hypervisors:list", ADMIN, "List hypervisors."),
    RuleDefault("compute:hypervisors:show", ADMIN, "Show a hypervisor."),
    RuleDefault("compute:migrations:list", ADMIN, "List server moves (os-migrations)."),
    RuleDefault("compute:inventory:query", ADMIN, "Query the inventory index with SQL."),
    RuleDefault("compute:inventory:report", ADMIN, "Read an inventory report."),
    RuleDefault("compute:availability_zones:list", READER, "List availability zones."),
    RuleDefault("compute:services:list", ADMIN, "List compute services."),
    RuleDefault("compute:services:update", ADMIN, "Enable or disable a compute service."),
    RuleDefault("compute:quotas:show", READER, "Show the project's quotas."),
    RuleDefault("compute:quotas:show:other_project", ADMIN, "Show another project's quotas."),
    RuleDefault("compute:quotas:set", ADMIN, "Set a project's quotas."),
    RuleDefault("compute:quotas:delete", ADMIN, "Revert a project's quotas to the defaults."),
    RuleDefault("compute:quotas:defaults", READER, "Show the default quotas."),
    RuleDefault("compute:limits:show", READER, "Show the project's limits and usage."),
    RuleDefault("compute:limits:show:other_project", ADMIN, "Show another project's limits."),
    RuleDefault("compute:usage:show", READER, "Show the project's usage report."),
    RuleDefault("compute:usage:show:other_project", ADMIN, "Show another project's usage."),
    RuleDefault("compute:sites:list", ADMIN, "List sites, their link and lag."),
    RuleDefault("compute:sites:delete", ADMIN, "Forget a site (its view at the core goes)."),
    RuleDefault("compute:sites:join", ADMIN, "Join a site to the core (sent by the site)."),
    RuleDefault("compute:sites:outcome", ADMIN, "Report a site request's failure (by the site)."),
]

DEFAULTS: dict[str, RuleDefault] = {r.name: r for r in [*BASE, *OPERATIONS]}

# Endpoint (micro endpoint name) -> the rule checked before its handler runs.
# servers-action checks compute:servers:action:<action> instead (see rules_for).
ENDPOINTS: dict[str, str] = {
    **{f"flavors-{v}": f"compute:flavors:{r}" for v, r in (
        ("create", "create"), ("list", "list"), ("get", "show"), ("delete", "delete"))},
    **{f"images-{v}": f"compute:images:{r}" for v, r in (
        ("create", "create"), ("list", "list"), ("get", "show"), ("delete", "delete"),
        ("upload", "upload"), ("upload-finish", "upload"), ("update", "update"))},
    **{f"{res}-{v}": f"{prefix}:{r}" for res, prefix in (
        ("networks", "network:networks"), ("ports", "network:ports"),
        ("keypairs", "compute:keypairs"), ("servers", "compute:servers"),
        ("server-groups", "compute:server_groups"), ("aggregates", "compute:aggregates"),
    ) for v, r in (("create", "create"), ("list", "list"), ("get", "show"), ("delete", "delete"))},
    "aggregates-add-host": "compute:aggregates:add_host",
    "aggregates-remove-host": "compute:aggregates:remove_host",
    "aggregates-set-metadata": "compute:aggregates:set_metadata",
    "servers-update": "compute:servers:update",
    "servers-console": "compute:servers:console",
    "flavors-set-extra-specs": "compute:flavors:extra_specs:update",
    "servers-action": "compute:servers:action:*",
    "servers-events-list": "compute:servers:events:list",
    "servers-events-get": "compute:servers:events:show",
    "hypervisors-list": "compute:hypervisors:list",
    "hypervisors-get": "compute:hypervisors:show",
    "migrations-list": "compute:migrations:list",
    "inventory-query": "compute:inventory:query",
    "inventory-report": "compute:inventory:report",
    "availability-zones-list": "compute:availability_zones:list",
    "services-list": "compute:services:list",
    "services-set": "compute:services:update",
    "quotas-show": "compute:quotas:show",
    "quotas-set": "compute:quotas:set",
    "quotas-delete": "compute:quotas:delete",
    "quotas-defaults": "compute:quotas:defaults",
    "limits-show": "compute:limits:show",
    "usage-show": "compute:usage:show",
    "sites-list": "compute:sites:list",
    "sites-delete": "compute:sites:delete",
    "sites-join": "compute:sites:join",
    "sites-outcome": "compute:sites:outcome",
}  # fmt: skip

# Endpoints whose body may name another project: the extra rule that then applies.
OTHER_PROJECT = {
    "quotas-show": "compute:quotas:show:other_project",
    "limits-show": "compute:limits:show:other_project",
    "usage-show": "compute:usage:show:other_project",
}


def rules_for(endpoint: str, body: Any, project: str) -> list[str]:
    """The rules a request on `endpoint` with `body`, from `project`, must pass, in order.

    KeyError when the endpoint has no rule (ApiService refuses to start then).
    """
    rule = ENDPOINTS[endpoint]
    if endpoint == "servers-action":
        return [f"compute:servers:action:{actions.rule_name(body)}"]
    out = [rule]
    if endpoint == "servers-list":
        if getattr(body, "all_projects", False):
            out.append("compute:servers:list:all_projects")
        if getattr(body, "host", None) is not None:
            out.append("compute:servers:list:host")
    elif endpoint == "images-create" and getattr(body, "visibility", None) == "public":
        out.append("compute:images:create:public")
    elif endpoint == "images-update" and getattr(body, "visibility", None) == "public":
        out.append("compute:images:update:public")
    elif endpoint in OTHER_PROJECT and getattr(body, "project", None) not in (None, project):
        out.append(OTHER_PROJECT[endpoint])
    return out
