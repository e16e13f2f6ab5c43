"""Agents' own NATS users: NKEY users of the HVMESH account, each permitted only its hosts' subjects.

`hvmesh manage agent-credentials HOST` (and `hvmesh up`, for its simulated hosts) issues
one: an nkey seed file the agent's `[nats] nkey` names, and a user in
<conf-dir>/hvmesh-users.conf, the HVMESH account's users that nats.conf includes (applied by
`nats-server --signal reload`). What a user may publish and subscribe is `permissions`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nkeys

from hvmesh.core import log
from hvmesh.core.protocol import subjects

LOG = log.get_logger(__name__)

USERS_FILE = "hvmesh-users.conf"  # the HVMESH account's users, included by nats.conf
REGISTRY_FILE = "agents.json"  # credential name -> its public key and hosts
SEED_DIR = "agents"  # <conf-dir>/agents/<name>.nk: the seeds, readable by the owner only
NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # as host names (agents/runtime.py)

# The users every deployment has: hvmesh's services and the operator (passwords from the
# environment, see core/ops/natsserver.py).
BASE_USERS = """\
  { user: hvmesh, password: $HVMESH_SERVICE_PASSWORD }
  { user: admin,  password: $HVMESH_ADMIN_PASSWORD }
"""

# JetStream's own names for what hvmesh's buckets and object store are stored in.
JS_API = "$JS.API"


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _kv_key(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


OBJ_STREAM = f"OBJ_{subjects.IMAGE_STORE}"
OBJ_PREFIX = f"$O.{subjects.IMAGE_STORE}"


class CredentialError(ValueError):
    """A credential that cannot be issued as asked (a bad name, an unreadable registry)."""


class AgentUser(msgspec.Struct, kw_only=True):
    """One agent credential: its NKEY user's public key and the hosts it may act for."""

    public_key: str
    hosts: list[str]


@dataclass
class Issued:
    """A credential just issued: where its seed is and the [nats] settings that use it."""

    name: str
    public_key: str
    seed_file: Path
    hosts: list[str]

    @property
    def inbox_prefix(self) -> str:
        return subjects.agent_inbox(self.name)

    def config_snippet(self) -> str:
        """The agent's [nats] settings: its nkey seed file and its own reply subjects."""
        return f"[nats]\nnkey = {self.seed_file}\ninbox_prefix = {self.inbox_prefix}\n"


def check_name(name: str, what: str = "host name") -> str:
    if not NAME.match(name):
        raise CredentialError(
            f"{what} {name!r} is not usable: use letters, digits, '-' and '_' (no dots)"
        )
    return name


def _host_publish(host: str) -> list[str]:
    """What the agent of `host` publishes for that host only."""
    durable = subjects.agent_durable(host)
    work = f"{JS_API}.CONSUMER.%s.{subjects.WORK_STREAM}.{durable}"
    group = f"{JS_API}.CONSUMER.%s.{subjects.WORK_STREAM}.{subjects.group_durable(host)}"
    return [
        subjects.events(host, "*"),  # its events (stream HVMESH_EVENTS)
        subjects.dead_letter(f"agent-{host}"),  # work it gave up on
        subjects.console_out(host, "*"),  # its console sessions' bytes, towards the proxy
        _kv_key(subjects.HOSTS_BUCKET, host),  # its host record (create, CAS update)
        _kv_key(subjects.HEARTBEATS_BUCKET, host),  # its heartbeat
        f"{JS_API}.DIRECT.GET.{_kv_stream(subjects.HOSTS_BUCKET)}."
        + _kv_key(subjects.HOSTS_BUCKET, host),  # reading it where buckets allow direct gets
        # Its durable work consumer: read, made (its filter is its own work subject, checked
        # by the server against the one in the request), pulled from, acknowledged.
        work % "INFO",
        work % "CREATE" + "." + subjects.work(host),
        work % "MSG.NEXT",
        f"$JS.ACK.{subjects.WORK_STREAM}.{durable}.>",
        # The consumer of the group it may lead (agents/work_groups.py): its filter is
        # hvmesh.work.<host>.*, where only hosts whose own records name the group get
        # their work published.
        group % "INFO",
        group % "CREATE" + "." + subjects.group_work(host),
        group % "MSG.NEXT",
        f"$JS.ACK.{subjects.WORK_STREAM}.{subjects.group_durable(host)}.>",
    ]


def _shared_publish() -> list[str]:
    """What every agent publishes, whatever its host: reads, and snapshot uploads.

    hvmesh's buckets answer gets through $JS.API.STREAM.MSG.GET.<stream>, whose key is in
    the request's body, not its subject: an agent can read any record of the buckets it
    reads (hosts, servers, images), as it can read any image's bytes.
    """
    reads = [_kv_stream(b) for b in (subjects.HOSTS_BUCKET, subjects.SERVERS_BUCKET)]
    reads += [_kv_stream(subjects.IMAGES_BUCKET), OBJ_STREAM]
    return [
        f"{JS_API}.STREAM.INFO.*",  # binding buckets and streams (their configuration)
        f"{JS_API}.STREAM.NAMES",  # finding the object store's stream by subject
        # Its host record (refreshed by compare-and-set), server records by id (work
        # still wanted, reconcile), image records and image bytes' meta entries.
        *(f"{JS_API}.STREAM.MSG.GET.{stream}" for stream in reads),
        *(f"{JS_API}.DIRECT.GET.{stream}.>" for stream in reads[1:]),
        # Ephemeral ordered consumers (the server refuses a durable on this subject): every
        # server record in one read (the power-state sync's first scan), image bytes.
        f"{JS_API}.CONSUMER.CREATE.{reads[1]}",
        f"{JS_API}.CONSUMER.CREATE.{OBJ_STREAM}",
        # Image bytes: downloaded to the image cache; snapshots uploaded, sealed, discarded.
        f"{JS_API}.STREAM.PURGE.{OBJ_STREAM}",
        f"{OBJ_PREFIX}.C.*",
        f"{OBJ_PREFIX}.M.*",
    ]


def permissions(name: str, hosts: Sequence[str]) -> dict[str, Any]:
    """The NATS permissions of the credential `name` acting for `hosts`.

    Everything not listed is refused: other hosts' work, events, requests and records,
    server records' writes, tasks, the API and `$SRV`, JetStream's management API.
    Replies to the requests it receives (console log, the audit's) are allowed as NATS
    allows responses: once each, to the requester's reply subject.
    """
    publish = _shared_publish()
    for host in hosts:
        publish += _host_publish(check_name(host))
    subscribe = [subjects.agent_inbox(check_name(name, "credential name")) + ".>"]
    subscribe += [subjects.agent(host, "*") for host in hosts]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": subscribe},
        "allow_responses": True,
    }


def _registry_path(conf_dir: Path) -> Path:
    return conf_dir / REGISTRY_FILE


def registry(conf_dir: Path) -> dict[str, AgentUser]:
    """The agent credentials issued for the nats.conf in `conf_dir`, by name."""
    path = _registry_path(conf_dir)
    if not path.exists():
        return {}
    try:
        return msgspec.json.decode(path.read_bytes(), type=dict[str, AgentUser])
    except (OSError, msgspec.DecodeError) as exc:
        raise CredentialError(f"cannot read {path}: {exc}") from None


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` whole (a reader never sees half of it), with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def users_conf(agents: dict[str, AgentUser]) -> str:
    """hvmesh-users.conf: the HVMESH account's users, agents with their permissions."""
    lines = [
        "# The HVMESH account's users, included by nats.conf. Written by hvmesh",
        "# (`hvmesh manage agent-credentials`, `hvmesh up`): edits here are overwritten.",
        "users: [",
        BASE_USERS.rstrip("\n"),
    ]
    for name, user in sorted(agents.items()):
        perms = json.dumps(permissions(name, user.hosts))
        lines.append(f"  # agent {name}: {', '.join(user.hosts)}")
        lines.append(f'  {{ nkey: "{user.public_key}", permissions: {perms} }}')
    lines.append("]")
    return "\n".join(lines) + "\n"


def write_users_conf(conf_dir: Path) -> Path:
    """(Re)write <conf-dir>/hvmesh-users.conf from the registry; its path."""
    path = conf_dir / USERS_FILE
    _write_private(path, users_conf(registry(conf_dir)), 0o644)
    return path


def issue(conf_dir: Path, name: str, hosts: Sequence[str] | None = None) -> Issued:
    """A new NKEY user for the agent `name` acting for `hosts` (default: the host `name`).

    Reissuing replaces the user's key: the old seed stops working once nats-server has
    reloaded the users file.
    """
    check_name(name, "credential name")
    chosen = [check_name(h) for h in (hosts or [name])]
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = conf_dir / SEED_DIR / f"{name}.nk"
    _write_private(seed_file, seed.decode() + "\n")
    agents = registry(conf_dir)
    agents[name] = AgentUser(public_key=public, hosts=chosen)
    _write_private(_registry_path(conf_dir), msgspec.json.encode(agents).decode())
    write_users_conf(conf_dir)
    LOG.info("agent_credentials.issued", credential=name, hosts=len(chosen), public_key=public)
    return Issued(name=name, public_key=public, seed_file=seed_file, hosts=chosen)


def revoke(conf_dir: Path, name: str) -> bool:
    """Remove the agent `name`'s user and seed; whether there was one."""
    agents = registry(conf_dir)
    if agents.pop(name, None) is None:
        return False
    _write_private(_registry_path(conf_dir), msgspec.json.encode(agents).decode())
    (conf_dir / SEED_DIR / f"{name}.nk").unlink(missing_ok=True)
    write_users_conf(conf_dir)
    return True


def view(issued: Issued, conf_dir: Path) -> dict[str, Any]:
    """What `hvmesh manage agent-credentials` shows of a credential just issued."""
    return {
        "name": issued.name,
        "hosts": issued.hosts,
        "public_key": issued.public_key,
        "seed_file": str(issued.seed_file),
        "users_file": str(conf_dir / USERS_FILE),
        "config": issued.config_snippet(),
    }
