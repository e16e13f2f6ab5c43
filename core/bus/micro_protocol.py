"""The NATS micro-services protocol hvmesh's services speak: the $SRV subjects, and the PING, INFO and STATS replies."""

from __future__ import annotations

import re
from typing import Any

import msgspec

PREFIX = "$SRV"
VERBS = ("PING", "INFO", "STATS")
PING_RESPONSE = "io.nats.micro.v1.ping_response"
INFO_RESPONSE = "io.nats.micro.v1.info_response"
STATS_RESPONSE = "io.nats.micro.v1.stats_response"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
SEMVER_PATTERN = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class EndpointInfo(msgspec.Struct):
    """One endpoint as $SRV.INFO describes it."""

    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str] = {}


class EndpointStats(msgspec.Struct):
    """One endpoint's counters as $SRV.STATS reports them (times in nanoseconds)."""

    name: str
    subject: str
    queue_group: str
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0
    average_processing_time: int = 0
    data: Any = None


class PingResponse(msgspec.Struct):
    """The io.nats.micro.v1.ping_response a service answers $SRV.PING with."""

    type: str
    name: str
    id: str
    version: str
    metadata: dict[str, str]


class InfoResponse(msgspec.Struct):
    """The io.nats.micro.v1.info_response a service answers $SRV.INFO with."""

    type: str
    name: str
    id: str
    version: str
    metadata: dict[str, str]
    description: str
    endpoints: list[EndpointInfo]


class StatsResponse(msgspec.Struct):
    """The io.nats.micro.v1.stats_response a service answers $SRV.STATS with."""

    type: str
    name: str
    id: str
    version: str
    metadata: dict[str, str]
    started: str
    endpoints: list[EndpointStats]


def control_subjects(verb: str, name: str, id_: str) -> list[str]:
    """The three subjects a service answers `verb` on: all services, its name, itself."""
    return [f"{PREFIX}.{verb}", f"{PREFIX}.{verb}.{name}", f"{PREFIX}.{verb}.{name}.{id_}"]
