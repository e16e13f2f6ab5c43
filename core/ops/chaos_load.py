"""The chaos run's load: creates and server actions at a steady rate through the API,
recording every request the API acknowledged and what it answered."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from typing import Any

import msgspec

from hvmesh.core.bus import micro as bus
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol import states as S
from hvmesh.core.state.store import Store

FLAVORS = ("chaos.small", "chaos.medium")
IMAGE = "chaos-image"
NETWORK = "chaosnet"
REQUEST_TIMEOUT = 10.0

# What is asked of a server, by its state: (action body, weight).
CHOICES: dict[str, list[tuple[dict[str, Any], int]]] = {
    S.ACTIVE: [
        ({"action": "stop"}, 3),
        ({"action": "reboot"}, 3),
        ({"action": "resize"}, 1),
        ({"action": "migrate"}, 1),
        ({"action": "live-migrate"}, 1),
        ({"action": "delete"}, 2),
    ],
    S.STOPPED: [({"action": "start"}, 4), ({"action": "migrate"}, 1), ({"action": "delete"}, 2)],
    S.RESIZED: [({"action": "confirm-resize"}, 3), ({"action": "revert-resize"}, 1)],
    S.ERROR: [({"action": "delete"}, 3), ({"action": "reboot", "type": "HARD"}, 1)],
}


MULTI_MIN = 2  # a multi-create's min_count (its max_count is one more)


class Ledger(msgspec.Struct, kw_only=True):
    """What the API answered: servers whose create or delete it acknowledged, and every
    request's outcome by kind (acknowledged, refused: a 4xx, failed: a 5xx other than
    503, unanswered: no reply or 503)."""

    created: dict[str, str] = msgspec.field(default_factory=dict)  # server id -> request kind
    #: multi-create server id -> every server id its request answered with
    together: dict[str, list[str]] = msgspec.field(default_factory=dict)
    deleted: set[str] = msgspec.field(default_factory=set)
    # Servers a delete was sent for that got no answer (no reply, or a 503: it may or
    # may not have taken effect): gone or still there, either is right.
    maybe_deleted: set[str] = msgspec.field(default_factory=set)
    requests: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    failures: list[str] = msgspec.field(default_factory=list)  # 5xx answers, first ones

    def count(self, kind: str, outcome: str) -> None:
        self.requests.setdefault(kind, {}).setdefault(outcome, 0)
        self.requests[kind][outcome] += 1

    def live(self) -> list[str]:
        return [sid for sid in self.created if sid not in self.deleted]

    def outcome_totals(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for outcomes in self.requests.values():
            totals.update(outcomes)
        return totals


async def prepare(nc: Any) -> None:
    """The flavors, image and network the load uses."""
    for name, vcpus, ram in ((FLAVORS[0], 1, 256), (FLAVORS[1], 2, 512)):
        await call(nc, "flavors", "create", {"name": name, "vcpus": vcpus, "ram_mb": ram})
    await call(nc, "images", "create", {"name": IMAGE, "disk_format": "qcow2"})
    await call(nc, "networks", "create", {"name": NETWORK, "cidr": "10.64.0.0/16", "shared": True})


async def call(nc: Any, resource: str, verb: str, body: dict[str, Any]) -> Any:
    return await bus.call(nc, subjects.api(resource, verb), body, timeout=REQUEST_TIMEOUT)


class Load:
    """Requests at `rate` per second, at most `concurrency` in flight; about half are
    creates (one in eight a multi-create) while fewer than `live_target` servers live."""

    def __init__(
        self,
        nc: Any,
        store: Store,
        rng: random.Random,
        ledger: Ledger,
        rate: float,
        concurrency: int,
        live_target: int,
    ) -> None:
        self.nc = nc
        self.store = store
        self.rng = rng
        self.ledger = ledger
        self.rate = rate
        self.concurrency = concurrency
        self.live_target = live_target
        self.sent = 0
        self._names = 0
        self.started = 0.0
        self.ended = 0.0
        self.answered: list[float] = []  # when each answer came (any answer, 4xx and 5xx too)

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        end = loop.time() + seconds
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task[None]] = set()
        next_at = loop.time()
        while loop.time() < end:
            await slots.acquire()
            task = asyncio.create_task(self._one(slots))
            running.add(task)
            task.add_done_callback(running.discard)
            next_at += 1.0 / self.rate
            # Pacing the requests to the configured rate.
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        if running:
            await asyncio.gather(*running)
        self.ended = loop.time()

    def longest_pause(self) -> float:
        """The longest time in the load (seconds) during which the API answered nothing."""
        times = [self.started, *sorted(self.answered), self.ended]
        return round(max(b - a for a, b in itertools.pairwise(times)), 1)

    async def _one(self, slots: asyncio.Semaphore) -> None:
        try:
            self.sent += 1
            live = self.ledger.live()
            share = 0.45 if len(live) < self.live_target else 0.1
            if len(live) < 3 or self.rng.random() < share:
                await self.create()
            else:
                await self.act(self.rng.choice(live))
        except Exception as exc:  # the load's own fault: kept in the report, never hidden
            self.ledger.count("load", "error")
            self.ledger.failures.append(f"load: {type(exc).__name__}: {exc}"[:300])
        finally:
            slots.release()

    async def create(self) -> None:
        self._names += 1
        multi = self.rng.random() < 0.125
        kind = "multi-create" if multi else "create"
        body: dict[str, Any] = {
            "name": f"chaos-{self._names}",
            "flavor": FLAVORS[0],
            "image": IMAGE,
            "networks": [NETWORK],
        }
        if multi:
            body.update(min_count=MULTI_MIN, max_count=MULTI_MIN + 1)
        reply = await self.request(kind, "servers", "create", body)
        if reply is not None:
            ids = [view["id"] for view in reply.get("servers") or [reply["server"]]]
            for sid in ids:
                self.ledger.created[sid] = kind
                if multi:
                    self.ledger.together[sid] = ids

    async def act(self, server_id: str) -> None:
        try:
            entry = await self.store.servers.get(server_id)
        except Exception:  # nats-server away: this turn is lost, as a request would be
            self.ledger.count("read", "unanswered")
            return
        if entry is None:
            return
        server = entry.value
        if server.task_state is not None:
            if self.rng.random() < 0.15:  # a delete cuts any task short
                await self.delete(server_id)
            return
        options = CHOICES.get(server.vm_state, [({"action": "delete"}, 1)])
        body = dict(self.rng.choices([o for o, _ in options], [w for _, w in options])[0])
        if body["action"] == "delete":
            await self.delete(server_id)
            return
        if body["action"] == "resize":
            body["flavor"] = FLAVORS[1] if server.flavor.name == FLAVORS[0] else FLAVORS[0]
        await self.request(body["action"], "servers", "action", {"id": server_id, **body})

    async def delete(self, server_id: str) -> None:
        unanswered = self.ledger.requests.get("delete", {}).get("unanswered", 0)
        if await self.request("delete", "servers", "delete", {"id": server_id}) is not None:
            self.ledger.deleted.add(server_id)
        elif self.ledger.requests.get("delete", {}).get("unanswered", 0) > unanswered:
            self.ledger.maybe_deleted.add(server_id)

    async def request(self, kind: str, resource: str, verb: str, body: dict[str, Any]) -> Any:
        """The reply, or None when the API refused, failed or did not answer."""
        try:
            reply = await call(self.nc, resource, verb, body)
        except errors.ServiceUnavailable:
            self.ledger.count(kind, "unanswered")
        except errors.HvmeshError as exc:
            self.answered.append(asyncio.get_running_loop().time())
            if exc.code < 500:
                self.ledger.count(kind, "refused")
            else:
                self.ledger.count(kind, "failed")
                if len(self.ledger.failures) < 20:
                    self.ledger.failures.append(f"{kind}: {exc.code} {exc}")
        except Exception:  # the connection went away with nats-server: no answer
            self.ledger.count(kind, "unanswered")
        else:
            self.answered.append(asyncio.get_running_loop().time())
            self.ledger.count(kind, "acknowledged")
            return reply
        return None
