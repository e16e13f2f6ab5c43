"""Property-based fuzzing of every API endpoint, as admin and as a tenant: bodies made from
the endpoint's own request type (valid, or with one field given a hostile value), random
JSON under its field names, any JSON, and bytes that are not JSON. Never a 5xx, never a
crash (the API answers a PING after), and a refused request changes nothing.

The endpoints are the API service's own list, so a new endpoint is fuzzed without a
change here. Under CI the examples are derandomized: a run is reproducible.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import msgspec.inspect as mi
import nats.errors
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from hvmesh.core.api.service import ApiService
from hvmesh.core.bus.micro import Raw
from hvmesh.core.protocol import subjects
from hvmesh.core.state.store import BUCKETS
from tests.conftest import IN_CI
from tests.support import ApiClient, Deployment, fast_config, make_flavor_image, open_deployment

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Examples per endpoint: about 50 endpoints, so a few hundred requests per caller in all.
EXAMPLES = int(os.environ.get("HVMESH_FUZZ_EXAMPLES", "50"))
REPLY_TIMEOUT = 20.0  # seconds the API may take to answer one request before it counts as hung

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=IN_CI,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PUBLIC_KEY = (
    "ssh-ed25519 "
    + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)).decode()
)

# Strings that have meant trouble somewhere: NATS subject and KV key characters, paths,
# numbers and keywords as text, dates, addresses, SQL, policy syntax, lengths at a bound.
TRICKY = [
    "", " ", ".", "a.", ".a", "a..b", "*", ">", "a b", "\x00", "\t", "é", "😀", "\ud7ff",
    "-1", "0", "1e999", "NaN", "null", "true", "$SRV.PING", "hvmesh.api.>", "_INBOX.x",
    "../../etc/passwd", "/", "\\", "ACTIVE", "SHUTOFF", "admin", "DEMO", "HVMESH", "",
    "SELECT 1", "SELECT * FROM hosts", "DROP TABLE hosts", "SELECT range(100000000)",
    "2025-01-01", "2025-13-45T99:99", "9999-12-31T23:59:59+14:00", "0001-01-01", "CUSTOM_GPU",
    "VCPU", "affinity", "soft-anti-affinity", "reboot", "qcow2", "10.0.0.0/24", "10.0.0.5",
    "10.0.0.0/33", "::1", "fe80::/10", "300.1.1.1", "0.0.0.0/0", "255.255.255.255",
    "ff:ff:ff:ff:ff:ff", "ssh-rsa AAAA", PUBLIC_KEY, "(", "[", "%(project_id)s", "role:admin",
    "hw:cpu_policy", "x" * 255, "x" * 256, "é" * 255,
]  # fmt: skip

INTS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 4094, 4095, 2**31, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=24),
    st.sampled_from(TRICKY),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
# Values at and past the bounds: long strings, many-item maps and lists, deep nesting.
EXTREME = st.one_of(
    st.builds(lambda s, n: s * n, st.sampled_from(["a", "é", ".", "0"]), st.sampled_from([255, 256, 4096, 70_000])),
    st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from([128, 129, 2000])),
    st.builds(lambda n: ["x"] * n, st.sampled_from([16, 17, 32, 33, 65, 1001])),
    st.builds(lambda n: json.loads("[" * n + "]" * n), st.sampled_from([100, 500])),
)  # fmt: skip
HEADER_TEXT = st.from_regex(r"[ -~]{0,24}", fullmatch=True)


@dataclass
class Case:
    """One request: who sends it, the body, and headers."""

    caller: str
    data: bytes
    headers: dict[str, str] | None = None


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def valid(t: mi.Type, refs: list[str]) -> st.SearchStrategy[Any]:
    """Values of msgspec type `t` that decode, the records' own ids and names among them."""
    if isinstance(t, mi.StrType):
        lo, hi = t.min_length or 0, t.max_length if t.max_length is not None else 40
        fits = [r for r in refs if lo <= len(r) <= hi]
        if t.pattern:
            pattern = re.compile(t.pattern)
            fits = [r for r in fits if pattern.search(r)]
            made = st.from_regex(t.pattern).filter(lambda v: lo <= len(v) <= hi)
        else:
            made = st.text(min_size=lo, max_size=min(hi, max(lo, 24)))
        return st.sampled_from(fits) | made if fits else made
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -2)
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else lo + 2**40)
        return st.integers(min_value=lo, max_value=min(hi, lo + 8)) | st.sampled_from([lo, hi])
    if isinstance(t, mi.FloatType):
        return st.floats(min_value=t.ge, max_value=t.le, allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(sorted(t.values, key=str))
    if isinstance(t, mi.DictType):
        return st.dictionaries(valid(t.key_type, refs), valid(t.value_type, refs), max_size=3)
    if isinstance(t, mi.ListType):
        return st.lists(valid(t.item_type, refs), max_size=3)
    if isinstance(t, mi.UnionType):
        return st.one_of([valid(member, refs) for member in t.types])
    if isinstance(t, mi.StructType):
        required = {f.encode_name: valid(f.type, refs) for f in t.fields if f.required}
        optional = {f.encode_name: valid(f.type, refs) for f in t.fields if not f.required}
        if t.tag_field is not None:
            required[t.tag_field] = st.just(t.tag)
        return st.fixed_dictionaries(required, optional=optional)
    return JSON


def spoiled(body: dict[str, Any], name: str, value: Any, replace: bool) -> dict[str, Any]:
    """A valid body with one field given a hostile value (or dropped, or a stranger added)."""
    if replace:
        return {**body, name: value}
    return {k: v for k, v in body.items() if k != name}


def field_names(t: mi.Type) -> list[str]:
    structs = t.types if isinstance(t, mi.UnionType) else (t,)
    names = {f.encode_name for s in structs if isinstance(s, mi.StructType) for f in s.fields}
    return sorted(names | {"action", "colour"})


def cases(body: Any, refs: list[str]) -> st.SearchStrategy[Case]:
    """Requests for an endpoint whose body is `body`: valid ones, valid ones with one field
    spoiled, random JSON under its field names, any JSON, and bytes that are not JSON."""
    real = st.sampled_from(refs)
    hostile = st.one_of(real, SCALARS, JSON, EXTREME)
    callers = st.sampled_from(["admin", "demo"])
    if body is Raw:  # images.upload: the chunk is the body; the image and offset are headers
        headers = st.fixed_dictionaries(
            {},
            optional={
                "Hvmesh-Image": real | HEADER_TEXT,
                "Hvmesh-Offset": st.sampled_from(["0", "-1", "1", "99999999999999999999"])
                | HEADER_TEXT,
            },
        )
        return st.builds(Case, callers, st.binary(max_size=256), headers)
    t = mi.type_info(body)
    names = field_names(t)
    good = valid(t, refs)
    bad = st.builds(spoiled, good, st.sampled_from(names), hostile, st.booleans())
    loose = st.fixed_dictionaries({}, optional=dict.fromkeys(names, hostile))
    data = st.one_of(
        good.map(_dump), bad.map(_dump), bad.map(_dump), loose.map(_dump), JSON.map(_dump),
        st.binary(max_size=64),
    )  # fmt: skip
    forged = st.fixed_dictionaries(
        {}, optional={"Nats-Request-Info": JSON.map(json.dumps) | HEADER_TEXT}
    )
    return st.builds(Case, callers, data, st.none() | st.none() | st.none() | forged)


def api_endpoints() -> list[tuple[str, Any]]:
    """Every endpoint the API service registers, as (subject, body type)."""
    api = ApiService(Client(), fast_config("nats://127.0.0.1:4222", "unused"))
    return [(subject, body) for _, subject, _, body in api.service._pending]


ENDPOINTS = api_endpoints()


@dataclass
class World:
    """The API alone on a real nats-server, with records of both callers to aim at."""

    dep: Deployment
    clients: dict[str, ApiClient]
    refs: list[str]
    sequences: dict[str, int] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)

    async def stream_sequences(self) -> dict[str, int]:
        infos = await self.dep.nc.jetstream().streams_info()
        return {i.config.name: i.state.last_seq for i in infos if i.config.name != "KV_heartbeats"}

    async def all_records(self) -> dict[str, Any]:
        assert self.dep.store is not None
        state: dict[str, Any] = {}
        for name in BUCKETS:
            bucket = getattr(self.dep.store, name)
            state[name] = {e.key: msgspec.to_builtins(e.value) async for e in bucket.entries()}
        return state

    async def probe(self, subject: str, case: Case) -> None:
        """Send one request; a refusal must be a 4xx that changed nothing."""
        before = await self.stream_sequences()
        if before != self.sequences:  # an accepted request changed records: look again
            self.records, self.sequences = await self.all_records(), before
        nc = self.clients[case.caller].nc
        if case.caller != "admin" and not subject.startswith(f"{subjects.API_PREFIX}."):
            # A site's own requests (hvmesh-site.*) are not exported to tenant accounts.
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request(subject, case.data, timeout=REPLY_TIMEOUT, headers=case.headers)
            return
        msg = await nc.request(subject, case.data, timeout=REPLY_TIMEOUT, headers=case.headers)
        code = int((msg.headers or {}).get("Nats-Service-Error-Code") or 0)
        said = f"{subject} as {case.caller} with {case.data[:300]!r} {case.headers or ''}"
        assert code < 500, f"{said}: {code} {msg.data[:500]!r}"
        if not code:
            return
        assert json.loads(msg.data)["error"]["message"], f"{said}: an error without a message"
        after = await self.stream_sequences()
        if after == before:
            return
        kv = {n for n in after if n.startswith("KV_") and n[3:] in BUCKETS}
        moved = {n for n in after if after[n] != before.get(n) and n not in kv}
        assert not moved, f"{said}: refused with {code}, yet wrote to {sorted(moved)}"
        assert await self.all_records() == self.records, f"{said}: refused, yet changed records"


async def seed(dep: Deployment, admin: ApiClient, demo: ApiClient) -> list[str]:
    """Records of every kind, of the admin and of the tenant; their ids and names. The
    tenant's server is made ACTIVE on a host (no conductor runs here), so its actions get
    past the state checks."""
    await make_flavor_image(admin)
    flavor = (await admin("flavors.get", {"name": "m1.small"}))["flavor"]
    image = (await admin("images.get", {"name": "cirros"}))["image"]
    queued = (
        await demo("images.create", {"name": "mine", "upload": True, "visibility": "private"})
    )["image"]
    net = (await admin("networks.create", {"name": "net1", "cidr": "10.9.0.0/24", "shared": True}))[
        "network"
    ]
    port = (await demo("ports.create", {"network": "net1", "name": "p1"}))["port"]
    await demo("keypairs.create", {"name": "kp", "public_key": PUBLIC_KEY})
    group = (await demo("server_groups.create", {"name": "grp", "policy": "anti-affinity"}))[
        "server_group"
    ]
    agg = (await admin("aggregates.create", {"name": "agg", "metadata": {"ssd": "true"}}))[
        "aggregate"
    ]
    mine = (await demo("servers.create", {"name": "web", "flavor": "m1.small", "image": "cirros"}))[
        "server"
    ]
    theirs = (
        await admin("servers.create", {"name": "ops", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    assert dep.store is not None
    await dep.store.servers.mutate(
        mine["id"],
        lambda s: msgspec.structs.replace(
            s, vm_state="active", task_state=None, power_state=1, host="fake-1"
        ),
    )
    events = await demo("servers.events.list", {"id": mine["id"]})
    request_ids = [e["request_id"] for e in events["instance_actions"]]
    return [
        flavor["id"], "m1.small", image["id"], "cirros", queued["id"], "mine", net["id"], "net1",
        port["id"], "p1", "kp", group["id"], "grp", str(agg["id"]), "agg", mine["id"], "web",
        theirs["id"], "ops", *request_ids, "DEMO", "admin", "fake-1", "capacity", "consumers",
    ]  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """The API service alone: nothing else writes, so any change is a request's doing."""
    async with open_deployment(tmp_path_factory.mktemp("fuzz")) as dep:
        cfg = dep.config()
        await dep.start(ApiService(await dep.service_connection(), cfg))
        clients = {
            "admin": ApiClient(await dep.connect("admin")),
            "demo": ApiClient(await dep.connect("demo")),
        }
        refs = await seed(dep, clients["admin"], clients["demo"])
        yield World(dep, clients, refs)


async def test_every_endpoint_is_fuzzed(world: World) -> None:
    api = ApiService(world.dep.nc, world.dep.config())
    assert [(p[1], p[3]) for p in api.service._pending] == ENDPOINTS


@pytest.mark.parametrize(
    ("subject", "body"), ENDPOINTS, ids=[e[0].removeprefix("hvmesh.api.") for e in ENDPOINTS]
)
async def test_random_input_is_never_a_5xx_and_a_refusal_changes_nothing(
    world: World, subject: str, body: Any
) -> None:
    loop = asyncio.get_running_loop()

    @FUZZ_SETTINGS
    @given(case=cases(body, world.refs))
    def fuzz(case: Case) -> None:
        asyncio.run_coroutine_threadsafe(world.probe(subject, case), loop).result(REPLY_TIMEOUT * 3)

    await asyncio.to_thread(fuzz)
    admin = world.clients["admin"]  # the service lives on and answers
    pong = await admin.nc.request(f"$SRV.PING.{subjects.API_SERVICE}", b"", timeout=5)
    assert json.loads(pong.data)["name"] == subjects.API_SERVICE
    assert "flavors" in await world.clients["demo"]("flavors.list")
