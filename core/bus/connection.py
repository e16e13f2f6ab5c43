"""Connecting to NATS: services keep retrying, the CLI fails at once with the reason."""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

from hvmesh.core import log
from hvmesh.core.bus import nats_options
from hvmesh.core.config import NatsSection

LOG = log.get_logger(__name__)


class ConnectError(ConnectionError):
    """Connecting failed on every server of the first round; the message says why."""


async def connect(cfg: NatsSection, name: str, *, once: bool = False, **kwargs: Any) -> Client:
    """Connect to NATS with the configured URL, credentials and TLS settings.

    Services keep retrying until NATS answers. With `once` (the CLI), each server is
    tried once and the first round's failure is raised at once as a ConnectError, so a
    refused connection is reported as refused rather than as a timeout.
    """
    opts: dict[str, Any] = {
        **nats_options.connect_options(cfg),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
    }
    opts.setdefault("error_cb", _log_error)
    opts.setdefault("disconnected_cb", _log_disconnected)
    opts.setdefault("reconnected_cb", _log_reconnected)
    opts.update(kwargs)
    if not once:
        return await nats.connect(**opts)
    servers, then = len(opts["servers"]) or 1, opts["error_cb"]
    failures: list[Exception] = []
    connected: list[bool] = []

    async def first_round(exc: Exception) -> None:
        """Give up once every server has failed once."""
        if not connected:
            failures.append(exc)
            if len(failures) >= servers:
                raise ConnectError(nats_options.describe(exc, opts["connect_timeout"])) from exc
        await then(exc)

    opts.update(error_cb=first_round, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        nc = await nats.connect(**opts)
    except ConnectError:
        raise
    except (OSError, NatsError) as exc:
        raise ConnectError(nats_options.describe(exc, opts["connect_timeout"])) from exc
    connected.append(True)
    return nc


async def _log_error(exc: Exception) -> None:
    LOG.warning("nats.error", error=f"{type(exc).__name__}: {exc}")


async def _log_disconnected() -> None:
    LOG.info("nats.disconnected")


async def _log_reconnected() -> None:
    LOG.info("nats.reconnected")
