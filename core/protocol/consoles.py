"""Console sessions on the wire: the servers.console request, its token record, the
proxy's request to an agent, and the framing of the bytes that flow between them.

A session's bytes travel on two subjects private to it (core/protocol/subjects.py
console_in and console_out). Every message starts with one byte saying what it is:
DATA (console bytes follow), CREDIT (the receiver may take this many more bytes, as
ASCII digits), PING (the sender is alive) and CLOSE (the session is over; a reason may
follow). A sender never has more unacknowledged DATA bytes out than the receiver granted,
so neither end holds more than its window whatever the other does.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from hvmesh.core.protocol.base import Record, Request

ConsoleProtocol = Literal["serial", "vnc"]

# Framing: the first byte of every message of a session.
DATA = b"D"
CREDIT = b"C"
PING = b"P"
CLOSE = b"X"

#: Bytes a receiver grants at the start: what may be in flight towards it at once.
WINDOW = 256 * 1024
#: The most console bytes in one DATA message.
CHUNK = 16 * 1024
#: Seconds between PINGs from each end while a session is open.
PING_INTERVAL = 5.0
#: A session whose other end said nothing for this long is closed.
PEER_TIMEOUT = 20.0
#: The longest `console_token_ttl` may be (the token bucket keeps records this long).
MAX_TOKEN_TTL = 3600.0


class ServerConsole(Request):
    """servers.console: a one-time URL to a server's live console (Nova's remote-consoles)."""

    id: str
    protocol: ConsoleProtocol = "serial"


class ConsoleToken(Record):
    """A console token's record, stored under the SHA-256 of the token (never the token).

    One-time: the proxy deletes it with compare-and-set as it opens the session.
    """

    server_id: str
    host: str
    protocol: ConsoleProtocol
    project: str
    user: str
    issued_at: float
    expires_at: float


class ConsoleOpen(Struct, kw_only=True):
    """The proxy asks a host's agent to open a server's console for one session."""

    session: Annotated[str, Meta(pattern=r"^[a-f0-9]{32}$")]
    server_id: str
    protocol: ConsoleProtocol
    window: Annotated[int, Meta(ge=CHUNK)] = WINDOW


class ConsoleOpened(Struct, kw_only=True):
    """The agent's answer: the console is open; what it lets the proxy send at once."""

    session: str
    window: int = WINDOW
