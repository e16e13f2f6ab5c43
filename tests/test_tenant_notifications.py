"""Tenants receive their own project's notifications, and nothing of other projects.

Notifications go out on hvmesh.notify.<project>.<event_type>; the shipped nats.conf lets
the DEMO account import only hvmesh.notify.DEMO.>, seen there as hvmesh.notify.>, while
the HVMESH account (and its stream HVMESH_NOTIFICATIONS) keeps every project's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hvmesh.core.bus import notify
from hvmesh.core.protocol import subjects
from tests.support import ApiClient, Deployment, boot, make_flavor_image

TIMEOUT = 30.0


class Inbox:
    """Notifications received on one connection, with a wait for a particular one."""

    def __init__(self) -> None:
        self.got: list[tuple[str, notify.Notification]] = []
        self.changed = asyncio.Condition()

    async def on_msg(self, msg: Any) -> None:
        async with self.changed:
            self.got.append((msg.subject, notify.decode(msg.data)))
            self.changed.notify_all()

    async def wait_for(self, server_id: str, event_type: str) -> None:
        def seen() -> bool:
            return any(
                n.payload.id == server_id and n.event_type == event_type for _, n in self.got
            )

        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(seen), TIMEOUT)


@asynccontextmanager
async def listening(nc: Any, subject: str = "hvmesh.notify.>") -> AsyncIterator[Inbox]:
    inbox = Inbox()
    sub = await nc.subscribe(subject, cb=inbox.on_msg)
    await nc.flush()
    try:
        yield inbox
    finally:
        await sub.unsubscribe()


async def test_a_tenant_receives_its_own_notifications_only(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    async with listening(demo.nc) as tenant, listening(admin.nc) as operators:
        # Another project's server boots first, and its notifications are all out ...
        theirs = await boot(cloud, admin, "admins-vm")
        await operators.wait_for(theirs.id, "instance.create.end")
        # ... before the tenant's; the services publish both in order on one connection,
        # so a leak of the first would reach the tenant before its own.
        mine = await boot(cloud, demo, "demos-vm")
        await tenant.wait_for(mine.id, "instance.create.end")
        await operators.wait_for(mine.id, "instance.create.end")

    assert tenant.got, "the tenant received nothing"
    assert {n.payload.project for _, n in tenant.got} == {"DEMO"}
    assert {n.payload.id for _, n in tenant.got} == {mine.id}
    # The tenant sees hvmesh.notify.<event_type>: its project is implied by its account.
    for subject, note in tenant.got:
        assert subject == f"hvmesh.notify.{note.event_type}"
    # The operators see every project's, the project in the subject.
    assert {n.payload.project for _, n in operators.got} == {"admin", "DEMO"}
    for subject, note in operators.got:
        assert subject == f"hvmesh.notify.{note.payload.project}.{note.event_type}"


async def test_two_tenants_each_receive_their_own(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    alt = ApiClient(await cloud.connect("alt"))
    await make_flavor_image(admin)
    async with listening(demo.nc) as demos, listening(alt.nc) as alts:
        alt_first = await boot(cloud, alt, "alt-1")
        await alts.wait_for(alt_first.id, "instance.create.end")
        demo_vm = await boot(cloud, demo, "demo-1")
        await demos.wait_for(demo_vm.id, "instance.create.end")
        # One more of ALT's after DEMO's: a leak of DEMO's would reach ALT before it.
        alt_last = await boot(cloud, alt, "alt-2")
        await alts.wait_for(alt_last.id, "instance.create.end")
    assert {n.payload.id for _, n in demos.got} == {demo_vm.id}
    assert {n.payload.id for _, n in alts.got} == {alt_first.id, alt_last.id}
    assert {n.payload.project for _, n in alts.got} == {"ALT"}


async def test_a_tenant_cannot_subscribe_to_another_projects_subjects(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    """Whatever the tenant subscribes to, only its import delivers, and only its own."""
    await make_flavor_image(admin)
    async with (
        listening(demo.nc, "hvmesh.notify.admin.>") as named,
        listening(demo.nc, ">") as everything,
    ):
        theirs = await boot(cloud, admin, "admins-vm")
        mine = await boot(cloud, demo, "demos-vm")
        await everything.wait_for(mine.id, "instance.create.end")
    assert named.got == []
    assert {n.payload.id for s, n in everything.got if s.startswith("hvmesh.notify.")} == {mine.id}
    assert theirs.id not in {n.payload.id for _, n in everything.got}


async def test_the_stream_keeps_every_projects_notifications(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    async with listening(admin.nc) as operators:
        theirs = await boot(cloud, admin, "admins-vm")
        mine = await boot(cloud, demo, "demos-vm")
        await operators.wait_for(mine.id, "instance.create.end")
        await operators.wait_for(theirs.id, "instance.create.end")
    js = admin.nc.jetstream()
    info = await js.stream_info(subjects.NOTIFY_STREAM, subjects_filter=subjects.NOTIFY_ALL)
    kept = set(info.state.subjects or {})
    assert "hvmesh.notify.DEMO.instance.create.end" in kept
    assert "hvmesh.notify.admin.instance.create.end" in kept
    assert notify.subject("odd.project name", "instance.update") == (
        "hvmesh.notify.odd_project_name.instance.update"
    )
