"""NATS CLI context files: written by `hvmesh up`, read by hvmesh's CLI as by `nats --context`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec


class Context(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields of a NATS CLI context that hvmesh uses."""

    url: str
    user: str = ""
    password: str = ""
    creds: str = ""
    description: str = ""


def context_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nats" / "context"


def write(name: str, ctx: Context) -> Path:
    """Write context `name` (owner-readable only, as it holds a password)."""
    directory = context_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(msgspec.json.format(msgspec.json.encode(ctx)))
    return path


def read(name: str) -> Context | None:
    path = context_dir() / f"{name}.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return Context(
        url=raw.get("url", ""),
        user=raw.get("user", ""),
        password=raw.get("password", ""),
        creds=raw.get("creds", ""),
        description=raw.get("description", ""),
    )
