"""Image v2 data: PUT and GET /image/v2/images/{id}/file, streamed chunk by chunk, never whole."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from aiohttp import ClientPayloadError, web
from nats.js.errors import Error as JetStreamError

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.image_views import Glance
from hvmesh.core.state.image_data import CHUNK_SIZE, read_chunks

LOG = log.get_logger(__name__)
# The service's own NATS connection, through which image bytes are read.
IMAGE_STORE: web.AppKey[Any] = web.AppKey("image_store", object)

RETRIES = 3  # sends of one chunk whose reply is lost


async def _send(c: Glance, image_id: str, offset: int, chunk: bytes) -> None:
    """One hvmesh.api.images.upload request; a lost reply is retried (the API takes a
    chunk at an offset it has already once)."""
    headers = {"Hvmesh-Image": image_id, "Hvmesh-Offset": str(offset)}
    for attempt in range(RETRIES):
        try:
            await c.call("upload", chunk, headers=headers)
            return
        except errors.ServiceUnavailable:
            if attempt == RETRIES - 1:
                raise


async def _abandon(c: Glance, image_id: str, sent: int) -> None:
    """Put a half-sent image back to `queued`: a finish that cannot match (one byte more
    than was sent) makes the API discard the chunks."""
    if sent == 0:
        return
    try:
        await c.call("upload_finish", {"id": image_id, "size": sent + 1, "sha256": "0" * 64})
    except errors.HvmeshError as exc:
        LOG.info("rest.image_upload_abandoned", image=image_id, sent=sent, reply=exc.message)


async def upload(request: web.Request) -> web.Response:
    """PUT .../file: the body, read in chunks, goes out as hvmesh.api.images.upload
    requests as it arrives, then images.upload_finish with its size and sha256."""
    c = Glance(request)
    image_id = request.match_info["id"]
    if request.content_type != "application/octet-stream":
        raise RestError(415, "image data is sent as application/octet-stream")
    image = await c.get(image_id)
    if image.get("status") != "queued":
        raise RestError(
            409, f"image {image_id} is {image.get('status')}: data goes to a queued image"
        )
    image_id = image["id"]
    digest = hashlib.sha256()
    sent = 0
    pending = bytearray()
    try:
        async for data in request.content.iter_chunked(CHUNK_SIZE):
            pending += data
            while len(pending) >= CHUNK_SIZE:
                chunk = bytes(pending[:CHUNK_SIZE])
                del pending[:CHUNK_SIZE]
                await _send(c, image_id, sent, chunk)
                digest.update(chunk)
                sent += len(chunk)
        if pending:
            await _send(c, image_id, sent, bytes(pending))
            digest.update(pending)
            sent += len(pending)
    except (ConnectionError, ClientPayloadError) as exc:
        await asyncio.shield(_abandon(c, image_id, sent))
        raise RestError(
            400, f"image {image_id}: the data stopped early ({exc}); send it again"
        ) from None
    except BaseException:
        await asyncio.shield(_abandon(c, image_id, sent))
        raise
    reply = await c.call(
        "upload_finish", {"id": image_id, "size": sent, "sha256": digest.hexdigest()}
    )
    LOG.info("rest.image_uploaded", image=image_id, size=reply["image"].get("size"))
    return web.Response(status=204)


def _readable(request: web.Request) -> Any:
    """The JetStream context image bytes are read through: the service's own connection
    (a tenant's account has no JetStream), used only after images.get, as the caller,
    has said the caller may see the image."""
    return request.app[IMAGE_STORE].jetstream()


def _broken(request: web.Request, response: web.StreamResponse, message: str) -> web.StreamResponse:
    """A download that cannot finish: a 503 before any byte went out, else a cut connection
    (the body stays shorter than its Content-Length, so the client sees the failure)."""
    if not response.prepared:
        raise RestError(503, message)
    if request.transport is not None:
        request.transport.close()
    return response


async def download(request: web.Request) -> web.StreamResponse:
    """GET .../file: the image's bytes as they come from the image store, checked
    against its sha256; the last chunk is held back until they match, so a client
    never gets a whole body that is wrong (the connection breaks instead)."""
    c = Glance(request)
    image = await c.get(request.match_info["id"])
    sha256 = image.get("checksum")
    if image.get("status") != "active" or not sha256:
        return web.Response(status=204)  # Glance: an image without data
    js = _readable(request)
    response = web.StreamResponse(status=200)
    response.content_type = "application/octet-stream"
    response.content_length = image.get("size") or 0
    digest = hashlib.sha256()
    held: bytes | None = None
    chunks = read_chunks(js, image["id"])
    try:
        async for data in chunks:
            if not response.prepared:
                await response.prepare(request)
            if held is not None:
                await response.write(held)
            digest.update(data)
            held = data
    except (JetStreamError, errors.HvmeshError) as exc:
        LOG.error("rest.image_read_failed", image=image["id"], error=str(exc))
        return _broken(request, response, f"image {image['id']}: the image store: {exc}")
    if digest.hexdigest() != sha256:
        LOG.error("rest.image_corrupt", image=image["id"], sha256=digest.hexdigest(), want=sha256)
        return _broken(request, response, f"image {image['id']}: stored bytes do not match")
    if not response.prepared:
        await response.prepare(request)
    if held is not None:
        await response.write(held)
    await response.write_eof()
    return response
