"""Registers the Ironic driver by path, so openstacksdk is imported only by agents that use it."""

from __future__ import annotations

from typing import Any

from hvmesh.plugins import hookimpl


@hookimpl
def hvmesh_register_drivers(register: Any) -> None:
    register(
        "ironic",
        "hvmesh.agents.ironic.driver:IronicDriver",
        requires=("openstack",),
        extra="ironic",
        description="Bare-metal servers: each node of an OpenStack Ironic, through openstacksdk",
    )
