"""Nova's vm_state, task_state and power_state vocabulary, and the API status derived from them."""

from __future__ import annotations

# vm_state: the stable state a server rests in.
ACTIVE = "active"
BUILDING = "building"
STOPPED = "stopped"
PAUSED = "paused"
SUSPENDED = "suspended"
ERROR = "error"
DELETED = "deleted"

# task_state: what is happening to it right now (None when nothing is).
SCHEDULING = "scheduling"
SPAWNING = "spawning"
DELETING = "deleting"

# power_state: what the hypervisor says, numbered as Nova's.
NOSTATE = 0
RUNNING = 1
POWER_PAUSED = 3
SHUTDOWN = 4
CRASHED = 6
POWER_SUSPENDED = 7

POWER_STATE_NAMES = {
    NOSTATE: "NOSTATE",
    RUNNING: "Running",
    POWER_PAUSED: "Paused",
    SHUTDOWN: "Shutdown",
    CRASHED: "Crashed",
    POWER_SUSPENDED: "Suspended",
}

_STATUS_BY_VM_STATE = {
    ACTIVE: "ACTIVE",
    BUILDING: "BUILD",
    STOPPED: "SHUTOFF",
    PAUSED: "PAUSED",
    SUSPENDED: "SUSPENDED",
    ERROR: "ERROR",
    DELETED: "DELETED",
}


def status(vm_state: str, task_state: str | None) -> str:
    """The API status of a server, as Nova derives it from vm_state and task_state."""
    del task_state  # Nova keeps the vm_state's status while deleting; so do we.
    return _STATUS_BY_VM_STATE.get(vm_state, "UNKNOWN")
