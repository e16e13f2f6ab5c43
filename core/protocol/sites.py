"""Sites on the wire: a site's record at the core, and a create the core hands to a site."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, field

from hvmesh.core.protocol.base import Record, now
from hvmesh.core.protocol.requests import ServerCreate

#: A site's name is its JetStream domain and part of stream names: letters, digits, - and _.
SITE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z"
SiteName = Annotated[str, Meta(pattern=SITE_NAME)]
ZoneName = Annotated[str, Meta(min_length=1, max_length=255)]


class Site(Record):
    """A site (Nova's cell) as the core knows it: written by the site when it joins.

    Its availability zones route creates to it; its records stay in its own JetStream
    domain (named as the site), which the core mirrors for listings.
    """

    name: SiteName
    availability_zones: Annotated[list[ZoneName], Meta(max_length=64)] = field(default_factory=list)
    joined_at: float = field(default_factory=now)
    version: Annotated[str, Meta(max_length=64)] = ""


SiteRequestKind = Literal["create", "delete", "update", "action"]


class SiteRequest(Record):
    """A request the core's API accepted for a site, queued at the core until the site takes it.

    A create (`create`): the core chose the servers' ids (its reply named them); the
    site creates them with these ids, once (client_token). A delete, update or action
    of a site's server (`body`: the request as the core's API took it, with the server's
    id). The site runs it as `project`/`user`, the caller the core checked. One it takes
    after `deadline` (epoch seconds; 0: none) it does not run, and tells the core why.
    """

    request_id: str
    site: str
    server_ids: list[str]
    project: str
    user: str
    kind: SiteRequestKind = "create"
    create: ServerCreate | None = None
    body: dict[str, Any] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)
    is_admin: bool = False
    accepted_at: float = field(default_factory=now)
    deadline: float = 0.0


class SiteOutcome(Record):
    """Why a site did not boot a SiteRequest: sent by the site, kept at the core (key: its
    request id), shown as the fault of the request's servers."""

    request_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,255}\Z")]  # a bucket key
    site: SiteName
    server_ids: Annotated[list[Annotated[str, Meta(max_length=255)]], Meta(max_length=1000)]
    status: Literal["failed", "expired"]  # the site refused it; it came after its deadline
    message: Annotated[str, Meta(max_length=4096)]
    at: float = field(default_factory=now)
    deleted: list[str] = field(default_factory=list)  # its servers deleted at the core since


class SiteJoin(Record):
    """A site's join request (subjects.SITE_JOIN): its name and availability zones."""

    site: Site
