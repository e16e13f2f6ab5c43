"""Consuming a durable JetStream pull subscription with bounded concurrency.

Conductors (tasks, events) and agents (work) all do the same: fetch a batch, decode
each message into its Struct, run the handler as a task with at most N in flight,
and on shutdown stop fetching and let the running handlers finish. An undecodable
message is terminated, not redelivered forever; a handler that raises gets the
message redelivered after a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hvmesh.core import log

LOG = log.get_logger(__name__)
T = TypeVar("T")

RETRY_DELAY = 2.0


async def durable_pull(
    js: Any,
    subject: str,
    durable: str,
    stream: str,
    ack_wait: float,
    max_ack_pending: int,
    deliver_policy: DeliverPolicy | None = None,
) -> Any:
    """A pull subscription on a durable consumer with explicit acks, for a PullWorker.

    `max_ack_pending` -1 sets no limit; without `deliver_policy`, ConsumerConfig's
    default applies (every message in the stream).
    """
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, max_ack_pending=max_ack_pending
    )
    if deliver_policy is not None:
        config.deliver_policy = deliver_policy
    return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)


class PullWorker(Generic[T]):
    def __init__(
        self,
        name: str,
        sub: Any,
        type_: type[T],
        handler: Callable[[T, Msg], Awaitable[None]],
        concurrency: int,
        batch: int | None = None,
    ) -> None:
        self.name = name
        self.sub = sub
        self.type = type_
        self.handler = handler
        self.batch = batch or max(1, concurrency)
        self._sem = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._decoder = msgspec.json.Decoder(type_)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._fetch_loop(), name=f"{self.name}-fetch")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop fetching; give running handlers `grace` seconds, then cancel them."""
        self._stopping.set()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._loop, timeout=grace)
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=grace)
            for task in pending:
                task.cancel()
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            async with self._sem:  # wait for room before asking for more
                pass
            try:
                msgs: list[Msg] = await self.sub.fetch(batch=self.batch, timeout=2.0)
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

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._sem.release()

    async def _run(self, msg: Msg) -> None:
        try:
            item = self._decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            LOG.error("worker.bad_message", worker=self.name, subject=msg.subject, error=str(exc))
            await msg.term()
            return
        try:
            await self.handler(item, msg)
        except Exception:
            LOG.exception("worker.handler_failed", worker=self.name, subject=msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY)
