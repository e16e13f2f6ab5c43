"""The streams of sites: the core's queue of creates for sites, a site's inbox, the core's view of a site.

A site's leaf-node link carries none of either side's own subjects (subjects.SITE_LINK_DENY);
these streams cross it through JetStream's own sourcing and mirroring, addressed by
domain ($JS.<domain>.API), which catches up by itself after a cut.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from hvmesh.core.protocol import subjects

REQUESTS_KEPT = 7 * 24 * 3600.0  # seconds the core keeps a site's requests (and so their ids)


def requests_stream(replicas: int) -> StreamConfig:
    """At the core: every create handed to a site, on hvmesh.site_requests.<site>."""
    return StreamConfig(
        name=subjects.SITE_REQUESTS_STREAM,
        description="hvmesh creates the core accepted for sites",
        subjects=[subjects.SITE_REQUESTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=REQUESTS_KEPT,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
        num_replicas=replicas,
    )


def inbox_stream(site: str, replicas: int) -> StreamConfig:
    """At a site: its requests, sourced from the core's queue across the link."""
    return StreamConfig(
        name=subjects.SITE_INBOX_STREAM,
        description=f"hvmesh creates for site {site}, from the core",
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        sources=[
            StreamSource(
                name=subjects.SITE_REQUESTS_STREAM,
                filter_subject=subjects.site_requests(site),
                external=ExternalStream(api=subjects.js_api(subjects.CORE_DOMAIN)),
            )
        ],
    )


def view_stream(site: str, replicas: int) -> StreamConfig:
    """At the core: a mirror of one site's servers bucket, last record per server."""
    return StreamConfig(
        name=subjects.site_view(site),
        description=f"hvmesh view of site {site}'s servers",
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        num_replicas=replicas,
        mirror=StreamSource(
            name=subjects.kv_stream(subjects.SERVERS_BUCKET),
            external=ExternalStream(api=subjects.js_api(site)),
        ),
    )


async def ensure(js: JetStreamContext, cfg: StreamConfig) -> None:
    """Make the stream unless it exists (its configuration is then left as it is)."""
    try:
        await js.stream_info(cfg.name or "")
    except NotFoundError:
        await js.add_stream(cfg)


async def drop_view(js: JetStreamContext, site: str) -> None:
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(subjects.site_view(site))


def view_bucket(js: JetStreamContext, site: str) -> KeyValue:
    """The view read as a KV bucket: its records keep the site's subjects ($KV.servers.<id>)."""
    return KeyValue(
        name=subjects.site_view(site),
        stream=subjects.site_view(site),
        pre=f"$KV.{subjects.SERVERS_BUCKET}.",
        js=js,
        direct=False,
    )


class _Info(msgspec.Struct):
    domain: str | None = None


async def link_up(nc: Client, site: str, timeout: float = 1.0) -> bool:
    """Whether the site's JetStream answers from here now: its link to the core is up."""
    try:
        reply = await nc.request(f"{subjects.js_api(site)}.INFO", b"", timeout=timeout)
    except (NoRespondersError, NatsTimeout):
        return False
    try:
        return msgspec.json.decode(reply.data, type=_Info).domain == site
    except msgspec.DecodeError:
        return False


@dataclass
class ViewState:
    """How far the core's view of a site is behind: messages not copied yet, and seconds
    since the mirror last heard from the site (None: never)."""

    lag: int
    active: float | None
    error: str = ""


async def view_state(js: JetStreamContext, site: str) -> ViewState | None:
    """The view's mirror state, or None if the core has no view of `site`."""
    try:
        info = await js.stream_info(subjects.site_view(site))
    except NotFoundError:
        return None
    m = info.mirror
    if m is None:
        return None
    active = None if m.active is None or m.active < 0 else m.active / 1e9
    error = str((m.error or {}).get("description") or "")
    return ViewState(lag=m.lag or 0, active=active, error=error)
