"""One loop that keeps an in-memory view of a KV bucket current: watch, apply, reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from nats.js.kv import KeyValue

from hvmesh.core import log

LOG = log.get_logger(__name__)

RETRY = 1.0  # seconds between a failed watch and the next one

Apply = Callable[[str, bytes | None, int], None]


async def watch(
    bucket: Any,
    apply: Apply,
    loaded: asyncio.Event,
    watchers: list[KeyValue.KeyWatcher],
    notify: Callable[[], None],
    event: str,
) -> None:
    """Apply every record of `bucket` (its KV handle as `bucket.kv`) and then every change.

    `apply(key, value, revision)` gets None as the value of a deleted key; a record that
    does not decode is logged as `<event>.bad_record` and skipped. `loaded` is set once
    the watch has delivered what the bucket held when it started (or at once for an
    empty bucket); `notify()` follows each record applied. A failed watch is logged as
    `<event>.watch_failed` and started again (it replays the bucket: `apply` must
    ignore revisions it holds already).
    """
    name = bucket.kv._name
    while True:
        try:
            # What the bucket holds now: the watch has delivered it all once a record of
            # this revision or later came (nats.py's own end marker can come before
            # records already on their way, so it alone does not say so).
            state = (await bucket.kv._js.stream_info(bucket.kv._stream)).state
            held = state.last_seq if state.messages else 0
            seen = 0
            watcher = await bucket.kv.watchall()
            watchers.append(watcher)
            async for e in watcher:
                if e is None:
                    if seen >= held:
                        loaded.set()
                    continue
                seen = max(seen, e.revision or 0)
                try:
                    apply(e.key, e.value if e.operation is None else None, e.revision or 0)
                except msgspec.DecodeError:
                    LOG.warning(f"{event}.bad_record", bucket=name, key=e.key)
                notify()
                if seen >= held:
                    loaded.set()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            LOG.exception(f"{event}.watch_failed", bucket=name)
            await asyncio.sleep(RETRY)
