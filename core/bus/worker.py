"""Consuming a durable JetStream pull subscription with bounded concurrency and bounded retries.

Conductors (tasks, events, timers) and agents (work) all do the same: fetch a batch,
decode each message into its Struct, run the handler as a task with at most N in
flight, and on shutdown stop fetching and let the running handlers finish. A handler
that raises gets the message redelivered with exponential backoff; after
`max_deliveries` such faults the owner's `on_exhausted` ends the work cleanly, the
message is kept as a dead letter and terminated. An undecodable message is kept and
terminated at once. A handler's own nak (work that is not due yet) is no fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hvmesh.core import log
from hvmesh.core.bus.reconnects import ReconnectSignal
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)
T = TypeVar("T")

RETRY_DELAY = 2.0  # seconds before the first redelivery of a message whose handler raised
RETRY_DELAY_MAX = 60.0
MAX_DELIVERIES = 8
SAFETY_FACTOR = 4  # the consumer's own max_deliver, as a multiple of max_deliveries
TRACKED = 10_000  # messages whose fault count one worker remembers at most
FETCH_WINDOW = 2.0  # seconds one pull request waits for work, by default

# on_exhausted(item, msg, "after N deliveries: KeyError: 'x'"): the owner ends the work.
Exhausted = Callable[[Any, Msg, str], Awaitable[None]]
# keep(component, msg, deliveries, error): store a copy of a message given up on.
Keeper = Callable[[str, Msg, int, str], Awaitable[None]]


@dataclass(frozen=True)
class Retry:
    """How a worker retries: backoff from `delay` to `delay_max`, `max_deliveries` faults.

    `waits` is how many deliveries its handler may nak on purpose (not due yet); the
    consumer's own max_deliver, a safety net, leaves room for them.
    """

    delay: float = RETRY_DELAY
    delay_max: float = RETRY_DELAY_MAX
    max_deliveries: int = MAX_DELIVERIES
    waits: int = 0

    @classmethod
    def of(cls, section: Any, waits: int = 0) -> Retry:
        """From a config section with retry_delay, retry_delay_max and max_deliveries."""
        return cls(section.retry_delay, section.retry_delay_max, section.max_deliveries, waits)

    @property
    def max_deliver(self) -> int:
        """The consumer's max_deliver: well above the faults allowed, plus the waits."""
        return self.max_deliveries * SAFETY_FACTOR + self.waits


def backoff(faults: int, delay: float, delay_max: float) -> float:
    """Seconds before the redelivery after the `faults`-th failed delivery."""
    return float(min(delay * 2 ** max(faults - 1, 0), delay_max))


async def durable_pull(
    js: Any,
    subject: str,
    durable: str,
    stream: str,
    ack_wait: float,
    max_ack_pending: int,
    deliver_policy: DeliverPolicy | None = None,
    max_deliver: int = -1,
) -> Any:
    """A pull subscription on a durable consumer with explicit acks, for a PullWorker.

    `max_ack_pending` -1 sets no limit; without `deliver_policy`, ConsumerConfig's
    default applies (every message in the stream). A durable that already exists with
    other limits is updated in place (what a consumer cannot change is kept).
    """
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        max_deliver=max_deliver,
    )
    if deliver_policy is not None:
        config.deliver_policy = deliver_policy
    await _update_durable(js, stream, durable, config)
    return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)


async def _update_durable(js: Any, stream: str, durable: str, wanted: ConsumerConfig) -> None:
    """Bring an existing durable's limits to `wanted`; a durable not there yet is left."""
    try:
        info = await js.consumer_info(stream, durable)
    except Exception:
        return  # not there yet: pull_subscribe creates it with `wanted`
    have = info.config
    limits = {
        "ack_wait": wanted.ack_wait,
        "max_ack_pending": wanted.max_ack_pending,
        "max_deliver": wanted.max_deliver,
    }
    if all(getattr(have, k) == v for k, v in limits.items()):
        return
    try:
        await js.add_consumer(stream, config=have.evolve(**limits))
        LOG.info("worker.durable_updated", durable=durable, stream=stream, **limits)
    except Exception as exc:
        LOG.warning("worker.durable_not_updated", durable=durable, stream=stream, error=str(exc))


class PullWorker(Generic[T]):
    def __init__(
        self,
        name: str,
        sub: Any,
        type_: type[T],
        handler: Callable[[T, Msg], Awaitable[None]],
        concurrency: int,
        batch: int | None = None,
        *,
        retry: Retry | None = None,
        on_exhausted: Exhausted | None = None,
        keep: Keeper | None = None,
        fetch_window: float = FETCH_WINDOW,
        reconnects: ReconnectSignal | None = None,
    ) -> None:
        """The consumer's max_deliver must be `retry.max_deliver`: its last delivery is known.

        Each fetch is a pull request that waits up to `fetch_window` seconds for work; an
        idle worker costs one request per window. A reconnect loses a pull request the
        server held, so with `reconnects` (its connection's signal) a waiting fetch is
        asked again as soon as the connection reconnected, whatever the window.
        """
        retry = retry or Retry()
        if retry.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, not {retry.max_deliveries}")
        self.name = name
        self.sub = sub
        self.type = type_
        self.handler = handler
        self.batch = batch or max(1, concurrency)
        self.retry = retry
        self.on_exhausted = on_exhausted
        self.keep = keep
        self._faults: dict[tuple[str, int], int] = {}  # (stream, sequence) -> failed deliveries
        self._sem = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._decoder = msgspec.json.Decoder(type_)
        self.fetch_window = fetch_window
        self.reconnects = reconnects

    def start(self) -> None:
        self._loop = asyncio.create_task(self._fetch_loop(), name=f"{self.name}-fetch")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop fetching; give running handlers `grace` seconds, then cancel them."""
        self._stopping.set()
        await stop_tasks([self._loop], grace)
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=grace)
            await stop_tasks(pending, grace)
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            async with self._sem:  # wait for room before asking for more
                pass
            try:
                msgs: list[Msg] = await self._fetch()
            except (NatsTimeout, TimeoutError):
                continue  # nothing to do within the fetch window
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping.is_set():
                    return
                LOG.exception("worker.fetch_failed", worker=self.name)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._sem.acquire()
                task = asyncio.create_task(self._run(msg))
                self._running.add(task)
                task.add_done_callback(self._finished)

    async def _fetch(self) -> list[Msg]:
        """One fetch; TimeoutError when the window passed, or a reconnect lost the request."""
        fetching = asyncio.ensure_future(
            self.sub.fetch(batch=self.batch, timeout=self.fetch_window)
        )
        if self.reconnects is None:
            return await fetching
        reconnected = asyncio.ensure_future(self.reconnects.changed.wait())
        try:
            await asyncio.wait({fetching, reconnected}, return_when=asyncio.FIRST_COMPLETED)
            if fetching.done():
                return fetching.result()
            raise TimeoutError  # reconnected: the server may have forgotten the request
        finally:
            reconnected.cancel()
            if not fetching.done():
                fetching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fetching

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._sem.release()

    async def _run(self, msg: Msg) -> None:
        try:
            item = self._decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            LOG.error("worker.bad_message", worker=self.name, subject=msg.subject, error=str(exc))
            await self._keep(msg, 1, f"undecodable: {exc}")
            await msg.term()
            return
        key = _key(msg)
        last = _delivered(msg) >= self.retry.max_deliver
        held: list[float | None] = []
        if last:  # the consumer's final delivery: a nak from the handler is held back

            async def hold(delay: float | None = None) -> None:
                held.append(delay)

            setattr(msg, "nak", hold)  # noqa: B010
        try:
            await self.handler(item, msg)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            faults = self._faults.pop(key, 0) + 1
            if faults >= self.retry.max_deliveries or last:
                await self._give_up(item, msg, faults, error)
                return
            self._remember(key, faults)
            delay = backoff(faults, self.retry.delay, self.retry.delay_max)
            LOG.exception(
                "worker.handler_failed",
                worker=self.name,
                subject=msg.subject,
                deliveries=faults,
                retry_in=delay,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            return
        # Its fault count is kept even now: a handler that naks on purpose ("not yet")
        # between faults must not start the count over.
        if held:  # the consumer will not deliver it again: waiting would be forever
            await self._give_up(item, msg, _delivered(msg), "still waiting")

    async def _give_up(self, item: T, msg: Msg, deliveries: int, error: str) -> None:
        """The message is exhausted: the owner ends its work, a copy is kept, it is dropped."""
        LOG.error(
            "worker.gave_up",
            worker=self.name,
            subject=msg.subject,
            deliveries=deliveries,
            error=error,
        )
        if self.on_exhausted is not None:
            try:
                await self.on_exhausted(item, msg, f"after {deliveries} deliveries: {error}")
            except Exception:
                LOG.exception("worker.on_exhausted_failed", worker=self.name, subject=msg.subject)
        await self._keep(msg, deliveries, error)
        with contextlib.suppress(Exception):
            await msg.term()

    async def _keep(self, msg: Msg, deliveries: int, error: str) -> None:
        if self.keep is None:
            return
        try:
            await self.keep(self.name, msg, deliveries, error)
        except Exception:
            LOG.exception("worker.dead_letter_failed", worker=self.name, subject=msg.subject)

    def _remember(self, key: tuple[str, int], faults: int) -> None:
        self._faults[key] = faults
        while len(self._faults) > TRACKED:  # the oldest first: a bound, not a cache
            del self._faults[next(iter(self._faults))]


def _key(msg: Msg) -> tuple[str, int]:
    try:
        meta = msg.metadata
    except Exception:
        return (msg.subject, id(msg))
    return (meta.stream, meta.sequence.stream)


def _delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
