"""One vCenter session, reused: pyvmomi's blocking calls on one thread of their own, re-login, reconnects.

pyvmomi's stub is not safe for concurrent use, so every call of a session runs on that
session's single worker thread, never on the event loop. A call that finds the session
expired (NotAuthenticated) logs in again and is retried once; one that cannot reach
vCenter marks the session unhealthy (the agent then stops heartbeating) and a background
task reconnects with a doubling backoff. A probe every `probe_interval` notices a vCenter
that went away while the agent was idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from hvmesh.agents.driver import DriverError
from hvmesh.core import log
from hvmesh.core.config_drivers import VmwareSection
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

T = TypeVar("T")

#: Longest wait between two reconnects.
MAX_BACKOFF = 30.0
#: Socket timeout of one SOAP call (WaitForUpdatesEx waits less than this).
HTTP_TIMEOUT = 60.0
#: Errors that say vCenter cannot be reached (rather than that it refused something).
UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,
    http.client.HTTPException,
    ssl.SSLError,
    EOFError,
)
#: What a reconnect attempt may meet (and retries after).
RETRYABLE: tuple[type[Exception], ...] = (DriverError, *UNREACHABLE)


class Unreachable(DriverError):
    """vCenter could not be reached."""


def ssl_context(cfg: VmwareSection) -> ssl.SSLContext:
    """Verification on by default, against `ca_file` when set; off only when `insecure`."""
    if cfg.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=cfg.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise DriverError(f"[vmware] ca_file {cfg.ca_file!r} is not usable: {exc}") from None


def fault_message(exc: object) -> str:
    """A vSphere fault's own message, else the exception's."""
    msg = getattr(exc, "msg", None)
    return msg if isinstance(msg, str) and msg else f"{type(exc).__name__}: {exc}"


def task_state(si: Any, task: Any) -> dict[str, Any]:
    """(worker thread) A task's state, result and error, read through the property
    collector (not all of task.info: its entity may be an object of any type)."""
    PC = vmodl.query.PropertyCollector
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=task)],
        propSet=[
            PC.PropertySpec(type=vim.Task, pathSet=["info.state", "info.error", "info.result"])
        ],
    )
    result = si.content.propertyCollector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
    if result is None or not result.objects:
        return {}
    return {p.name: p.val for p in result.objects[0].propSet}


class Session:
    def __init__(self, cfg: VmwareSection, name: str, probe_interval: float = 10.0) -> None:
        self.cfg = cfg
        self.name = name
        self.probe_interval = probe_interval
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"vmware-{name}")
        self._si: Any = None
        self._healthy = False
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return f"vCenter {self.cfg.host}:{self.cfg.port}"

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    # --- connecting ----------------------------------------------------------------------

    def _login(self) -> None:
        """(worker thread) Log in: a new connection the first time, then again on the same
        one, so the managed objects the driver holds stay usable."""
        try:
            if self._si is None:
                self._si = SmartConnect(
                    host=self.cfg.host,
                    port=self.cfg.port,
                    user=self.cfg.username,
                    pwd=self.cfg.password,
                    sslContext=ssl_context(self.cfg),
                    httpConnectionTimeout=HTTP_TIMEOUT,
                )
            else:
                self._si.content.sessionManager.Login(self.cfg.username, self.cfg.password)
        except vim.fault.InvalidLogin:
            raise DriverError(
                f"{self.where} refused the login of user {self.cfg.username!r}: "
                "check [vmware] username and password"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise DriverError(
                f"{self.where}: its TLS certificate is not trusted ({exc.verify_message}): "
                "set [vmware] ca_file to its CA, or insecure = true for a lab"
            ) from None
        except UNREACHABLE as exc:
            raise Unreachable(f"{self.where} is unreachable: {exc}") from None
        except vmodl.MethodFault as exc:
            raise DriverError(f"{self.where} refused the login: {fault_message(exc)}") from None

    def _logout(self) -> None:
        si, self._si = self._si, None
        if si is not None:
            with contextlib.suppress(Exception):
                Disconnect(si)

    async def open(self) -> None:
        """Connect, retrying an unreachable vCenter [vmware] connection_retries times;
        wrong credentials or an untrusted certificate fail at once."""
        if not self.cfg.host:
            raise DriverError("[vmware] host is not set: name the vCenter to manage")
        delay = self.cfg.connection_backoff
        for attempt in range(self.cfg.connection_retries + 1):
            try:
                await self._run(self._login)
                break
            except Unreachable:
                if attempt == self.cfg.connection_retries:
                    raise
                LOG.warning("vmware.connect_retry", where=self.where, attempt=attempt + 1)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        self._healthy = True
        self._probe = asyncio.get_running_loop().create_task(self._probe_loop())
        LOG.info("vmware.connected", where=self.where, session=self.name)

    async def close(self) -> None:
        self._closed = True
        await stop_tasks([self._reconnecting, self._probe])
        with contextlib.suppress(Exception):
            await self._run(self._logout)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _lost(self, why: str) -> None:
        """The connection is gone: unhealthy until a reconnect succeeds."""
        if self._closed:
            return
        if self._healthy:
            LOG.warning("vmware.connection_lost", where=self.where, error=why)
        self._healthy = False
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self.cfg.connection_backoff
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._run(lambda: self._invoke(lambda si: si.CurrentTime()))
            except RETRYABLE as exc:
                LOG.warning("vmware.reconnect_failed", where=self.where, error=str(exc))
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self._healthy = True
            LOG.info("vmware.reconnected", where=self.where, session=self.name)
            return

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            if not self._healthy:
                continue
            with contextlib.suppress(DriverError):
                await self.call(lambda si: si.CurrentTime())

    # --- calling -----------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _invoke(self, fn: Callable[[Any], T]) -> T:
        """(worker thread) fn(service instance), logging in again once when the session
        expired."""
        if self._si is None:
            self._login()
        try:
            return fn(self._si)
        except vim.fault.NotAuthenticated:
            LOG.info("vmware.relogin", where=self.where, session=self.name)
            self._login()
            return fn(self._si)

    async def call(self, fn: Callable[[Any], T], what: str = "") -> T:
        """fn(service instance) on the session's thread. vSphere faults pass through
        as they are (callers turn the ones they expect into answers); an unreachable
        vCenter becomes Unreachable and starts reconnecting."""
        if self._closed:
            raise DriverError(f"the session to {self.where} is closed")
        try:
            return await self._run(lambda: self._invoke(fn))
        except Unreachable as exc:
            self._lost(str(exc))
            raise
        except UNREACHABLE as exc:
            self._lost(str(exc))
            doing = f" while {what}" if what else ""
            raise Unreachable(f"{self.where} is unreachable{doing}: {exc}") from None

    async def wait_task(self, task: Any, what: str) -> Any:
        """Wait for a vCenter task to end, looking every [vmware] task_poll_interval; its
        result, or DriverError with vCenter's reason."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.task_timeout
        while True:
            info = await self.call(lambda si: task_state(si, task), what)
            if info.get("info.state") == vim.TaskInfo.State.success:
                return info.get("info.result")
            if info.get("info.state") == vim.TaskInfo.State.error:
                raise DriverError(f"{what}: {fault_message(info.get('info.error'))}")
            if loop.time() > deadline:
                raise DriverError(
                    f"{what}: the vCenter task did not end in {self.cfg.task_timeout} s"
                )
            await asyncio.sleep(self.cfg.task_poll_interval)

    async def run_task(self, start: Callable[[Any], Any], what: str) -> Any:
        """Start a task (start(si) returns it) and wait for it; vSphere faults raised on
        starting it become DriverError naming `what`."""
        try:
            task = await self.call(start, what)
        except vmodl.MethodFault as exc:
            raise DriverError(f"{what}: {fault_message(exc)}") from None
        return await self.wait_task(task, what)
