"""libvirt's event loop: libvirtaio on an asyncio loop of its own, in one thread per process.

libvirt accepts one event implementation per process, for good; a loop of its own
outlives any one agent loop (the tests run one loop per test) and keeps serving
libvirt's keepalives while the agent's loop is busy. Callbacks run on that thread: the
connection hands them to its own loop with call_soon_threadsafe.

libvirt also registers and updates its file handles and timers from whichever thread
makes a call (the agent's loop, or a worker thread running a long call); each such
change wakes the event loop so it sees the change at once.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import libvirtaio

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
START_TIMEOUT = 10.0


def _noop() -> None:
    pass


class _WakingImpl(libvirtaio.virEventAsyncIOImpl):
    """libvirtaio's implementation, waking its loop when another thread changes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        super().__init__(loop=loop)
        self._thread_id = thread_id

    def _wake(self) -> None:
        if threading.get_ident() != self._thread_id:
            self.loop.call_soon_threadsafe(_noop)

    def _add_handle(self, *args: Any) -> int:
        out = super()._add_handle(*args)
        self._wake()
        return out

    def _update_handle(self, *args: Any) -> None:
        super()._update_handle(*args)
        self._wake()

    def _remove_handle(self, *args: Any) -> int:
        out = super()._remove_handle(*args)
        self._wake()
        return out

    def _add_timeout(self, *args: Any) -> int:
        out = super()._add_timeout(*args)
        self._wake()
        return out

    def _update_timeout(self, *args: Any) -> None:
        super()._update_timeout(*args)
        self._wake()

    def _remove_timeout(self, *args: Any) -> int:
        out = super()._remove_timeout(*args)
        self._wake()
        return out


def ensure_running() -> asyncio.AbstractEventLoop:
    """Start the libvirt event thread and register its implementation, once per process;
    before the first connection opens."""
    global _loop
    with _lock:
        if _loop is not None:
            return _loop
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            impl = _WakingImpl(loop, threading.get_ident()).register()
            libvirtaio._current_impl = impl  # as virEventRegisterAsyncIOImpl records it
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("the libvirt event thread did not start")
        _loop = loop
        return loop
