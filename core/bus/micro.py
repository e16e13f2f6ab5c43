"""NATS micro services with typed endpoints, the caller's identity, and `call`, their client side.

A `MicroService` wraps nats.py's micro service so each endpoint declares the msgspec
Struct its body must decode to; a bad body becomes a 400 naming the field, an
`HvmeshError` becomes its code, anything else a 500. Handlers run as tasks, so one slow
request never holds up the next. `call` is the client side: it raises the error a
service answered with.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from nats.micro.service import EndpointConfig, Service

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.models import encode

LOG = log.get_logger(__name__)

T = TypeVar("T")

INTERNAL_ACCOUNT = "HVMESH"
ADMIN_PROJECT = "admin"


class Caller(msgspec.Struct, frozen=True):
    """Who sent a request: the project (NATS account) and user the server vouches for."""

    project: str
    user: str
    is_admin: bool


def caller_of(headers: dict[str, str] | None) -> Caller:
    """Identify the caller from the server-stamped Nats-Request-Info header.

    Requests that cross from a tenant account through a `share: true` import carry the
    header, written by the server (a tenant cannot forge it). Requests from inside the
    hvmesh account carry none and are the operators': the admin project.
    """
    raw = (headers or {}).get("Nats-Request-Info")
    if not raw:
        return Caller(project=ADMIN_PROJECT, user="admin", is_admin=True)
    try:
        info = json.loads(raw)
    except ValueError:
        raise errors.BadRequest("unreadable Nats-Request-Info header") from None
    account = info.get("acc") or ""
    if account in ("", INTERNAL_ACCOUNT):
        return Caller(project=ADMIN_PROJECT, user=info.get("user") or "admin", is_admin=True)
    return Caller(project=account, user=info.get("user") or "", is_admin=False)


def decode_body(data: bytes, type_: Any) -> Any:
    """Decode a JSON request body into `type_`, turning every problem into a 400."""
    if not data.strip():
        data = b"{}"
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"malformed JSON: {exc}") from None


class Raw(msgspec.Struct):
    """An endpoint body taken as it came (bytes and headers), not decoded as JSON."""

    data: bytes
    headers: dict[str, str]


def error_body(code: int, message: str) -> bytes:
    return encode({"error": {"code": code, "message": message}})


Handler = Callable[[Caller, Any], Awaitable[Any]]


class MicroService:
    """A NATS micro service whose endpoints decode typed bodies and answer JSON."""

    def __init__(
        self,
        nc: Client,
        name: str,
        version: str,
        description: str,
        metadata: dict[str, str] | None = None,
        concurrency: int = 64,
    ) -> None:
        self.nc = nc
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata or {}
        self._service: Service | None = None
        self._pending: list[tuple[str, str, Handler, type | types.UnionType]] = []
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, Any] = {}

    def endpoint(
        self, name: str, subject: str, handler: Handler, body: type | types.UnionType
    ) -> None:
        """Register `handler(caller, decoded_body)` on `subject`; it returns the reply.

        `body` is a msgspec Struct type, or a union of tagged Structs.
        """
        self._pending.append((name, subject, handler, body))

    async def start(self) -> None:
        self._service = await add_service(
            self.nc,
            name=self.name,
            version=self.version,
            description=self.description,
            metadata=self.metadata,
            queue_group=self.name,
        )
        for name, subject, handler, body in self._pending:
            await self._service.add_endpoint(
                EndpointConfig(
                    name=name,
                    subject=subject,
                    handler=self._dispatcher(name, subject, handler, body),
                )
            )
            # nats.py counts errors and time only for handlers that raise inside its own
            # callback; ours answer from a task, so they report into its counters here.
            self._endpoints[name] = self._service._endpoints[-1]

    def _dispatcher(
        self, name: str, subject: str, handler: Handler, body: type | types.UnionType
    ) -> Callable[[MicroRequest], Awaitable[None]]:
        async def dispatch(req: MicroRequest) -> None:
            await self._sem.acquire()
            task = asyncio.create_task(self._handle(name, subject, handler, body, req))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return dispatch

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _handle(
        self,
        name: str,
        subject: str,
        handler: Handler,
        body: type | types.UnionType,
        req: MicroRequest,
    ) -> None:
        started = time.perf_counter_ns()
        error: tuple[int, str] | None = None
        try:
            caller = caller_of(req.headers)
            decoded = (
                Raw(data=req.data, headers=dict(req.headers or {}))
                if body is Raw
                else decode_body(req.data, body)
            )
            result = await handler(caller, decoded)
            await req.respond(encode(result))
        except errors.HvmeshError as exc:
            error = (exc.code, exc.message)
        except Exception as exc:
            LOG.exception("request.failed", subject=subject)
            error = (500, f"internal error: {type(exc).__name__}: {exc}")
        if error is not None:
            await self._respond_error(req, *error)
        self._account(name, time.perf_counter_ns() - started, error)

    def _account(self, name: str, elapsed_ns: int, error: tuple[int, str] | None) -> None:
        ep = self._endpoints.get(name)
        if ep is None:
            return
        ep._processing_time += elapsed_ns
        ep._average_processing_time = int(ep._processing_time / max(ep._num_requests, 1))
        if error is not None:
            ep._num_errors += 1
            ep._last_error = f"{error[0]}:{error[1]}"

    @staticmethod
    async def _respond_error(req: MicroRequest, code: int, message: str) -> None:
        try:
            await req.respond_error(str(code), message, data=error_body(code, message))
        except Exception:
            LOG.exception("request.respond_failed")

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


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
