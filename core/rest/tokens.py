"""Identity tokens: a user's password checked by connecting to NATS as them, the connection
kept for the token's life and used for every request the token makes; nothing on disk.

A token is random, held in memory with its expiry and its user's NATS connection, never
the password. The project is the user's NATS account, read from nats-server itself
($SYS.REQ.USER.INFO), so the server-stamped Nats-Request-Info of every request made with
the token stays the only word on who is asking. A restarted service knows no token.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

import msgspec
import nats
from nats.aio.client import Client

from hvmesh.core import log
from hvmesh.core.bus import nats_options
from hvmesh.core.bus.micro import ADMIN_PROJECT, INTERNAL_ACCOUNT
from hvmesh.core.config import NatsSection, RestSection
from hvmesh.core.rest.errors import RestError, unauthorized
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

MAX_TOKENS = 4096  # live tokens (NATS connections) the whole service holds at most
CONNECT_TIMEOUT = 5.0  # seconds to connect to NATS as a user
USER_INFO = "$SYS.REQ.USER.INFO"  # nats-server's answer: the connection's user and account
SWEEP_EVERY = 30.0  # seconds between closing expired tokens' connections, at most


class UserInfo(msgspec.Struct):
    user: str
    account: str


class UserInfoReply(msgspec.Struct):
    data: UserInfo


class Token(msgspec.Struct, kw_only=True):
    """A live token: who it is for, until when, and the user's NATS connection."""

    id: str
    user: str
    project: str  # the NATS account's name; "admin" for hvmesh's own account
    roles: tuple[str, ...]
    issued_at: float
    expires_at: float
    nc: Any  # nats.aio.client.Client, used for every request the token makes


def project_of(account: str) -> str:
    return ADMIN_PROJECT if account == INTERNAL_ACCOUNT else account


class Tokens:
    """Tokens in memory, bounded per user and in all, each with its NATS connection."""

    def __init__(self, nats_cfg: NatsSection, cfg: RestSection) -> None:
        self.nats_cfg = nats_cfg
        self.cfg = cfg
        self._tokens: dict[str, Token] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            await stop_tasks([self._sweeper])
        for token in list(self._tokens.values()):
            await self._close(token)
        self._tokens.clear()

    def __len__(self) -> int:
        return len(self._tokens)

    async def issue(self, user: str, password: str, project: str | None) -> Token:
        """Connect as `user`; 401 when NATS refuses, or when `project` is not theirs."""
        nc = await self._connect(user, password)
        try:
            reply = await nc.request(USER_INFO, b"", timeout=CONNECT_TIMEOUT)
            info = msgspec.json.decode(reply.data, type=UserInfoReply).data
        except Exception as exc:
            await _close_quietly(nc)
            raise RestError(503, f"nats-server did not say who {user} is: {exc!r}") from None
        own = project_of(info.account)
        if project is not None and project != own:
            await _close_quietly(nc)
            raise unauthorized(f"user {user} has no role on project {project}")
        admin = info.account == INTERNAL_ACCOUNT
        now = time.time()
        token = Token(
            id=secrets.token_urlsafe(32),
            user=info.user or user,
            project=own,
            roles=("admin", "member", "reader") if admin else ("member", "reader"),
            issued_at=now,
            expires_at=now + self.cfg.token_ttl,
            nc=nc,
        )
        await self._make_room(token.user, token.project)
        self._tokens[token.id] = token
        LOG.info("rest.token_issued", user=token.user, project=token.project)
        return token

    def get(self, token_id: str | None) -> Token:
        """The live token with this id; 401 for an unknown, revoked or expired one."""
        token = self._tokens.get(token_id or "")
        if token is None or token.expires_at <= time.time() or token.nc.is_closed:
            raise unauthorized("The request you have made requires authentication.")
        return token

    async def revoke(self, token_id: str) -> bool:
        token = self._tokens.pop(token_id, None)
        if token is None:
            return False
        await self._close(token)
        LOG.info("rest.token_revoked", user=token.user, project=token.project)
        return True

    async def _connect(self, user: str, password: str) -> Client:
        """A connection as `user`; 401 as soon as nats-server refuses the credentials."""
        refused = asyncio.Event()

        async def note(exc: Exception) -> None:
            if _is_refusal(str(exc)):
                refused.set()

        # The servers and the CA only: never the service's own credentials, client
        # certificate (which nats-server may map to a user) or inbox prefix.
        bare = msgspec.structs.replace(
            self.nats_cfg,
            user="",
            password="",
            creds="",
            nkey="",
            user_jwt="",
            token="",
            tls_cert="",
            tls_key="",
            inbox_prefix="",
        )
        options = nats_options.connect_options(bare)
        connecting = asyncio.ensure_future(
            nats.connect(
                **options,
                user=user,
                password=password,
                name=f"hvmesh-rest:{user}",
                connect_timeout=CONNECT_TIMEOUT,
                max_reconnect_attempts=-1,
                error_cb=note,
            )
        )
        waiting = asyncio.ensure_future(refused.wait())
        try:
            await asyncio.wait(
                {connecting, waiting},
                timeout=2 * CONNECT_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            await stop_tasks([waiting])
        if connecting.done() and not refused.is_set():
            try:
                return connecting.result()
            except Exception as exc:
                if not _is_refusal(str(exc)):
                    raise RestError(503, f"NATS did not answer: {exc!r}") from None
        await stop_tasks([connecting])
        if refused.is_set() or connecting.done():
            raise unauthorized("The user name or password is wrong.")
        raise RestError(503, f"NATS did not answer within {2 * CONNECT_TIMEOUT:g} s")

    async def _make_room(self, user: str, project: str) -> None:
        """Revoke the user's oldest tokens past the per-user bound, then expired ones,
        and refuse when the service holds MAX_TOKENS live ones."""
        mine = sorted(
            (t for t in self._tokens.values() if (t.user, t.project) == (user, project)),
            key=lambda t: t.issued_at,
        )
        for old in mine[: max(0, len(mine) - self.cfg.max_tokens_per_user + 1)]:
            await self.revoke(old.id)
        await self.sweep()
        if len(self._tokens) >= MAX_TOKENS:
            raise RestError(503, f"the service holds its most tokens ({MAX_TOKENS}): retry later")

    async def sweep(self) -> None:
        """Forget expired tokens and close their connections."""
        now = time.time()
        for token in [t for t in self._tokens.values() if t.expires_at <= now]:
            self._tokens.pop(token.id, None)
            await self._close(token)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(SWEEP_EVERY, self.cfg.token_ttl))
            try:
                await self.sweep()
            except Exception:
                LOG.exception("rest.sweep_failed")

    async def _close(self, token: Token) -> None:
        await _close_quietly(token.nc)


def _is_refusal(text: str) -> bool:
    """An error nats-server sends for credentials it does not accept."""
    text = text.lower()
    return "authorization" in text or "authentication" in text


async def _close_quietly(nc: Client) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await nc.close()
