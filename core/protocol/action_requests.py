"""The bodies of servers.action: one tagged Struct per server action."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from hvmesh.core.protocol.base import Name, PosInt, Request
from hvmesh.core.protocol.limits import Metadata
from hvmesh.core.protocol.requests import Address


class ActionRequest(Request, tag_field="action", kw_only=True):
    """Base of every server action body: {"id": ..., "action": <name>, ...}."""

    id: Name


class Reboot(ActionRequest, tag="reboot"):
    type: Literal["SOFT", "HARD"] = "SOFT"


class Stop(ActionRequest, tag="stop"):
    pass


class Start(ActionRequest, tag="start"):
    pass


class Pause(ActionRequest, tag="pause"):
    pass


class Unpause(ActionRequest, tag="unpause"):
    pass


class Suspend(ActionRequest, tag="suspend"):
    pass


class Resume(ActionRequest, tag="resume"):
    pass


class Rebuild(ActionRequest, tag="rebuild"):
    image: Name  # id or name


class Resize(ActionRequest, tag="resize"):
    flavor: Name  # id or name


class ConfirmResize(ActionRequest, tag="confirm-resize"):
    pass


class RevertResize(ActionRequest, tag="revert-resize"):
    pass


class Migrate(ActionRequest, tag="migrate"):
    host: Name | None = None  # admin: the target (still checked by the filters)


class LiveMigrate(ActionRequest, tag="live-migrate"):
    host: Name | None = None


class Shelve(ActionRequest, tag="shelve"):
    pass


class ShelveOffload(ActionRequest, tag="shelve-offload"):
    pass


class Unshelve(ActionRequest, tag="unshelve"):
    pass


class Evacuate(ActionRequest, tag="evacuate"):
    host: Name | None = None
    stop: bool = False  # the server ends stopped on its new host (Nova's from 2.95)


class Lock(ActionRequest, tag="lock"):
    reason: Annotated[str, Meta(max_length=255)] | None = None


class Unlock(ActionRequest, tag="unlock"):
    pass


class ConsoleLog(ActionRequest, tag="console-log"):
    length: PosInt | None = None  # the last N lines; all when absent


class AttachInterface(ActionRequest, tag="attach-interface"):
    """Add an interface: a new port on `network`, or the existing free `port`."""

    network: Name | None = None
    port: Name | None = None
    fixed_ip: Address | None = None


class DetachInterface(ActionRequest, tag="detach-interface"):
    port: Name


class ResetState(ActionRequest, tag="reset-state"):
    state: Literal["active", "error"] = "error"


class CreateImage(ActionRequest, tag="create-image"):
    """Nova's createImage: a snapshot of the server's disk as a new image named `name`;
    `metadata` becomes image properties. `image_id` is chosen by the API, never sent."""

    name: Name
    metadata: Metadata = {}
    image_id: Name | None = None


ServerAction = (
    Reboot
    | Stop
    | Start
    | Pause
    | Unpause
    | Suspend
    | Resume
    | Rebuild
    | Resize
    | ConfirmResize
    | RevertResize
    | Migrate
    | LiveMigrate
    | Shelve
    | ShelveOffload
    | Unshelve
    | Evacuate
    | Lock
    | Unlock
    | ConsoleLog
    | AttachInterface
    | DetachInterface
    | ResetState
    | CreateImage
)


def action_name(action: ActionRequest) -> str:
    """The action's name as the API and the action log spell it ("reboot", "confirm-resize")."""
    return str(type(action).__struct_config__.tag)
