"""The metadata service (Nova's nova-api-metadata): an instance reads its own metadata over HTTP.

A small asyncio HTTP/1.1 server answering GET and HEAD. It tells instances apart by the
source address of the request: the port holding that address (kept in memory from a
watch of the `ports` bucket) names the server, whose record is read from `servers` and
kept for [metadata] cache_seconds. Behind a metadata proxy (Neutron's, or a DNAT on the
host) the proxy's X-Forwarded-For names the instance instead, but only when
[metadata] use_forwarded_for is on and the request comes from one of trusted_proxies.
What is served is built by hvmesh.core.metadata_content.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from typing import Any
from urllib.parse import unquote

import msgspec

from hvmesh.core import log
from hvmesh.core.config import Config, ConfigError
from hvmesh.core.metadata import content as metadata_content
from hvmesh.core.metadata.content import load_vendor_data
from hvmesh.core.protocol.records import Port, Server
from hvmesh.core.state.store import Store
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

MAX_LINE = 8192  # longest request line or header line
MAX_HEADERS = 64  # most header lines in one request
READ_TIMEOUT = 10.0  # seconds a client has to send its request head
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    """An answer other than 200, with the message its body carries."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _address(text: str) -> str | None:
    """The canonical text of an IP address (IPv4-mapped IPv6 as IPv4), or None if not one."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class Request(msgspec.Struct):
    method: str
    path: str
    headers: dict[str, str]


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Parse one request head; HttpError(400/505) when it is malformed or too large."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpError(400, f"request line longer than {MAX_LINE} bytes") from None
    except asyncio.IncompleteReadError:
        raise HttpError(400, "incomplete request line") from None
    try:
        method, target, version = line.decode("ascii").strip().split(" ")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "malformed request line: want METHOD PATH HTTP/1.x") from None
    if not version.startswith("HTTP/"):
        raise HttpError(400, f"malformed request line: {version!r} is not an HTTP version")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505, f"{version} is not supported: use HTTP/1.1")
    if not target.startswith("/"):
        raise HttpError(400, f"request target {target!r} must be a path starting with /")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(400, f"header line longer than {MAX_LINE} bytes") from None
        except asyncio.IncompleteReadError:
            raise HttpError(400, "incomplete request headers") from None
        if raw in (b"\r\n", b"\n"):
            break
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {raw[:64]!r}")
        headers[name.lower()] = value.strip()
    else:
        raise HttpError(400, f"more than {MAX_HEADERS} header lines")
    path = unquote(target.split("?", 1)[0])
    return Request(method=method, path=path, headers=headers)


def response(
    status: int, body: bytes, content_type: str, head_only: bool = False, extra: str = ""
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n"
        "\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


class MetadataService:
    """The HTTP metadata service of one hvmesh deployment."""

    def __init__(self, nc: Any, cfg: Config) -> None:
        self.nc = nc
        self.cfg = cfg
        self.store: Store | None = None
        self.vendor_data: dict[str, Any] = {}
        self._server: asyncio.Server | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._loaded = asyncio.Event()
        self._ports_revision = 0  # the last ports bucket revision the map has applied
        self._ports_seen = asyncio.Condition()
        # address -> {port id: port}; port id -> its address (to drop it on change)
        self._by_ip: dict[str, dict[str, Port]] = {}
        self._ip_of: dict[str, str] = {}
        self._servers: dict[str, tuple[float, Server]] = {}
        self._trusted = self._trusted_networks(cfg.metadata.trusted_proxies)

    @staticmethod
    def _trusted_networks(
        items: list[str],
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out = []
        for item in items:
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"[metadata] trusted_proxies: {item!r} is not an address or network"
                ) from None
        return out

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.vendor_data = load_vendor_data(self.cfg.metadata.vendor_data)
        self.store = await Store(self.nc.jetstream(), replicas=self.cfg.nats.replicas).open()
        self._watch_task = asyncio.create_task(self._watch_ports())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await self._loaded.wait()  # a miss falls back to a scan if this is slow
        self._server = await asyncio.start_server(
            self._handle, self.cfg.metadata.listen or None, self.cfg.metadata.port, limit=MAX_LINE
        )
        LOG.info("metadata.started", address=self.address, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._watch_task is not None:
            await stop_tasks([self._watch_task])
            self._watch_task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None
        LOG.info("metadata.stopped")

    @property
    def port(self) -> int:
        """The TCP port listened on (the one chosen when [metadata] port is 0)."""
        assert self._server is not None, "MetadataService is not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        assert self._server is not None, "MetadataService is not started"
        return self._server.sockets[0].getsockname()[0]

    # --- who is asking ---------------------------------------------------------------------

    async def _watch_ports(self) -> None:
        assert self.store is not None
        bucket = self.store.ports
        while True:
            try:
                self._watcher = await bucket.kv.watchall()
                async for e in self._watcher:
                    if e is None:
                        self._loaded.set()
                        continue
                    port = None
                    if e.operation is None and e.value:
                        try:
                            port = bucket.decode(e.value)
                        except msgspec.DecodeError:
                            LOG.warning("metadata.bad_port_record", key=e.key)
                    self._apply_port(e.key, port)
                    async with self._ports_seen:
                        self._ports_revision = e.revision
                        self._ports_seen.notify_all()
                    if e.delta == 0:
                        self._loaded.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("metadata.ports_watch_failed")
                await asyncio.sleep(1.0)

    async def wait_ports(self, revision: int, timeout: float = 10.0) -> None:
        """Wait until the address map holds the ports bucket as of `revision`."""
        async with asyncio.timeout(timeout), self._ports_seen:
            await self._ports_seen.wait_for(lambda: self._ports_revision >= revision)

    def _apply_port(self, key: str, port: Port | None) -> None:
        old = self._ip_of.pop(key, None)
        if old is not None:
            held = self._by_ip.get(old, {})
            held.pop(key, None)
            if not held:
                self._by_ip.pop(old, None)
        if port is not None:
            ip = _address(port.ip)
            if ip is not None:
                self._by_ip.setdefault(ip, {})[key] = port
                self._ip_of[key] = ip

    async def _bound_ports(self, ip: str) -> list[Port]:
        ports = [p for p in self._by_ip.get(ip, {}).values() if p.server_id]
        if ports:
            return ports
        # A port bound moments ago may not have reached the watch yet: read the bucket.
        assert self.store is not None
        found = [p for p in await self.store.ports.values() if _address(p.ip) == ip]
        for p in found:
            self._apply_port(p.id, p)
        return [p for p in found if p.server_id]

    async def instance_for(self, ip: str) -> Server:
        """The server whose port holds address `ip`; HttpError(404/409) when there is none."""
        ports = await self._bound_ports(ip)
        servers = {p.server_id for p in ports}
        if not servers:
            raise HttpError(404, f"no instance has the address {ip}")
        if len(servers) > 1:
            raise HttpError(409, f"the address {ip} is bound to more than one instance")
        server_id = servers.pop()
        assert server_id is not None
        return await self._server_record(server_id, ip)

    async def _server_record(self, server_id: str, ip: str) -> Server:
        now = time.monotonic()
        cached = self._servers.get(server_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        assert self.store is not None
        entry = await self.store.servers.get(server_id)
        if entry is None:
            self._servers.pop(server_id, None)
            raise HttpError(404, f"the instance with address {ip} ({server_id}) no longer exists")
        if self.cfg.metadata.cache_seconds > 0:
            if len(self._servers) > 10000:  # bound the memory: drop what has expired
                self._servers = {k: v for k, v in self._servers.items() if v[0] > now}
            self._servers[server_id] = (now + self.cfg.metadata.cache_seconds, entry.value)
        return entry.value

    def instance_address(self, peer: str, headers: dict[str, str]) -> str:
        """The instance's address: the peer's, or a trusted proxy's X-Forwarded-For."""
        forwarded = headers.get("x-forwarded-for")
        if forwarded is None or not self.cfg.metadata.use_forwarded_for:
            return peer
        peer_ip = ipaddress.ip_address(peer)
        if not any(peer_ip in net for net in self._trusted):
            return peer  # an untrusted client cannot claim to be someone else
        first = forwarded.split(",")[0]
        ip = _address(first)
        if ip is None:
            raise HttpError(400, f"X-Forwarded-For {first.strip()!r} is not an IP address")
        return ip

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = _address(peername[0]) if peername else None
        status, path, server_id, head_only = 500, "", None, False
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    req = await read_request(reader)
                path = req.path
                head_only = req.method == "HEAD"
                if req.method not in ("GET", "HEAD"):
                    raise HttpError(405, f"method {req.method} is not allowed: use GET or HEAD")
                if peer is None:
                    raise HttpError(400, "cannot tell the client's address")
                ip = self.instance_address(peer, req.headers)
                server = await self.instance_for(ip)
                server_id = server.id
                doc = metadata_content.lookup(server, req.path, self.vendor_data)
                if doc is None:
                    raise HttpError(404, f"{req.path} not found")
                status = 200
                writer.write(response(200, doc.body, doc.content_type, head_only))
            except TimeoutError:
                status = 400
                writer.write(response(400, b"request head not received in time\n", "text/plain"))
            except HttpError as exc:
                status = exc.status
                extra = "Allow: GET, HEAD\r\n" if exc.status == 405 else ""
                body = (exc.message + "\n").encode()
                writer.write(response(exc.status, body, "text/plain", head_only, extra))
            except Exception:
                LOG.exception("metadata.error", path=path, server=server_id, remote=peer)
                status = 500
                writer.write(response(500, b"internal error\n", "text/plain", head_only))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            LOG.info("metadata.request", path=path, server=server_id, status=status, remote=peer)
