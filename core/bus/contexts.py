"""NATS CLI contexts: written by `hvmesh up`, read by hvmesh's CLI as `nats --context` reads them.

A context is `$XDG_CONFIG_HOME/nats/context/NAME.json` (`~/.config` when the variable is
unset); `nats context select NAME` writes NAME into `$XDG_CONFIG_HOME/nats/context.txt`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec

from hvmesh.core.config import NatsSection

DEFAULT = "hvmesh-admin"
DEFAULT_URL = "nats://127.0.0.1:4222"

# Fields of a nats CLI context that change how it connects and that hvmesh cannot honour:
# connecting without them would reach the server some other way, so they are refused.
UNSUPPORTED = {
    "nsc": "an nsc lookup (give its creds file instead)",
    "socks_proxy": "a SOCKS proxy",
    "windows_cert_store": "a Windows certificate store",
}


class ContextError(ValueError):
    """A context that is missing, unreadable, or asks for what hvmesh cannot do."""


class Context(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields of a NATS CLI context that hvmesh connects with."""

    url: str = ""
    user: str = ""
    password: str = ""
    token: str = ""
    creds: str = ""
    nkey: str = ""
    user_jwt: str = ""
    cert: str = ""
    key: str = ""
    ca: str = ""
    tls_first: bool = False
    inbox_prefix: str = ""
    description: str = ""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nats"


def context_dir() -> Path:
    return config_dir() / "context"


def selected() -> str:
    """The context `nats context select` chose ("" when none is)."""
    try:
        return (config_dir() / "context.txt").read_text().strip()
    except OSError:
        return ""


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
    """Context `name`, or None when there is no such file."""
    if not name or "/" in name or ".." in name:
        raise ContextError(f"invalid NATS context name {name!r}")
    path = context_dir() / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ContextError(f"cannot read NATS context {name!r} ({path}): {exc}") from None
    if not isinstance(raw, dict):
        raise ContextError(f"NATS context {name!r} ({path}) is not a JSON object")
    for field, what in UNSUPPORTED.items():
        if raw.get(field):
            raise ContextError(f"NATS context {name!r} uses {what}, which hvmesh does not support")
    known = {f: raw[f] for f in Context.__struct_fields__ if raw.get(f) not in (None, "")}
    try:
        return msgspec.convert(known, Context)
    except msgspec.ValidationError as exc:
        raise ContextError(f"NATS context {name!r} ({path}): {exc}") from None


def apply(ctx: Context, base: NatsSection) -> NatsSection:
    """`base` with the connection of `ctx` in place of its own."""
    return msgspec.structs.replace(
        base,
        url=ctx.url or DEFAULT_URL,
        user=ctx.user,
        password=ctx.password,
        token=ctx.token,
        creds=ctx.creds,
        nkey=ctx.nkey,
        user_jwt=ctx.user_jwt,
        tls_cert=ctx.cert,
        tls_key=ctx.key,
        tls_ca=ctx.ca,
        tls_first=ctx.tls_first,
        inbox_prefix=ctx.inbox_prefix,
    )


def settings(name: str | None, base: NatsSection) -> NatsSection:
    """The connection settings for context `name`, else for the default context.

    A named context must exist. Without one: the context `nats context select` chose
    (which must exist too), else `hvmesh-admin` if it exists, else `base` unchanged.
    """
    if name:
        ctx = read(name)
        if ctx is None:
            raise ContextError(f"no NATS context named {name!r} in {context_dir()}")
        return apply(ctx, base)
    chosen = selected()
    if chosen:
        ctx = read(chosen)
        if ctx is None:
            raise ContextError(
                f"the selected NATS context {chosen!r} ({config_dir() / 'context.txt'}) "
                f"does not exist in {context_dir()}"
            )
        return apply(ctx, base)
    ctx = read(DEFAULT)
    return base if ctx is None else apply(ctx, base)
