"""nats-py's connect options from hvmesh's [nats] settings: servers, credentials and TLS.

Credentials are chosen as the nats CLI chooses a context's: a `.creds` file, else user
and password, else an nkey seed file (with `user_jwt`: the seed signs for that JWT); a
token is sent with any of them. File names may start with `~` and hold `$VARIABLES`.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from hvmesh.core.config import NatsSection


class NatsOptionError(ValueError):
    """A [nats] setting (or a context's field) that cannot be used as it is."""


def servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


def _file(value: str, what: str) -> str:
    path = os.path.expanduser(os.path.expandvars(value))
    if not os.path.isfile(path):
        raise NatsOptionError(f"{what} {value}: no such file")
    return path


def _creds_text(user_jwt: str, seed_file: str) -> str:
    """A .creds file's text, as nsc writes one, from a JWT and an nkey seed file."""
    with open(seed_file, encoding="ascii") as fh:
        seed = fh.read().strip()
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt.strip()}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
    )


def tls_context(cfg: NatsSection) -> ssl.SSLContext | None:
    """The TLS context for a client certificate and/or a CA; None when neither is set."""
    if not (cfg.tls_cert or cfg.tls_key or cfg.tls_ca):
        return None
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise NatsOptionError("a TLS client certificate needs both tls_cert and tls_key")
    ca = _file(cfg.tls_ca, "TLS CA file") if cfg.tls_ca else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except ssl.SSLError as exc:
        raise NatsOptionError(f"TLS CA file {cfg.tls_ca}: {exc.reason or exc}") from None
    if cfg.tls_cert:
        cert = _file(cfg.tls_cert, "TLS certificate")
        key = _file(cfg.tls_key, "TLS key")
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise NatsOptionError(
                f"TLS certificate {cfg.tls_cert} with key {cfg.tls_key}: {exc.reason or exc}"
            ) from None
    return context


def connect_options(cfg: NatsSection) -> dict[str, Any]:
    """nats.connect keyword arguments for `cfg` (servers, credentials, TLS, inbox prefix)."""
    opts: dict[str, Any] = {"servers": servers(cfg.url)}
    if cfg.creds:
        opts["user_credentials"] = _file(cfg.creds, "creds file")
    elif cfg.user:
        opts["user"] = cfg.user
        opts["password"] = cfg.password
    elif cfg.nkey:
        seed = _file(cfg.nkey, "nkey seed file")
        if cfg.user_jwt:
            from nats.aio.client import RawCredentials

            opts["user_credentials"] = RawCredentials(_creds_text(cfg.user_jwt, seed))
        else:
            opts["nkeys_seed"] = seed
    if cfg.token:
        opts["token"] = cfg.token
    tls = tls_context(cfg)
    if tls is not None:
        opts["tls"] = tls
    if cfg.tls_first:
        opts["tls_handshake_first"] = True
    if cfg.inbox_prefix:
        opts["inbox_prefix"] = cfg.inbox_prefix
    return opts


def describe(exc: BaseException, timeout: float | None = None) -> str:
    """Why connecting failed, in a few words: "connection refused", "authorization failed"."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s" if timeout else "no answer in time"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = str(exc).removeprefix("nats: ").strip("'")
    return text or type(exc).__name__
