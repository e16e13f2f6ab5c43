"""One WinRM connection to a Hyper-V host through pywinrm: a shell opened once and reused, PowerShell run with a deadline, reconnects with backoff.

pywinrm's calls block, and its requests session is not safe for concurrent use, so every
call runs on the connection's single worker thread. Each command is
`powershell.exe -EncodedCommand` (the script as UTF-16LE base64, so nothing in it is
read by a command line parser) in the shared shell; output is received until the
command is Done or [hyperv] command_timeout passes, when it is signalled to terminate.
A host that cannot be reached marks the connection unhealthy (the agent stops
heartbeating) and a background task opens a new shell with a doubling backoff; a probe
notices a host gone while the agent is idle.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from hvmesh.agents.driver import DriverError
from hvmesh.agents.hyperv.clixml import error_message
from hvmesh.core import log
from hvmesh.core.config_drivers import HypervSection
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

T = TypeVar("T")

MAX_BACKOFF = 30.0
POWERSHELL = "powershell.exe"
POWERSHELL_ARGS = ["-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass"]
#: Errors that say the host cannot be reached (rather than that it refused something).
UNREACHABLE: tuple[type[Exception], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    WinRMTransportError,
    OSError,
)

#: What a reconnect attempt may meet (and retries after).
RETRYABLE: tuple[type[Exception], ...] = (DriverError, *UNREACHABLE)


class Unreachable(DriverError):
    """The Hyper-V host could not be reached over WinRM."""


class CommandFailed(DriverError):
    """A PowerShell command ended with an error; the message is the cmdlet's."""


def encode_command(script: str) -> str:
    """`script` as powershell.exe -EncodedCommand takes it: UTF-16LE, base64."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


class WinrmConnection:
    def __init__(self, cfg: HypervSection, probe_interval: float = 10.0) -> None:
        self.cfg = cfg
        self.probe_interval = probe_interval
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"winrm-{cfg.host}")
        self._protocol: Protocol | None = None
        self._shell: str | None = None
        self._healthy = False
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return f"WinRM {self.cfg.scheme}://{self.cfg.host}:{self.cfg.port}"

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    # --- the shell (worker thread) ------------------------------------------------------

    def _make_protocol(self) -> Protocol:
        cfg = self.cfg
        return Protocol(
            endpoint=f"{cfg.scheme}://{cfg.host}:{cfg.port}/wsman",
            transport=cast(Any, cfg.transport),
            username=cfg.username,
            password=cfg.password,
            server_cert_validation="ignore" if cfg.insecure else "validate",
            ca_trust_path=cast(Any, cfg.ca_file or None),
            operation_timeout_sec=cfg.operation_timeout,
            read_timeout_sec=cfg.operation_timeout + 10,
            proxy=None,
        )

    def _open_shell(self) -> str:
        """(worker thread) The shared shell, opened when there is none."""
        if self._shell is not None:
            return self._shell
        try:
            if self._protocol is None:
                self._protocol = self._make_protocol()
            self._shell = self._protocol.open_shell(codepage=65001, noprofile=True)
        except InvalidCredentialsError:
            raise DriverError(
                f"{self.where} refused the credentials of user {self.cfg.username!r}: "
                "check [hyperv] username, password and transport"
            ) from None
        except requests.exceptions.SSLError as exc:
            raise DriverError(
                f"{self.where}: its TLS certificate is not trusted ({exc}): set [hyperv] "
                "ca_file to its CA, or insecure = true for a lab"
            ) from None
        except WSManFaultError as exc:
            raise DriverError(f"{self.where} refused to open a shell: {exc.reason}") from None
        except WinRMError as exc:
            raise DriverError(f"{self.where}: {exc}") from None
        except UNREACHABLE as exc:
            self._drop()
            raise Unreachable(f"{self.where} is unreachable: {exc}") from None
        LOG.info("hyperv.shell_opened", where=self.where)
        return self._shell

    def _drop(self) -> None:
        """(worker thread) Forget the shell and the HTTP session (after a transport error)."""
        protocol, self._protocol, self._shell = self._protocol, None, None
        if protocol is not None:
            with contextlib.suppress(Exception):
                protocol.transport.close_session()

    def _close_shell(self) -> None:
        protocol, shell = self._protocol, self._shell
        if protocol is not None and shell is not None:
            with contextlib.suppress(Exception):
                protocol.close_shell(shell)
        self._drop()

    def _execute(self, script: str, what: str) -> tuple[str, str, int]:
        """(worker thread) Run `script` in the shell: (stdout, stderr, exit code). A shell
        the host no longer knows is opened again and the command sent once more (it had
        not started)."""
        for attempt in (0, 1):
            shell = self._open_shell()
            assert self._protocol is not None
            try:
                command = self._protocol.run_command(
                    shell,
                    POWERSHELL,
                    [*POWERSHELL_ARGS, "-EncodedCommand", encode_command(script)],
                    skip_cmd_shell=True,
                )
            except WSManFaultError as exc:
                if attempt == 0:
                    LOG.info("hyperv.shell_reopened", where=self.where, reason=exc.reason)
                    self._drop()
                    continue
                raise DriverError(
                    f"{what}: {self.where} refused the command: {exc.reason}"
                ) from None
            return self._receive(shell, command, what)
        raise AssertionError("unreachable")

    def _receive(self, shell: str, command: str, what: str) -> tuple[str, str, int]:
        assert self._protocol is not None
        out: list[bytes] = []
        err: list[bytes] = []
        deadline = time.monotonic() + self.cfg.command_timeout
        try:
            while True:
                try:
                    stdout, stderr, code, done = self._protocol.get_command_output_raw(
                        shell, command
                    )
                except WinRMOperationTimeoutError:
                    stdout, stderr, code, done = b"", b"", -1, False
                out.append(stdout)
                err.append(stderr)
                if done:
                    break
                if time.monotonic() > deadline:
                    raise DriverError(
                        f"{what}: the command did not end in {self.cfg.command_timeout} s "
                        f"on {self.cfg.host}; it was stopped"
                    )
        finally:
            with contextlib.suppress(WSManFaultError, WinRMError):
                self._protocol.cleanup_command(shell, command)
        return (
            b"".join(out).decode("utf-8", "replace"),
            b"".join(err).decode("utf-8", "replace"),
            code,
        )

    # --- connecting -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        """Open the shell, retrying an unreachable host [hyperv] connection_retries times;
        refused credentials or an untrusted certificate fail at once."""
        if not self.cfg.host:
            raise DriverError("[hyperv] host is not set: name the Hyper-V host to manage")
        if self.cfg.transport != "certificate" and not self.cfg.username:
            raise DriverError("[hyperv] username is not set: name the account cmdlets run as")
        delay = self.cfg.connection_backoff
        for attempt in range(self.cfg.connection_retries + 1):
            try:
                await self._run(self._open_shell)
                break
            except Unreachable:
                if attempt == self.cfg.connection_retries:
                    raise
                LOG.warning("hyperv.connect_retry", where=self.where, attempt=attempt + 1)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        self._healthy = True
        self._probe = asyncio.get_running_loop().create_task(self._probe_loop())
        LOG.info("hyperv.connected", where=self.where)

    async def close(self) -> None:
        self._closed = True
        await stop_tasks([self._reconnecting, self._probe])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._run(self._close_shell), self.cfg.operation_timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _lost(self, why: str) -> None:
        if self._closed:
            return
        if self._healthy:
            LOG.warning("hyperv.connection_lost", where=self.where, error=why)
        self._healthy = False
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self.cfg.connection_backoff
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._run(lambda: self._execute("$null", "probing the host"))
            except RETRYABLE as exc:
                await self._run(self._drop)
                LOG.warning("hyperv.reconnect_failed", where=self.where, error=str(exc))
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self._healthy = True
            LOG.info("hyperv.reconnected", where=self.where)
            return

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            if self._healthy:
                with contextlib.suppress(DriverError):
                    await self.run("$null", "probing the host")

    # --- running ----------------------------------------------------------------------------

    async def run(self, script: str, what: str) -> str:
        """Run a PowerShell script on the host; its stdout. CommandFailed with the cmdlet's
        message when it ends in an error; Unreachable (and reconnecting) when the host
        cannot be reached."""
        if self._closed:
            raise DriverError(f"the connection to {self.where} is closed")
        try:
            stdout, stderr, code = await self._run(lambda: self._execute(script, what))
        except Unreachable as exc:
            self._lost(str(exc))
            raise
        except UNREACHABLE as exc:
            await self._run(self._drop)
            self._lost(str(exc))
            raise Unreachable(f"{self.where} is unreachable while {what}: {exc}") from None
        except ssl.SSLError as exc:
            await self._run(self._drop)
            self._lost(str(exc))
            raise Unreachable(f"{self.where}: TLS failed while {what}: {exc}") from None
        except InvalidCredentialsError:
            await self._run(self._drop)
            raise DriverError(
                f"{what}: {self.where} refused the credentials of user {self.cfg.username!r}: "
                "check [hyperv] username, password and transport"
            ) from None
        except WSManFaultError as exc:
            await self._run(self._drop)  # the next command opens a new shell
            raise DriverError(f"{what}: {self.where} answered a fault: {exc.reason}") from None
        except WinRMError as exc:
            await self._run(self._drop)
            raise DriverError(f"{what}: {self.where}: {exc}") from None
        if code != 0:
            message = error_message(stderr) or stderr.strip() or f"exit code {code}"
            raise CommandFailed(f"{what}: {message}")
        return stdout
