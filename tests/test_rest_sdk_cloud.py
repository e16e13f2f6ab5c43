"""openstacksdk's cloud layer against the REST front door: names resolved through the image and network APIs."""

from __future__ import annotations

import asyncio

from tests.rest_support import sdk, start_rest
from tests.support import ApiClient, Deployment, gone, make_flavor_image, wait_server


async def test_create_server_and_delete_server_wait(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    await make_flavor_image(admin)
    await admin("networks.create", {"name": "net1", "cidr": "10.60.0.0/24", "shared": True})
    conn = sdk(rest, cloud)

    # By name: the cloud layer finds the image in the image API, the network in the
    # network API, the flavor in compute, then waits for ACTIVE (and an address).
    server = await asyncio.to_thread(
        lambda: conn.create_server(
            "vm1", image="cirros", flavor="m1.small", network="net1", wait=True, timeout=120
        )
    )
    assert (server.name, server.status) == ("vm1", "ACTIVE")
    assert server.image.id == (await admin("images.get", {"name": "cirros"}))["image"]["id"]
    assert server.private_v4.startswith("10.60.0.")
    found = await asyncio.to_thread(lambda: conn.get_server("vm1"))
    assert found is not None and found.id == server.id
    assert [s.name for s in await asyncio.to_thread(conn.list_servers)] == ["vm1"]

    deleted = await asyncio.to_thread(lambda: conn.delete_server("vm1", wait=True, timeout=120))
    assert deleted is True
    await wait_server(cloud.store, server.id, gone)
    assert await asyncio.to_thread(lambda: conn.get_server("vm1")) is None
