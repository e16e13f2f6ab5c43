"""Nova's GET /servers query, by microversion, as hvmesh.api.servers.list's body."""

from __future__ import annotations

from typing import Any

from hvmesh.core.rest.calls import Compute
from hvmesh.core.rest.errors import RestError

STATUSES = frozenset(
    [
        "ACTIVE",
        "BUILD",
        "SHUTOFF",
        "PAUSED",
        "SUSPENDED",
        "VERIFY_RESIZE",
        "SHELVED",
        "SHELVED_OFFLOADED",
        "ERROR",
        "DELETED",
        "REBOOT",
        "HARD_REBOOT",
        "REBUILD",
        "MIGRATING",
        "RESIZE",
        "REVERT_RESIZE",
        "UNKNOWN",
    ]
)
# Nova's query parameter -> hvmesh.api.servers.list's field (values passed as they are).
FILTERS = {
    "name": "name",
    "host": "host",
    "flavor": "flavor",
    "image": "image",
    "changes-since": "changes_since",
    "sort_dir": "sort_dir",
    "marker": "marker",
}
# Taken and handled apart from FILTERS.
HANDLED = frozenset(
    [
        "limit",
        "status",
        "all_tenants",
        "project_id",
        "tenant_id",
        "sort_key",
        "deleted",
        "soft_deleted",
    ]
)
# Nova's other filters (its 2.75 schema, with the version each appeared in): hvmesh's
# servers.list cannot apply them, so they are a 400 rather than ignored.
UNSUPPORTED = {
    **dict.fromkeys(
        [
            "user_id",
            "launch_index",
            "image_ref",
            "kernel_id",
            "ramdisk_id",
            "hostname",
            "key_name",
            "power_state",
            "vm_state",
            "task_state",
            "node",
            "reservation_id",
            "launched_at",
            "terminated_at",
            "availability_zone",
            "display_name",
            "description",
            "display_description",
            "locked_by",
            "uuid",
            "root_device_name",
            "config_drive",
            "access_ip_v4",
            "access_ip_v6",
            "auto_disk_config",
            "progress",
            "ip",
            "ip6",
            "created_at",
        ],
        (2, 1),
    ),
    **dict.fromkeys(["tags", "tags-any", "not-tags", "not-tags-any"], (2, 26)),
    "changes-before": (2, 66),
    "locked": (2, 73),
}
# What a non-admin may filter on; Nova drops the others silently, and from 2.83 takes
# TENANT_FILTERS_2_83 too.
TENANT_FILTERS = frozenset(
    [
        "reservation_id",
        "name",
        "status",
        "image",
        "flavor",
        "ip",
        "ip6",
        "changes-since",
        "changes-before",
        "tags",
        "tags-any",
        "not-tags",
        "not-tags-any",
        "locked",
    ]
)
TENANT_FILTERS_2_83 = frozenset(
    [
        "availability_zone",
        "config_drive",
        "key_name",
        "created_at",
        "launched_at",
        "terminated_at",
        "power_state",
        "task_state",
        "vm_state",
        "progress",
        "user_id",
    ]
)
PAGING = frozenset(["limit", "marker", "sort_key", "sort_dir", "all_tenants"])
FALSE = ("0", "false", "no", "off")


def _dropped(c: Compute, key: str) -> bool:
    """Whether Nova silently drops a non-admin's filter `key` at this version."""
    if c.is_admin or key in PAGING or key in TENANT_FILTERS:
        return False
    if c.at_least(2, 83) and key in TENANT_FILTERS_2_83:
        return False
    return key in UNSUPPORTED or key in ("deleted", "soft_deleted")


def _check(c: Compute, query: Any) -> None:
    """400 for a filter hvmesh cannot apply; an unknown parameter is ignored before 2.75
    and a 400 from 2.75, as Nova."""
    for key in query:
        if key in FILTERS or key in HANDLED:
            continue
        since = UNSUPPORTED.get(key)
        if since is not None and c.version >= since:
            if not _dropped(c, key):
                raise RestError(400, f"{key}: hvmesh cannot filter servers on it")
        elif c.at_least(2, 75):
            raise RestError(400, f"{key}: not a query parameter of GET /servers")


def list_request(c: Compute) -> dict[str, Any]:
    """hvmesh.api.servers.list's body from Nova's GET /servers query."""
    q = c.request.query
    _check(c, q)
    body: dict[str, Any] = {FILTERS[k]: v for k, v in q.items() if k in FILTERS}
    limit = c.int_query("limit")
    if limit is not None:
        body["limit"] = limit
    if q.get("sort_key", "created_at") != "created_at":
        raise RestError(400, "sort_key: hvmesh sorts servers by created_at only")
    for key in ("deleted", "soft_deleted"):
        if q.get(key, "false").lower() not in FALSE and not _dropped(c, key):
            raise RestError(400, f"{key}: hvmesh keeps no deleted servers")
    if "status" in q:
        status = q["status"].upper()
        if status not in STATUSES:
            raise RestError(400, f"status: {q['status']!r} is not a server status")
        body["status"] = status
    if "all_tenants" in q and q["all_tenants"].lower() not in FALSE:
        body["all_projects"] = True
    project = q.get("project_id") or q.get("tenant_id")
    if project:
        if body.get("all_projects"):
            body["project"] = project
        elif project != c.token.project:
            raise RestError(403, "project_id: another project's servers need all_tenants")
    return body
