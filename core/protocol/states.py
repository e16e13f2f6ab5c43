"""Nova's vm_state, task_state and power_state vocabulary, and the API status derived from them."""

from __future__ import annotations

# vm_state: the stable state a server rests in.
ACTIVE = "active"
BUILDING = "building"
STOPPED = "stopped"
PAUSED = "paused"
SUSPENDED = "suspended"
RESIZED = "resized"  # moved by a resize or cold migration, waiting for confirm or revert
SHELVED = "shelved"
SHELVED_OFFLOADED = "shelved_offloaded"
ERROR = "error"
DELETED = "deleted"

# task_state: what is happening to it right now (None when nothing is).
SCHEDULING = "scheduling"
SPAWNING = "spawning"
DELETING = "deleting"
REBOOTING = "rebooting"
REBOOTING_HARD = "rebooting_hard"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
PAUSING = "pausing"
UNPAUSING = "unpausing"
SUSPENDING = "suspending"
RESUMING = "resuming"
REBUILDING = "rebuilding"
RESIZE_PREP = "resize_prep"
RESIZE_MIGRATING = "resize_migrating"
RESIZE_FINISH = "resize_finish"
RESIZE_REVERTING = "resize_reverting"
RESIZE_CONFIRMING = "resize_confirming"
MIGRATING = "migrating"  # live migration
SHELVING = "shelving"
SHELVING_OFFLOADING = "shelving_offloading"
UNSHELVING = "unshelving"
ATTACHING_INTERFACE = "interface_attaching"
DETACHING_INTERFACE = "interface_detaching"
IMAGE_SNAPSHOT = "image_snapshot"  # createImage: the driver copies the disk
IMAGE_PENDING_UPLOAD = "image_pending_upload"  # the copy is made, its upload is next
IMAGE_UPLOADING = "image_uploading"  # its bytes go into the image store

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
    RESIZED: "VERIFY_RESIZE",
    SHELVED: "SHELVED",
    SHELVED_OFFLOADED: "SHELVED_OFFLOADED",
    ERROR: "ERROR",
    DELETED: "DELETED",
}

_RESIZING = (RESIZE_PREP, RESIZE_MIGRATING, RESIZE_FINISH)

# Nova's nova/api/openstack/common.py _STATE_MAP: a task can override the vm_state's status.
_STATUS_BY_TASK = {
    ACTIVE: {
        REBOOTING: "REBOOT",
        REBOOTING_HARD: "HARD_REBOOT",
        REBUILDING: "REBUILD",
        MIGRATING: "MIGRATING",
        **dict.fromkeys(_RESIZING, "RESIZE"),
    },
    STOPPED: {
        REBOOTING_HARD: "HARD_REBOOT",
        REBUILDING: "REBUILD",
        **dict.fromkeys(_RESIZING, "RESIZE"),
    },
    PAUSED: {REBOOTING_HARD: "HARD_REBOOT", MIGRATING: "MIGRATING"},
    SUSPENDED: {REBOOTING_HARD: "HARD_REBOOT"},
    RESIZED: {RESIZE_REVERTING: "REVERT_RESIZE"},
    ERROR: {REBUILDING: "REBUILD", REBOOTING_HARD: "HARD_REBOOT"},
}


def status(vm_state: str, task_state: str | None) -> str:
    """The API status of a server, as Nova derives it from vm_state and task_state.

    Deleting keeps the vm_state's status, as in Nova.
    """
    by_task = _STATUS_BY_TASK.get(vm_state, {})
    if task_state in by_task:
        return by_task[task_state]
    return _STATUS_BY_VM_STATE.get(vm_state, "UNKNOWN")
