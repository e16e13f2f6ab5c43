"""Identity tokens, sealed: a user's password checked by connecting to NATS as them, then
sealed into the token itself, so that any `hvmesh rest` holding the same keys serves it.

A token is the user, project, expiry and password, encrypted and signed with the first of
`[rest] token_keys` (Fernet: AES-128-CBC and HMAC-SHA256); the service stores neither
tokens nor passwords. Any instance opens it, connects to NATS as its user (a refusal,
say after a password change, is a 401) and keeps that connection for its next requests,
a bounded number of them per user and in all. The project is the user's NATS account,
read from nats-server itself ($SYS.REQ.USER.INFO), so the server-stamped
Nats-Request-Info of every request made with the token stays the only word on who is
asking. A revoked token's id is kept in the KV bucket `rest_revoked_tokens` until the
token would have expired; every instance follows that bucket. Without token_keys, an
instance makes a key of its own at start: its tokens die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from typing import Any

import msgspec
import nats
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError

from hvmesh.core import log
from hvmesh.core.bus import nats_options
from hvmesh.core.bus.micro import ADMIN_PROJECT, INTERNAL_ACCOUNT
from hvmesh.core.config import NatsSection, RestSection
from hvmesh.core.rest.errors import RestError, unauthorized
from hvmesh.core.state import bucket_watch
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

MAX_CONNECTIONS = 4096  # NATS connections (users' tokens) one instance holds at most
CONNECT_TIMEOUT = 5.0  # seconds to connect to NATS as a user
USER_INFO = "$SYS.REQ.USER.INFO"  # nats-server's answer: the connection's user and account
REVOKED_BUCKET = "rest_revoked_tokens"  # key: a revoked token's id, until it expires
MAX_TTL = 86_400.0  # the longest token_ttl: revoked ids are kept that long
NOT_LIVE = "The request you have made requires authentication."


class UserInfo(msgspec.Struct):
    user: str
    account: str


class UserInfoReply(msgspec.Struct):
    data: UserInfo


class Sealed(msgspec.Struct, array_like=True):
    """What a token holds, encrypted: its id, user, password, project, role and times."""

    id: str
    user: str
    password: str
    project: str
    admin: bool
    issued_at: float
    expires_at: float


class Token(msgspec.Struct, kw_only=True):
    """A live token: who it is for, until when, and the user's NATS connection."""

    id: str
    text: str  # the token itself, as clients send it in X-Auth-Token
    user: str
    project: str  # the NATS account's name; "admin" for hvmesh's own account
    roles: tuple[str, ...]
    issued_at: float
    expires_at: float
    nc: Any  # nats.aio.client.Client, used for every request the token makes


def project_of(account: str) -> str:
    return ADMIN_PROJECT if account == INTERNAL_ACCOUNT else account


def sealing(keys: list[str]) -> MultiFernet:
    """The keys tokens are sealed with (the first) and opened with (any); ValueError
    naming a bad one. None given: one made now, for this process only."""
    try:
        return MultiFernet([Fernet(k) for k in keys] or [Fernet(Fernet.generate_key())])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"[rest] token_keys: not a Fernet key ({exc})") from None


class _Revoked:
    """The revoked-token bucket, as `bucket_watch.watch` reads a bucket."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv


class Tokens:
    """Sealed tokens; the NATS connections of the ones in use, bounded; revocations."""

    def __init__(self, nats_cfg: NatsSection, cfg: RestSection, service_nc: Any) -> None:
        self.nats_cfg = nats_cfg
        self.cfg = cfg
        self.fernet = sealing(cfg.token_keys)
        self.service_nc = service_nc
        self._live: OrderedDict[str, Token] = OrderedDict()  # by token id, least recent first
        self._revoked: dict[str, float] = {}  # token id -> when it would have expired
        self._kv: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[Any] = []
        self._opening: dict[str, asyncio.Lock] = {}  # token id -> its connection's opening

    async def start(self) -> None:
        js = self.service_nc.jetstream()
        try:
            self._kv = await js.key_value(REVOKED_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            config = KeyValueConfig(
                bucket=REVOKED_BUCKET,
                history=1,
                ttl=MAX_TTL,
                storage=StorageType.FILE,
                description="hvmesh rest: ids of revoked identity tokens",
                replicas=self.nats_cfg.replicas,
            )
            self._kv = await js.create_key_value(config)

        def take(key: str, value: bytes | None, revision: int) -> None:
            if value:
                self._revoked[key] = float(value)
            else:
                self._revoked.pop(key, None)

        loaded = asyncio.Event()
        watch = bucket_watch.watch(
            _Revoked(self._kv), take, loaded, self._watchers, lambda: None, "rest.revoked"
        )
        self._tasks = [asyncio.create_task(watch)]
        await loaded.wait()

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()
        for token in list(self._live.values()):
            await _close_quietly(token.nc)
        self._live.clear()

    def __len__(self) -> int:
        """The NATS connections this instance holds for tokens."""
        return len(self._live)

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
        now = time.time()
        sealed = Sealed(
            id=secrets.token_urlsafe(16),
            user=info.user or user,
            password=password,
            project=own,
            admin=info.account == INTERNAL_ACCOUNT,
            issued_at=now,
            expires_at=now + self.cfg.token_ttl,
        )
        text = self.fernet.encrypt(msgspec.msgpack.encode(sealed)).decode()
        token = _token(sealed, text, nc)
        await self._keep(token)
        LOG.info("rest.token_issued", user=token.user, project=token.project)
        return token

    async def resolve(self, text: str | None) -> Token:
        """The live token `text` is; 401 for a forged, revoked or expired one, or one
        whose user NATS no longer accepts."""
        try:
            raw = self.fernet.decrypt((text or "").encode(), ttl=int(MAX_TTL) + 60)
            sealed = msgspec.msgpack.decode(raw, type=Sealed)
        except (InvalidToken, msgspec.DecodeError, ValueError):
            raise unauthorized(NOT_LIVE) from None
        if sealed.expires_at <= time.time() or sealed.id in self._revoked:
            await self._forget(sealed.id)
            raise unauthorized(NOT_LIVE)
        async with self._opening.setdefault(sealed.id, asyncio.Lock()):
            live = self._live.get(sealed.id)
            if live is not None and not live.nc.is_closed:
                self._live.move_to_end(sealed.id)
                return live
            nc = await self._connect(sealed.user, sealed.password)
            token = _token(sealed, text or "", nc)
            await self._keep(token)
            return token

    async def revoke(self, token: Token) -> None:
        """The token ends now, on every instance following the revoked bucket."""
        await self._kv.put(token.id, repr(token.expires_at).encode())
        self._revoked[token.id] = token.expires_at
        await self._forget(token.id)
        LOG.info("rest.token_revoked", user=token.user, project=token.project)

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

    async def _keep(self, token: Token) -> None:
        """Hold the token's connection: closing the user's least recently used ones past
        [rest] max_tokens_per_user, and anyone's past MAX_CONNECTIONS (a closed one is
        opened again when its token comes back)."""
        old = self._live.pop(token.id, None)
        if old is not None and old.nc is not token.nc:
            await _close_quietly(old.nc)
        self._live[token.id] = token
        mine = [
            t for t in self._live.values() if (t.user, t.project) == (token.user, token.project)
        ]
        for extra in mine[: max(0, len(mine) - self.cfg.max_tokens_per_user)]:
            await self._forget(extra.id)
        while len(self._live) > MAX_CONNECTIONS:
            await self._forget(next(iter(self._live)))

    async def _forget(self, token_id: str) -> None:
        self._opening.pop(token_id, None)
        token = self._live.pop(token_id, None)
        if token is not None:
            await _close_quietly(token.nc)


def _token(sealed: Sealed, text: str, nc: Any) -> Token:
    return Token(
        id=sealed.id,
        text=text,
        user=sealed.user,
        project=sealed.project,
        roles=("admin", "member", "reader") if sealed.admin else ("member", "reader"),
        issued_at=sealed.issued_at,
        expires_at=sealed.expires_at,
        nc=nc,
    )


def _is_refusal(text: str) -> bool:
    """An error nats-server sends for credentials it does not accept."""
    text = text.lower()
    return "authorization" in text or "authentication" in text


async def _close_quietly(nc: Client) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await nc.close()
