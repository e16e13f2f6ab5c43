"""The server state machine: which action is allowed from which state, and what it sets.

One table, read by the API before it accepts an action (a refusal is a 409 naming the
state, and nothing changes) and by the conductor, which only carries on an action whose
task_state and request id the server still shows. The allowed states are Nova's
(`check_instance_state` on each compute API method).

Beside it, what a host's driver must be able to do: ACTION_CAPABILITIES names the
driver capability an action needs, and CAPABILITY_TRAITS the host trait each capability
becomes (Nova's CAPABILITY_TRAITS_MAP, with os-traits names). The API refuses an action
whose capability the server's host lacks with a 409 naming both, before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvmesh.core.protocol import errors
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.action_requests import ActionRequest, Reboot, action_name
from hvmesh.core.protocol.records import Host, Server

NO_TASK: frozenset[str | None] = frozenset({None})
ANY_TASK: frozenset[str | None] = frozenset()  # empty: every task_state allowed


@dataclass(frozen=True)
class Rule:
    vm_states: frozenset[str]  # empty: every vm_state
    task_state: str | None  # set while the action runs; None: it is done at once
    task_states: frozenset[str | None] = NO_TASK
    admin_only: bool = False  # the default of its policy rule: admins only
    needs_host: bool = True


def _r(
    vm: tuple[str, ...],
    task: str | None,
    *,
    task_states: frozenset[str | None] = NO_TASK,
    admin_only: bool = False,
    needs_host: bool = True,
) -> Rule:
    return Rule(
        vm_states=frozenset(vm),
        task_state=task,
        task_states=task_states,
        admin_only=admin_only,
        needs_host=needs_host,
    )


_ALL_WITH_HOST = (S.ACTIVE, S.STOPPED, S.PAUSED, S.SUSPENDED, S.RESIZED, S.ERROR, S.SHELVED)

RULES: dict[str, Rule] = {
    "reboot": _r((S.ACTIVE,), S.REBOOTING),
    "reboot-hard": _r(
        (S.ACTIVE, S.STOPPED, S.PAUSED, S.SUSPENDED, S.ERROR),
        S.REBOOTING_HARD,
        task_states=frozenset({None, S.REBOOTING}),
    ),
    "stop": _r((S.ACTIVE, S.ERROR), S.POWERING_OFF),
    "start": _r((S.STOPPED,), S.POWERING_ON),
    "pause": _r((S.ACTIVE,), S.PAUSING),
    "unpause": _r((S.PAUSED,), S.UNPAUSING),
    "suspend": _r((S.ACTIVE,), S.SUSPENDING),
    "resume": _r((S.SUSPENDED,), S.RESUMING),
    "rebuild": _r((S.ACTIVE, S.STOPPED, S.ERROR), S.REBUILDING),
    "resize": _r((S.ACTIVE, S.STOPPED), S.RESIZE_PREP),
    "confirm-resize": _r((S.RESIZED,), S.RESIZE_CONFIRMING),
    "revert-resize": _r((S.RESIZED,), S.RESIZE_REVERTING),
    "migrate": _r((S.ACTIVE, S.STOPPED), S.RESIZE_PREP, admin_only=True),
    "live-migrate": _r((S.ACTIVE, S.PAUSED), S.MIGRATING, admin_only=True),
    "shelve": _r((S.ACTIVE, S.STOPPED, S.PAUSED, S.SUSPENDED), S.SHELVING),
    "shelve-offload": _r((S.SHELVED,), S.SHELVING_OFFLOADING),
    "unshelve": _r((S.SHELVED, S.SHELVED_OFFLOADED), S.UNSHELVING, needs_host=False),
    "evacuate": _r((S.ACTIVE, S.STOPPED, S.ERROR), S.REBUILDING, admin_only=True),
    "attach-interface": _r((S.ACTIVE, S.PAUSED, S.STOPPED), S.ATTACHING_INTERFACE),
    "detach-interface": _r((S.ACTIVE, S.PAUSED, S.STOPPED), S.DETACHING_INTERFACE),
    "lock": _r((), None, task_states=ANY_TASK, needs_host=False),
    "unlock": _r((), None, task_states=ANY_TASK, needs_host=False),
    "console-log": _r(_ALL_WITH_HOST, None, task_states=ANY_TASK),
    "reset-state": _r((), None, task_states=ANY_TASK, admin_only=True, needs_host=False),
    "create-image": _r((S.ACTIVE, S.STOPPED, S.PAUSED, S.SUSPENDED), S.IMAGE_SNAPSHOT),
}


# Driver capability -> the host trait it becomes when the driver declares it True. Nova's
# trait where os-traits has one; hvmesh's own capabilities as CUSTOM_HVMESH_<CAPABILITY>.
CAPABILITY_TRAITS: dict[str, str] = {
    "supports_attach_interface": "COMPUTE_NET_ATTACH_INTERFACE",
    "supports_multiattach": "COMPUTE_VOLUME_MULTI_ATTACH",
    "supports_migrate_to_same_host": "COMPUTE_SAME_HOST_COLD_MIGRATE",
    "supports_image_type_aki": "COMPUTE_IMAGE_TYPE_AKI",
    "supports_image_type_ami": "COMPUTE_IMAGE_TYPE_AMI",
    "supports_image_type_ari": "COMPUTE_IMAGE_TYPE_ARI",
    "supports_image_type_iso": "COMPUTE_IMAGE_TYPE_ISO",
    "supports_image_type_qcow2": "COMPUTE_IMAGE_TYPE_QCOW2",
    "supports_image_type_raw": "COMPUTE_IMAGE_TYPE_RAW",
    "supports_image_type_vhd": "COMPUTE_IMAGE_TYPE_VHD",
    "supports_image_type_vhdx": "COMPUTE_IMAGE_TYPE_VHDX",
    "supports_image_type_vmdk": "COMPUTE_IMAGE_TYPE_VMDK",
    "supports_evacuate": "CUSTOM_HVMESH_SUPPORTS_EVACUATE",
    "supports_live_migration": "CUSTOM_HVMESH_SUPPORTS_LIVE_MIGRATION",
    "supports_pci_passthrough": "CUSTOM_HVMESH_SUPPORTS_PCI_PASSTHROUGH",
    "supports_snapshot": "CUSTOM_HVMESH_SUPPORTS_SNAPSHOT",
    "supports_pause": "CUSTOM_HVMESH_SUPPORTS_PAUSE",
    "supports_suspend": "CUSTOM_HVMESH_SUPPORTS_SUSPEND",
    "supports_resize": "CUSTOM_HVMESH_SUPPORTS_RESIZE",
    "supports_serial_console": "CUSTOM_HVMESH_SUPPORTS_SERIAL_CONSOLE",
    "supports_vnc_console": "CUSTOM_HVMESH_SUPPORTS_VNC_CONSOLE",
}

# Console protocol (servers.console) -> the driver capability the server's host needs.
CONSOLE_CAPABILITIES: dict[str, str] = {
    "serial": "supports_serial_console",
    "vnc": "supports_vnc_console",
}

# Action (a RULES name) -> the driver capability the server's host needs for it. Nova
# checks supports_attach_interface and supports_evacuate; a detach is the same hot-plug.
# Every Nova driver snapshots, pauses, suspends and resizes but Ironic's (and vSphere
# has no pause), so Nova has no capability for those; hvmesh's drivers declare them.
ACTION_CAPABILITIES: dict[str, str] = {
    "live-migrate": "supports_live_migration",
    "evacuate": "supports_evacuate",
    "attach-interface": "supports_attach_interface",
    "detach-interface": "supports_attach_interface",
    "create-image": "supports_snapshot",
    "pause": "supports_pause",
    "unpause": "supports_pause",
    "suspend": "supports_suspend",
    "resume": "supports_suspend",
    "resize": "supports_resize",
    "migrate": "supports_resize",
}


def capability_trait(capability: str) -> str:
    """The host trait a driver capability becomes (CUSTOM_HVMESH_<NAME> when unlisted)."""
    known = CAPABILITY_TRAITS.get(capability)
    if known is not None:
        return known
    name = "".join(c if c.isascii() and c.isalnum() else "_" for c in capability.upper())
    return f"CUSTOM_HVMESH_{name}"


def check_capable(name: str, host: Host) -> None:
    """409 when action `name` needs a driver capability that `host` lacks (its traits)."""
    capability = ACTION_CAPABILITIES.get(name)
    if capability is None or capability_trait(capability) in host.traits:
        return
    raise errors.Conflict(
        f"host {host.name} (driver {host.driver}) cannot {name}: "
        f"it lacks the capability {capability}"
    )


def rule_name(action: ActionRequest) -> str:
    """The rule an action request follows (a hard reboot has its own)."""
    if isinstance(action, Reboot) and action.type == "HARD":
        return "reboot-hard"
    return action_name(action)


def allowed(rule: Rule, s: Server) -> bool:
    return (not rule.vm_states or s.vm_state in rule.vm_states) and (
        not rule.task_states or s.task_state in rule.task_states
    )


def check(name: str, s: Server, is_admin: bool, user: str) -> Rule:
    """The rule for action `name` on `s`, or the error that refuses it (nothing changes).

    A locked server takes actions only from an admin or, when its owner locked it,
    from the owner (Nova's lock semantics); lock and unlock follow their own check.
    """
    rule = RULES[name]  # who may ask for it is the API's policy (compute:servers:action:*)
    if s.task_state == S.DELETING or s.vm_state == S.DELETED:
        raise errors.Conflict(f"Cannot '{name}' instance {s.id} while it is being deleted")
    if name not in ("lock", "console-log") and s.locked_by is not None:
        check_unlocked(s, is_admin, user)
    if rule.vm_states and s.vm_state not in rule.vm_states:
        raise errors.Conflict(
            f"Cannot '{name}' instance {s.id} while it is in vm_state {s.vm_state}"
        )
    if rule.task_states and s.task_state not in rule.task_states:
        raise errors.Conflict(
            f"Cannot '{name}' instance {s.id} while it is in task_state {s.task_state}"
        )
    if rule.needs_host and not s.host:
        raise errors.Conflict(f"Cannot '{name}' instance {s.id}: it is on no host")
    return rule


def check_unlocked(s: Server, is_admin: bool, user: str) -> None:
    """409 when a locked server may not be acted on by this caller."""
    if s.locked_by is None or is_admin:
        return
    if s.locked_by == "owner" and user == s.locker:
        return
    raise errors.Conflict(f"Instance {s.id} is locked")
