"""Console tokens: issued by the API for one server and project, spent once by the console proxy.

A token is 32 random bytes (URL-safe base64); the `console_tokens` bucket keeps only its
SHA-256, as Nova's console auth keeps a hash, so reading the bucket gives no usable
token. Spending it deletes its record with compare-and-set on the revision read, so of
two proxies offered the same token at once exactly one succeeds.
"""

from __future__ import annotations

import hashlib
import secrets

from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.consoles import ConsoleToken
from hvmesh.core.state.store import CasConflict, Store


def digest(token: str) -> str:
    """The bucket key of `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


async def issue(store: Store, record: ConsoleToken) -> str:
    """Store `record` under a new token's digest; the token (shown to the caller only)."""
    token = secrets.token_urlsafe(32)
    await store.console_tokens.create(digest(token), record)
    return token


async def spend(store: Store, token: str) -> ConsoleToken | None:
    """The record of `token`, deleted so it cannot be used again; None when it is unknown,
    already spent or expired."""
    if not token or len(token) > 128:
        return None
    key = digest(token)
    entry = await store.console_tokens.get(key)
    if entry is None:
        return None
    try:
        await store.console_tokens.delete(key, revision=entry.revision)
    except CasConflict:  # spent by another proxy a moment ago
        return None
    if entry.value.expires_at < now():
        return None
    return entry.value
