"""NATS micro services with typed endpoints, the caller's identity, and `call`, their client side.

A `MicroService` speaks the NATS micro protocol ($SRV.PING/INFO/STATS, the endpoints in
one queue group) on plain subscriptions, and each endpoint declares the msgspec Struct
its body must decode to; a bad body becomes a 400 naming the field, an
`HvmeshError` becomes its code, anything else a 500. Handlers run as tasks, so one slow
request never holds up the next. `call` is the client side: it raises the error a
service answered with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import types
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError
from nats.js.errors import ServiceUnavailableError as JetStreamUnavailable
from nats.nuid import NUID

from hvmesh.core import log
from hvmesh.core.bus import microversion, schemas
from hvmesh.core.bus.micro_protocol import (
    INFO_RESPONSE,
    NAME_PATTERN,
    PING_RESPONSE,
    SEMVER_PATTERN,
    STATS_RESPONSE,
    VERBS,
    EndpointInfo,
    EndpointStats,
    InfoResponse,
    PingResponse,
    StatsResponse,
    control_subjects,
)
from hvmesh.core.protocol import errors, limits
from hvmesh.core.protocol.base import encode
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

T = TypeVar("T")

INTERNAL_ACCOUNT = "HVMESH"
ADMIN_PROJECT = "admin"


ADMIN_ROLES = ("admin", "member", "reader")  # admin implies member, member implies reader
MEMBER_ROLES = ("member", "reader")

# (account, user) -> the user's roles (implied ones included), for tenant accounts.
RoleLookup = Callable[[str, str], tuple[str, ...]]


class Caller(msgspec.Struct, frozen=True):
    """Who sent a request: the project (NATS account) and user the server vouches for,
    and the user's roles (`is_admin`: the admin role is among them)."""

    project: str
    user: str
    is_admin: bool
    version: tuple[int, int] = (1, 0)  # the API microversion the request speaks
    roles: tuple[str, ...] = ()


def caller_of(headers: dict[str, str] | None, roles: RoleLookup | None = None) -> Caller:
    """Identify the caller from the server-stamped Nats-Request-Info header.

    Requests that cross from a tenant account through a `share: true` import carry the
    header, written by the server (a tenant cannot forge it). Requests from inside the
    hvmesh account carry none and are the operators': the admin project, admin role.
    A tenant user's roles come from `roles` (default: member).
    """
    raw = (headers or {}).get("Nats-Request-Info")
    if not raw:
        return Caller(project=ADMIN_PROJECT, user="admin", is_admin=True, roles=ADMIN_ROLES)
    try:
        info = json.loads(raw)
    except ValueError:
        raise errors.BadRequest("unreadable Nats-Request-Info header") from None
    if not isinstance(info, dict) or any(
        not isinstance(info.get(k) or "", str) for k in ("acc", "user")
    ):
        raise errors.BadRequest("unreadable Nats-Request-Info header")
    account = info.get("acc") or ""
    user = info.get("user") or ""
    if account in ("", INTERNAL_ACCOUNT):
        return Caller(project=ADMIN_PROJECT, user=user or "admin", is_admin=True, roles=ADMIN_ROLES)
    granted = roles(account, user) if roles is not None else MEMBER_ROLES
    return Caller(project=account, user=user, is_admin="admin" in granted, roles=granted)


def decode_body(data: bytes, type_: Any) -> Any:
    """Decode a JSON request body into `type_`, turning every problem into a 400."""
    if not data.strip():
        data = b"{}"
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid request: {limits.with_value(str(exc), data)}") from None
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise errors.BadRequest("invalid request: JSON nested too deeply") from None


class Raw(msgspec.Struct):
    """An endpoint body taken as it came (bytes and headers), not decoded as JSON."""

    data: bytes
    headers: dict[str, str]


def reply_within(data: bytes, most: int) -> bytes:
    """`data`, or a 413 when NATS could not carry it (a listing too large for one reply)."""
    if len(data) > most:
        raise errors.TooLarge(
            f"the reply is {len(data)} bytes; NATS's max_payload is {most}: ask for less "
            "(a smaller limit)"
        )
    return data


def bus_unavailable(exc: Exception) -> str:
    """A 503's message for a request NATS did not carry through."""
    return (
        f"the message bus did not answer ({type(exc).__name__}); the request may or may not "
        "have taken effect: look, then retry (a create with the same client_token)"
    )


def error_body(code: int, message: str) -> bytes:
    return encode({"error": {"code": code, "message": message}})


def error_headers(code: int, message: str) -> dict[str, str]:
    """The micro error headers `call` turns back into an HvmeshError."""
    return {"Nats-Service-Error": message, "Nats-Service-Error-Code": str(code)}


async def reply_error(
    nc: Client, msg: Msg, code: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """Answer a request with an error as micro services do: headers and a JSON body."""
    if msg.reply:
        await nc.publish(
            msg.reply,
            error_body(code, message),
            headers={**(headers or {}), **error_headers(code, message)},
        )


Handler = Callable[[Caller, Any], Awaitable[Any]]
# (endpoint name, caller, decoded body): raises the HvmeshError refusing the request.
Guard = Callable[[str, Caller, Any], None]


#: What a handler meets when NATS or JetStream cannot answer for a moment (a restart, a
#: leader election): the request's outcome is unknown, a 503 the client may retry.
BUS_UNAVAILABLE: tuple[type[Exception], ...] = (
    NatsTimeout,
    NoRespondersError,
    JetStreamUnavailable,
    # A publish no stream answered: on a cluster, while a new leader is elected.
    NoStreamResponseError,
    nats_errors.ConnectionClosedError,
    nats_errors.NoServersError,
)
STOP_GRACE = 10.0  # seconds a stopping service gives requests under way before cancelling them


class _Endpoint:
    """A registered endpoint: its handler, body type, subscription and counters."""

    def __init__(
        self,
        name: str,
        subject: str,
        queue_group: str,
        handler: Handler,
        body: type | types.UnionType,
        reply: type | types.UnionType | None = None,
    ) -> None:
        self.handler = handler
        self.body = body
        self.info = EndpointInfo(
            name=name,
            subject=subject,
            queue_group=queue_group,
            metadata=schemas.endpoint_metadata(None if body is Raw else body, reply),
        )
        self.stats = EndpointStats(name=name, subject=subject, queue_group=queue_group)
        self.completed = 0
        self.subscription: Subscription | None = None

    def finished(self, elapsed_ns: int, error: tuple[int, str] | None) -> None:
        """Count a request that was answered, in `elapsed_ns`, with `error` if it failed."""
        stats = self.stats
        self.completed += 1
        stats.processing_time += elapsed_ns
        stats.average_processing_time = stats.processing_time // self.completed
        if error is not None:
            stats.num_errors += 1
            stats.last_error = f"{error[0]}:{error[1]}"


class MicroService:
    """A NATS micro service whose endpoints decode typed bodies and answer JSON.

    It speaks the NATS micro protocol on plain subscriptions: each endpoint subscribes
    in the service's queue group, and every instance answers $SRV.PING, $SRV.INFO and
    $SRV.STATS (for all services, its name, and its name and id).
    """

    def __init__(
        self,
        nc: Client,
        name: str,
        version: str,
        description: str,
        metadata: dict[str, str] | None = None,
        concurrency: int = 64,
        max_request_bytes: int | None = None,
        versions: microversion.VersionRange | None = None,
        roles: RoleLookup | None = None,
        guard: Guard | None = None,
    ) -> None:
        """`roles` gives tenant users' roles; `guard` checks every request, decoded,
        before its handler runs."""
        if not NAME_PATTERN.match(name):
            raise ValueError(f"invalid micro service name {name!r}")
        if not SEMVER_PATTERN.match(version):
            raise ValueError(f"micro service version {version!r} is not a semantic version")
        self.nc = nc
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata or {}
        self.max_request_bytes = max_request_bytes  # a bigger body is a 413; None: no bound
        self.versions = versions  # microversions the Hvmesh-API-Version header picks from
        self.roles = roles
        self.guard = guard
        self.id = NUID().next().decode()
        self.queue_group = name
        self.started = datetime.now(UTC)
        self._endpoints: list[_Endpoint] = []
        self._control: list[Subscription] = []
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def endpoint(
        self,
        name: str,
        subject: str,
        handler: Handler,
        body: type | types.UnionType,
        reply: type | types.UnionType | None = None,
    ) -> None:
        """Register `handler(caller, decoded_body)` on `subject`; it returns the reply.

        `body` is a msgspec Struct type, or a union of tagged Structs; `reply`, if given,
        the type of the reply (both published as JSON Schema in $SRV.INFO).
        """
        if not NAME_PATTERN.match(name):
            raise ValueError(f"invalid endpoint name {name!r}")
        self._endpoints.append(_Endpoint(name, subject, self.queue_group, handler, body, reply))

    @property
    def _pending(self) -> list[tuple[str, str, Handler, type | types.UnionType]]:
        """The registered endpoints as (name, subject, handler, body)."""
        return [(ep.info.name, ep.info.subject, ep.handler, ep.body) for ep in self._endpoints]

    async def start(self) -> None:
        """Subscribe the endpoints, then answer PING/INFO/STATS (so a PING means ready)."""
        if self._control:
            return
        for ep in self._endpoints:
            ep.subscription = await self.nc.subscribe(
                ep.info.subject, queue=self.queue_group, cb=self._dispatcher(ep)
            )
        answers = {"PING": self.ping, "INFO": self.info, "STATS": self.stats}
        for verb in VERBS:
            for subject in control_subjects(verb, self.name, self.id):
                self._control.append(
                    await self.nc.subscribe(subject, cb=self._control_handler(answers[verb]))
                )
        self.started = datetime.now(UTC)
        await self.nc.flush()

    def ping(self) -> PingResponse:
        """What this instance answers $SRV.PING with."""
        return PingResponse(
            type=PING_RESPONSE,
            name=self.name,
            id=self.id,
            version=self.version,
            metadata=self.metadata,
        )

    def info(self) -> InfoResponse:
        """What this instance answers $SRV.INFO with: itself and its endpoints."""
        return InfoResponse(
            type=INFO_RESPONSE,
            name=self.name,
            id=self.id,
            version=self.version,
            metadata=self.metadata,
            description=self.description,
            endpoints=[ep.info for ep in self._endpoints],
        )

    def stats(self) -> StatsResponse:
        """What this instance answers $SRV.STATS with: each endpoint's counters."""
        return StatsResponse(
            type=STATS_RESPONSE,
            name=self.name,
            id=self.id,
            version=self.version,
            metadata=self.metadata,
            started=self.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            endpoints=[ep.stats for ep in self._endpoints],
        )

    def _control_handler(
        self, answer: Callable[[], msgspec.Struct]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def respond(msg: Msg) -> None:
            if msg.reply:
                await self.nc.publish(msg.reply, msgspec.json.encode(answer()))

        return respond

    def _dispatcher(self, ep: _Endpoint) -> Callable[[Msg], Awaitable[None]]:
        async def dispatch(msg: Msg) -> None:
            ep.stats.num_requests += 1
            await self._sem.acquire()
            task = asyncio.create_task(self._handle(ep, msg))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return dispatch

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _handle(self, ep: _Endpoint, msg: Msg) -> None:
        started = time.perf_counter_ns()
        error: tuple[int, str] | None = None
        answer: dict[str, str] = {}  # the reply's headers: the microversion it speaks
        try:
            caller = caller_of(msg.headers, self.roles)
            if self.versions is not None:
                version = self.versions.negotiate(msg.headers)
                caller = msgspec.structs.replace(caller, version=version)
                answer[microversion.HEADER] = microversion.text(version)
            most = self.max_request_bytes
            if most is not None and len(msg.data) > most:
                raise errors.TooLarge(limits.request_too_large(len(msg.data), most))
            decoded = (
                Raw(data=msg.data, headers=dict(msg.headers or {}))
                if ep.body is Raw
                else decode_body(msg.data, ep.body)
            )
            if self.guard is not None:
                self.guard(ep.info.name, caller, decoded)
            result = await ep.handler(caller, decoded)
            await self._respond(msg, reply_within(encode(result), self.nc.max_payload), answer)
        except errors.HvmeshError as exc:
            error = (exc.code, exc.message)
        except BUS_UNAVAILABLE as exc:
            LOG.warning("request.bus_unavailable", subject=ep.info.subject, error=repr(exc))
            error = (503, bus_unavailable(exc))
        except Exception as exc:
            LOG.exception("request.failed", subject=ep.info.subject)
            error = (500, f"internal error: {type(exc).__name__}: {exc}")
        if error is not None:
            await self._respond_error(msg, *error, answer)
        ep.finished(time.perf_counter_ns() - started, error)

    async def _respond(self, msg: Msg, data: bytes, headers: dict[str, str]) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, data, headers=headers or None)

    async def _respond_error(
        self, msg: Msg, code: int, message: str, headers: dict[str, str]
    ) -> None:
        try:
            await reply_error(self.nc, msg, code, message, headers)
        except Exception:
            LOG.exception("request.respond_failed")

    async def stop(self) -> None:
        """Stop taking requests, then give the ones under way STOP_GRACE seconds to finish."""
        subscriptions = [ep.subscription for ep in self._endpoints if ep.subscription]
        for sub in [*subscriptions, *self._control]:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        for ep in self._endpoints:
            ep.subscription = None
        self._control = []
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE)
            await stop_tasks(pending)


def raise_for_error(msg: Msg) -> None:
    """Raise the HvmeshError a micro service answered with, if it did."""
    headers = msg.headers or {}
    code = headers.get("Nats-Service-Error-Code")
    if not code:
        return
    message = headers.get("Nats-Service-Error", "")
    try:
        body = msgspec.json.decode(msg.data)
        message = body["error"]["message"]
    except (msgspec.DecodeError, KeyError, TypeError):
        pass
    raise errors.from_code(int(code), message)


async def call(
    nc: Client,
    subject: str,
    payload: Any,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> Any:
    """Request/reply with a JSON body; returns the decoded reply or raises its error."""
    data = payload if isinstance(payload, bytes) else encode(payload)
    try:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    except NoRespondersError:
        raise errors.ServiceUnavailable(f"no service answers on {subject}") from None
    except NatsTimeout:
        raise errors.ServiceUnavailable(f"no reply on {subject} within {timeout:g}s") from None
    raise_for_error(msg)
    return msgspec.json.decode(msg.data)
