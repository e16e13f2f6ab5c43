"""The NATS micro protocol as `nats micro ls|info|stats` reads it from hvmesh's services."""

from __future__ import annotations

import json
import socket
from importlib.metadata import version
from typing import Any

import pytest
from nats.micro.service import ServiceInfo, ServiceStats

from hvmesh.core.protocol import errors
from tests.support import ApiClient, Deployment


async def ask(admin: ApiClient, subject: str) -> dict[str, Any]:
    """One plain request on a $SRV subject, the reply decoded."""
    return json.loads((await admin.nc.request(subject, b"", timeout=5)).data)


async def test_stats_count_requests_and_errors_per_endpoint(
    deployment: Deployment, admin: ApiClient
) -> None:
    await deployment.start_core()
    await admin("flavors.create", {"name": "m1.tiny", "vcpus": 1, "ram_mb": 64})
    for _ in range(3):
        await admin("flavors.list")
    await admin("flavors.get", {"name": "m1.tiny"})
    with pytest.raises(errors.NotFound):
        await admin("flavors.get", {"id": "missing"})

    stats = await ask(admin, "$SRV.STATS.hvmesh-api")
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    assert stats["name"] == "hvmesh-api"
    assert stats["version"] == version("hvmesh")
    by_name = {e["name"]: e for e in stats["endpoints"]}
    listed, got = by_name["flavors-list"], by_name["flavors-get"]
    assert (listed["num_requests"], listed["num_errors"], listed["last_error"]) == (3, 0, "")
    assert (got["num_requests"], got["num_errors"]) == (2, 1)
    assert got["last_error"] == "404:flavor missing not found"
    assert by_name["flavors-create"]["num_requests"] == 1
    assert by_name["flavors-delete"]["num_requests"] == 0
    for ep in (listed, got):
        assert ep["processing_time"] > 0
        assert ep["average_processing_time"] == ep["processing_time"] // ep["num_requests"]
        assert ep["queue_group"] == "hvmesh-api"
    # nats.py's own client-side model reads it too.
    parsed = ServiceStats.from_dict(stats)
    assert {e.name: e.num_requests for e in parsed.endpoints}["flavors-list"] == 3

    # The same instance, asked by its id, reports the same counters.
    same = await ask(admin, f"$SRV.STATS.hvmesh-api.{stats['id']}")
    assert {e["name"]: e for e in same["endpoints"]}["flavors-get"]["num_errors"] == 1


async def test_info_and_ping_list_services_and_endpoints(
    deployment: Deployment, admin: ApiClient
) -> None:
    await deployment.start_core()
    info = await ask(admin, "$SRV.INFO.hvmesh-api")
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["version"] == version("hvmesh")
    assert info["metadata"] == {
        "min_version": "1.0",
        "max_version": "1.1",
        "version_header": "Hvmesh-API-Version",
        "host": socket.gethostname(),
    }
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert endpoints["flavors-get"]["subject"] == "hvmesh.api.flavors.get"
    assert endpoints["servers-create"]["subject"] == "hvmesh.api.servers.create"
    assert all(e["queue_group"] == "hvmesh-api" for e in info["endpoints"])
    assert ServiceInfo.from_dict(info).description == info["description"]

    ping = await ask(admin, f"$SRV.PING.hvmesh-api.{info['id']}")
    assert ping == {
        "type": "io.nats.micro.v1.ping_response",
        "name": "hvmesh-api",
        "id": info["id"],
        "version": version("hvmesh"),
        "metadata": info["metadata"],
    }
    sched = await ask(admin, "$SRV.INFO.hvmesh-scheduler")
    assert sched["version"] == version("hvmesh")
    assert [e["subject"] for e in sched["endpoints"]] == ["hvmesh.sched.select"]

    # $SRV.PING without a name reaches every service (what `nats micro ls` sends).
    inbox = admin.nc.new_inbox()
    sub = await admin.nc.subscribe(inbox, max_msgs=2)
    await admin.nc.publish("$SRV.PING", b"", reply=inbox)
    names = {json.loads((await sub.next_msg(timeout=5)).data)["name"] for _ in range(2)}
    assert names == {"hvmesh-api", "hvmesh-scheduler"}
