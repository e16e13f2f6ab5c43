"""Starting a service while NATS or JetStream may be briefly away: transient errors are retried with backoff until [DEFAULT] start_timeout, permanent ones fail at once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import (
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.js.errors import APIError, ServiceUnavailableError

from hvmesh.core import log
from hvmesh.core.bus import connection, nats_options
from hvmesh.core.config import NatsSection

LOG = log.get_logger(__name__)
T = TypeVar("T")

# What may pass on its own: no answer in time, JetStream not (yet) answering, a connection
# that is being re-established. Anything else (refused credentials, a permission
# violation, a bad configuration, a stream whose configuration conflicts) is permanent.
TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,  # asyncio.TimeoutError and nats' TimeoutError (FlushTimeoutError too)
    NoRespondersError,
    ServiceUnavailableError,
    ConnectionClosedError,
    ConnectionReconnectingError,
    StaleConnectionError,
    OutboundBufferLimitError,
    ConnectionRefusedError,
    ConnectionResetError,
    BrokenPipeError,
)
REFUSALS = ("authorization violation", "permissions violation", "user authentication")
SETTLE_TIMEOUT = 10.0  # bound on stopping a failed attempt's half-started component


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a start is retried: delays from `initial` doubling to `max_delay`, jittered, until `timeout`."""

    timeout: float
    initial: float = 0.5
    max_delay: float = 5.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1 for the first)."""
        base = min(self.max_delay, self.initial * 2 ** min(attempt - 1, 30))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


class StartFailed(Exception):
    """A start gave up: on a permanent error, or after transient ones until its deadline."""


class Startable(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


C = TypeVar("C", bound=Startable)


def describe(exc: BaseException) -> str:
    """An error in a few words, naming its type when its text alone would be unclear."""
    if isinstance(exc, APIError):
        return f"JetStream error {exc.code}: {exc.description or type(exc).__name__}"
    text = nats_options.describe(exc)
    return text if text != type(exc).__name__ and " " in text else f"{type(exc).__name__}: {text}"


def refusal(exc: BaseException) -> bool:
    """Whether NATS refused who we are or what we asked (never passes on its own)."""
    return isinstance(exc, NatsError) and any(r in str(exc).lower() for r in REFUSALS)


def is_transient(exc: BaseException) -> bool:
    if refusal(exc):
        return False
    if isinstance(exc, APIError):
        return exc.code == 503 or isinstance(exc, ServiceUnavailableError)
    return isinstance(exc, TRANSIENT)


class StartGuard:
    """One service process's start: its retry policy and what its NATS connection refused."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._refused: list[tuple[float, str]] = []  # (loop time, what NATS refused)
        self._connecting = ""  # the service connecting, while it does
        self._last_error = "no attempt finished"

    def _refused_since(self, since: float) -> str | None:
        found = [text for at, text in self._refused if at >= since]
        return found[-1] if found else None

    async def _on_error(self, exc: Exception) -> None:
        """The connection's error callback: refusals are remembered, and end a connect."""
        if refusal(exc):
            text = nats_options.describe(exc)
            self._refused.append((asyncio.get_running_loop().time(), text))
            del self._refused[:-10]
            if self._connecting:
                raise StartFailed(f"{self._connecting}: NATS refused the connection: {text}")
        self._last_error = nats_options.describe(exc)
        LOG.warning("nats.error", error=f"{type(exc).__name__}: {exc}")

    async def connect(self, cfg: NatsSection, name: str, **kwargs: Any) -> Client:
        """Connect as a service does, until the start deadline; refused credentials fail at once."""
        self._connecting = name
        try:
            nc = await self.retry(
                name, lambda: connection.connect(cfg, name, error_cb=self._on_error, **kwargs)
            )
        finally:
            self._connecting = ""
        url = nc.connected_url
        LOG.info(
            "service.connected", service=name, server=f"{url.hostname}:{url.port}" if url else ""
        )
        return nc

    async def retry(self, name: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, retrying transient errors until the deadline.

        An attempt cut short (by the deadline or a cancellation) must undo what it
        started itself, as `Retried` does. Raises StartFailed with one line saying why.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.timeout
        last = ""
        number = 0
        while True:
            number += 1
            began = loop.time()
            try:
                async with asyncio.timeout_at(deadline) as window:
                    return await attempt()
            except StartFailed:
                raise
            except Exception as exc:
                if window.expired():
                    raise StartFailed(
                        f"{name} did not start within {self.policy.timeout:g}s "
                        f"([DEFAULT] start_timeout); last error: {last or self._last_error}"
                    ) from exc
                refused = self._refused_since(began)
                if refused is not None:
                    raise StartFailed(f"{name} could not start: NATS refused: {refused}") from exc
                if not is_transient(exc):
                    raise StartFailed(f"{name} could not start: {describe(exc)}") from exc
                last = describe(exc)
            pause = min(self.policy.delay(number), max(0.0, deadline - loop.time()))
            LOG.warning(
                "service.start_retry", service=name, attempt=number, error=last, retry_in=pause
            )
            await asyncio.sleep(pause)  # the backoff between attempts

    def component(self, name: str, make: Callable[[], C]) -> Retried[C]:
        """A component whose start this guard retries, a fresh one from `make` each time."""
        return Retried(self, name, make)


class Retried(Generic[C]):
    """A component started with retries: each attempt builds a fresh one and stops it if it fails.

    A failed attempt's component is stopped before the next is built, so a retry leaves
    no second micro service instance, subscription or task behind.
    """

    def __init__(self, guard: StartGuard, name: str, make: Callable[[], C]) -> None:
        self.guard = guard
        self.name = name
        self.make = make
        self.current: C | None = None

    async def start(self) -> None:
        async def attempt() -> C:
            made = self.make()
            try:
                await made.start()
            except BaseException:
                await _bounded(made.stop(), self.name)
                raise
            return made

        self.current = await self.guard.retry(self.name, attempt)

    async def stop(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            await current.stop()


async def _bounded(undo: Awaitable[None], name: str) -> None:
    """Stop a half-started component, never for longer than SETTLE_TIMEOUT nor by raising."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await undo
    except Exception as exc:
        LOG.warning("service.start_undo_failed", service=name, error=describe(exc))
