"""JetStream state: the KV buckets and streams hvmesh keeps, and compare-and-set on records.

Every state change is a write with the revision the writer read (`Bucket.update`), so
two writers can never both win; `Bucket.mutate` is the read-modify-write loop built on it.
Records are JSON so `nats kv get servers <id>` is readable.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from hvmesh.core import log
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.base import encode
from hvmesh.core.protocol.client_tokens import ClientToken
from hvmesh.core.protocol.consoles import MAX_TOKEN_TTL, ConsoleToken
from hvmesh.core.protocol.migration_records import MigrationRecord
from hvmesh.core.protocol.quota_records import QuotaLimits, QuotaUsage, UsageRecord
from hvmesh.core.protocol.records import (
    Aggregate,
    Flavor,
    Heartbeat,
    Host,
    Image,
    InstanceAction,
    Keypair,
    NameClaim,
    Network,
    PlacementLease,
    Port,
    Server,
    ServerGroup,
)
from hvmesh.core.protocol.sites import Site, SiteOutcome
from hvmesh.core.state import kv_read

T = TypeVar("T", bound=msgspec.Struct)

# Bucket name -> record type.
BUCKETS: dict[str, type[msgspec.Struct]] = {
    subjects.SERVERS_BUCKET: Server,
    subjects.HOSTS_BUCKET: Host,
    subjects.FLAVORS_BUCKET: Flavor,
    subjects.IMAGES_BUCKET: Image,
    subjects.HEARTBEATS_BUCKET: Heartbeat,
    subjects.SERVER_GROUPS_BUCKET: ServerGroup,
    subjects.AGGREGATES_BUCKET: Aggregate,
    subjects.SERVER_ACTIONS_BUCKET: InstanceAction,
    subjects.NETWORKS_BUCKET: Network,
    subjects.PORTS_BUCKET: Port,
    subjects.KEYPAIRS_BUCKET: Keypair,
    subjects.PLACEMENT_LEASES_BUCKET: PlacementLease,
    subjects.NAMES_BUCKET: NameClaim,
    subjects.QUOTAS_BUCKET: QuotaLimits,
    subjects.QUOTA_USAGE_BUCKET: QuotaUsage,
    subjects.USAGE_LEDGER_BUCKET: UsageRecord,
    subjects.CLIENT_TOKENS_BUCKET: ClientToken,
    subjects.MIGRATIONS_BUCKET: MigrationRecord,
    subjects.CONSOLE_TOKENS_BUCKET: ConsoleToken,
    subjects.SITES_BUCKET: Site,
    subjects.SITE_OUTCOMES_BUCKET: SiteOutcome,
}

# Buckets whose keys expire on their own (seconds): a placement lease outlives any retry
# of its request by far, and then goes.
# Deleted servers' runs are kept for usage reports for a year and a day.
BUCKET_TTL: dict[str, float] = {
    subjects.PLACEMENT_LEASES_BUCKET: 3600.0,
    subjects.USAGE_LEDGER_BUCKET: 366 * 24 * 3600.0,
    subjects.MIGRATIONS_BUCKET: 366 * 24 * 3600.0,  # moves, for os-migrations, as long
    # A create's client token answers its retries for a day, as clients retry within one.
    subjects.CLIENT_TOKENS_BUCKET: 24 * 3600.0,
    subjects.SITE_OUTCOMES_BUCKET: 7 * 24 * 3600.0,  # as long as the core keeps requests
    subjects.CONSOLE_TOKENS_BUCKET: MAX_TOKEN_TTL,  # a token lives at most this long
}


LOG = log.get_logger(__name__)

#: The most hosts (each with its durable consumer on HVMESH_WORK) one deployment runs.
MAX_HOSTS = 100_000

STREAMS = [
    StreamConfig(
        name=subjects.TASKS_STREAM,
        description="Conductor work queue: one message per task (build, delete, ...).",
        subjects=[subjects.TASKS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=subjects.TIMERS_STREAM,
        description="Conductor timers (action timeouts, resize auto-confirm), due at not_before.",
        subjects=[subjects.TIMERS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=subjects.NOTIFY_STREAM,
        description="Versioned notifications on hvmesh.notify.<project>.<event_type>.",
        subjects=[subjects.NOTIFY_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600.0,
        discard=DiscardPolicy.OLD,
    ),
    StreamConfig(
        name=subjects.WORK_STREAM,
        description="Per-host agent work on hvmesh.work.<host>.",
        subjects=[subjects.WORK_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=120.0,
        # One durable consumer per host: nats-server 2.15 caps a stream at 1,000 unless
        # the stream sets its own limit (-1 no longer means unlimited).
        max_consumers=MAX_HOSTS,
    ),
    StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Agent events on hvmesh.events.<host>.<server>, applied by conductors.",
        subjects=[subjects.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600.0,
        discard=DiscardPolicy.OLD,
    ),
    StreamConfig(
        name=subjects.DEAD_LETTERS_STREAM,
        description="Tasks, events and work given up on, kept for `hvmesh manage tasks`.",
        subjects=[subjects.DEAD_LETTERS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * 24 * 3600.0,
        max_msgs=10_000,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
    ),
]


#: JetStream's "wrong last sequence" error codes: 10071 from one server, 10164 from a
#: replicated stream. Either is a lost compare-and-set.
WRONG_LAST_SEQUENCE = (10071, 10164)


class ReplicasError(RuntimeError):
    """JetStream cannot keep as many copies of a stream as [nats] replicas asks."""


class CasConflict(Exception):
    """Another writer changed the record since it was read."""


class Entry(msgspec.Struct, Generic[T]):
    key: str
    value: T
    revision: int


async def _raise_consumer_limit(
    js: JetStreamContext, have: StreamConfig, want: StreamConfig
) -> None:
    """A stream made before its consumer limit was set gets it (nats-server allows the change)."""
    wanted = want.max_consumers
    if wanted is None or have.max_consumers == wanted:
        return
    try:
        await js.update_stream(have.evolve(max_consumers=wanted))
        LOG.info("store.stream_updated", stream=have.name, max_consumers=wanted)
    except Exception as exc:  # a user not allowed to (an agent): its services will
        LOG.debug("store.stream_not_updated", stream=have.name, error=str(exc))


def conflict_pause(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th lost compare-and-set (0 first).

    The first few retries go at once; after that a random pause, doubling up to 50 ms,
    spreads many writers of one hot record (a network's addresses) so they stop
    colliding instead of spinning through their attempts together.
    """
    if attempt < 3:
        return 0.0
    return random.uniform(0, min(0.05, 0.001 * 2 ** (attempt - 3)))


class Bucket(Generic[T]):
    """One KV bucket of `type_` records with compare-and-set helpers."""

    def __init__(self, kv: KeyValue, type_: type[T]) -> None:
        self.kv = kv
        self.type = type_
        self._decoder = msgspec.json.Decoder(type_)

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    async def get(self, key: str) -> Entry[T] | None:
        """The key's record as its stream's leader holds it now; None if none or deleted."""
        found = await kv_read.last_value(self.kv, key)
        if found is None:
            return None
        data, revision = found
        return Entry(key=key, value=self.decode(data), revision=revision)

    async def must_get(self, key: str, what: str) -> Entry[T]:
        entry = await self.get(key)
        if entry is None:
            raise errors.NotFound(f"{what} {key} not found")
        return entry

    async def create(self, key: str, value: T) -> int:
        """Write a new record; CasConflict if the key already holds one."""
        try:
            return await self.kv.create(key, encode(value))
        except KeyWrongLastSequenceError:
            raise CasConflict(key) from None

    async def update(self, key: str, value: T, revision: int) -> int:
        """Write `value` only if the record is still at `revision`."""
        try:
            return await self.kv.update(key, encode(value), last=revision)
        except KeyWrongLastSequenceError:
            raise CasConflict(key) from None

    async def put(self, key: str, value: T) -> int:
        return await self.kv.put(key, encode(value))

    async def delete(self, key: str, revision: int | None = None) -> None:
        try:
            await self.kv.delete(key, last=revision)
        except KeyWrongLastSequenceError:
            raise CasConflict(key) from None
        except APIError as exc:  # nats-py passes a delete's stale revision on unconverted
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise CasConflict(key) from None
            raise

    async def mutate(
        self,
        key: str,
        change: Callable[[T], T | None],
        attempts: int = 50,
    ) -> Entry[T] | None:
        """Read, apply `change`, write with compare-and-set; retry on conflict.

        `change` returns the new record, or None to leave it as it is. Returns the
        entry as written (or as found), or None when the key does not exist.
        """
        for attempt in range(attempts):
            entry = await self.get(key)
            if entry is None:
                return None
            new = change(msgspec.structs.replace(entry.value))
            if new is None:
                return entry
            try:
                rev = await self.update(key, new, entry.revision)
            except CasConflict:
                await asyncio.sleep(conflict_pause(attempt))
                continue
            return Entry(key=key, value=new, revision=rev)
        raise CasConflict(f"{key}: gave up after {attempts} conflicting writes")

    async def entries(self, prefix: str = "") -> AsyncIterator[Entry[T]]:
        """Every live record (whose key starts with `prefix.`, if given), in one read.

        One ordered consumer reads up to the last message. A write that lands during the
        read is delivered too, so a key can come twice: only its latest revision is kept
        (and a deletion read last removes it).
        """
        js = self.kv._js
        subject = f"{self.kv._pre}{prefix + '.' if prefix else ''}>"
        info = await js.stream_info(self.kv._stream, subjects_filter=subject if prefix else None)
        if info.state.messages == 0 or (prefix and not info.state.subjects):
            return
        sub = await js.subscribe(
            subject,
            stream=self.kv._stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        cut = len(self.kv._pre)
        latest: dict[str, Entry[T] | None] = {}
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=10.0)
                except NatsTimeout:
                    break  # emptied since stream_info looked
                meta = msg.metadata
                key = msg.subject[cut:]
                operation = (msg.headers or {}).get("KV-Operation")
                if msg.data and operation is None:
                    latest[key] = Entry(
                        key=key, value=self.decode(msg.data), revision=meta.sequence.stream
                    )
                else:
                    latest[key] = None
                if meta.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        for entry in latest.values():
            if entry is not None:
                yield entry

    async def values(self, prefix: str = "") -> list[T]:
        return [e.value async for e in self.entries(prefix)]


class Store:
    """The buckets and streams of one hvmesh deployment."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas  # copies of each stream and bucket this store makes
        self._buckets: dict[str, Bucket] = {}

    @property
    def servers(self) -> Bucket[Server]:
        return self._buckets["servers"]

    @property
    def hosts(self) -> Bucket[Host]:
        return self._buckets["hosts"]

    @property
    def flavors(self) -> Bucket[Flavor]:
        return self._buckets["flavors"]

    @property
    def images(self) -> Bucket[Image]:
        return self._buckets["images"]

    @property
    def heartbeats(self) -> Bucket[Heartbeat]:
        return self._buckets["heartbeats"]

    @property
    def server_groups(self) -> Bucket[ServerGroup]:
        return self._buckets["server_groups"]

    @property
    def server_actions(self) -> Bucket[InstanceAction]:
        return self._buckets["server_actions"]

    @property
    def aggregates(self) -> Bucket[Aggregate]:
        return self._buckets["aggregates"]

    @property
    def networks(self) -> Bucket[Network]:
        return self._buckets["networks"]

    @property
    def ports(self) -> Bucket[Port]:
        return self._buckets["ports"]

    @property
    def keypairs(self) -> Bucket[Keypair]:
        return self._buckets["keypairs"]

    @property
    def placement_leases(self) -> Bucket[PlacementLease]:
        return self._buckets["placement_leases"]

    @property
    def names(self) -> Bucket[NameClaim]:
        return self._buckets["names"]

    @property
    def quotas(self) -> Bucket[QuotaLimits]:
        return self._buckets["quotas"]

    @property
    def quota_usage(self) -> Bucket[QuotaUsage]:
        return self._buckets["quota_usage"]

    @property
    def usage_ledger(self) -> Bucket[UsageRecord]:
        return self._buckets["usage_ledger"]

    @property
    def migrations(self) -> Bucket[MigrationRecord]:
        return self._buckets[subjects.MIGRATIONS_BUCKET]

    @property
    def console_tokens(self) -> Bucket[ConsoleToken]:
        return self._buckets[subjects.CONSOLE_TOKENS_BUCKET]

    @property
    def client_tokens(self) -> Bucket[ClientToken]:
        return self._buckets[subjects.CLIENT_TOKENS_BUCKET]

    @property
    def sites(self) -> Bucket[Site]:
        return self._buckets[subjects.SITES_BUCKET]

    @property
    def site_outcomes(self) -> Bucket[SiteOutcome]:
        return self._buckets[subjects.SITE_OUTCOMES_BUCKET]

    async def open(self, create: bool = True) -> Store:
        """Bind (and with `create`, make) every bucket and stream."""
        for name, type_ in BUCKETS.items():
            try:
                kv = await self.js.key_value(name)
            except (BucketNotFoundError, NotFoundError):
                if not create:
                    raise
                kv = await self.js.create_key_value(
                    KeyValueConfig(
                        bucket=name,
                        history=5 if name not in ("heartbeats", *BUCKET_TTL) else 1,
                        ttl=BUCKET_TTL.get(name),
                        storage=StorageType.FILE,
                        description=f"hvmesh {name} records",
                        replicas=self.replicas,
                    )
                )
            self._buckets[name] = Bucket(kv, type_)
        if create:
            from hvmesh.core.state import image_data  # it uses this module's names

            await image_data.open_store(self.js, replicas=self.replicas)
            for cfg in STREAMS:
                try:
                    info = await self.js.stream_info(cfg.name or "")
                except NotFoundError:
                    await self.js.add_stream(cfg.evolve(num_replicas=self.replicas))
                    continue
                await _raise_consumer_limit(self.js, info.config, cfg)
        return self

    async def scale(self) -> list[str]:
        """Give every stream behind this store `replicas` copies, as [nats] replicas asks:
        streams made on one nats-server are scaled up when the core becomes a cluster
        (JetStream copies their messages to the new peers). Returns those changed."""
        changed: list[str] = []
        ours = {cfg.name for cfg in STREAMS}
        for info in await self.js.streams_info():
            name = info.config.name or ""
            # hvmesh's own: its streams, and the buckets and object stores whose
            # description it wrote (every one starts "hvmesh").
            mine = name in ours or (info.config.description or "").startswith("hvmesh")
            if not mine or info.config.num_replicas == self.replicas:
                continue
            try:
                await self.js.update_stream(info.config.evolve(num_replicas=self.replicas))
            except APIError as exc:
                raise ReplicasError(
                    f"stream {name}: cannot keep {self.replicas} copies as [nats] replicas "
                    f"asks ({exc.description}); a cluster needs at least that many nodes"
                ) from exc
            LOG.info(
                "store.stream_scaled",
                stream=name,
                replicas=self.replicas,
                was=info.config.num_replicas,
            )
            changed.append(name)
        return changed
