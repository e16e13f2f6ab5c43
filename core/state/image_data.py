"""Image bytes in the JetStream object store `image_data`: chunked upload, verify, read back.

An upload arrives as chunks (each one request to the API, in order, with its offset).
Each chunk is published to the object store's chunk subject for that image with a
message id, so a chunk retried after a lost reply is stored once. The upload's progress
(`uploaded` bytes) is kept in an UploadState record written with compare-and-set, so any
API process can take the next chunk. Finishing reads every chunk back, checks the size
and sha256 the client announced, and only then writes the object's meta entry (the same
format `nats object` and nats.py read) and marks the image active. Readers (agents)
verify the sha256 again while they download.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import IO

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMetaOptions, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from hvmesh.core.protocol import errors
from hvmesh.core.protocol.subjects import IMAGE_STORE

CHUNK_SIZE = 256 * 1024  # what the CLI sends per request; the API takes up to MAX_CHUNK
MAX_CHUNK = 1024 * 1024


def chunk_subject(image_id: str) -> str:
    """Where an image's chunks go: one subject per image (the object's nuid)."""
    return f"$O.{IMAGE_STORE}.C.{_nuid(image_id)}"


def _nuid(image_id: str) -> str:
    return "img" + image_id.replace("-", "")


def _meta_subject(image_id: str) -> str:
    name = base64.urlsafe_b64encode(image_id.encode()).decode()
    return f"$O.{IMAGE_STORE}.M.{name}"


async def open_store(js: JetStreamContext, create: bool = True, replicas: int = 1) -> ObjectStore:
    """The image object store, made on first use (file storage, `replicas` copies)."""
    try:
        return await js.object_store(IMAGE_STORE)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            raise
        return await js.create_object_store(
            IMAGE_STORE,
            config=ObjectStoreConfig(
                bucket=IMAGE_STORE,
                description="hvmesh image bytes",
                storage=StorageType.FILE,
                replicas=replicas,
            ),
        )


async def store_chunk(
    js: JetStreamContext, image_id: str, offset: int, data: bytes, attempt: int = 0
) -> None:
    """Publish one chunk; the message id makes a retried chunk a no-op. `attempt` (the
    image's count of discarded uploads) keeps a new upload's chunks from being taken for
    repeats of a discarded one's, which JetStream remembers for its duplicate window."""
    if len(data) > MAX_CHUNK:
        raise errors.TooLarge(f"a chunk holds at most {MAX_CHUNK} bytes, got {len(data)}")
    await js.publish(
        chunk_subject(image_id),
        data,
        headers={"Nats-Msg-Id": f"{image_id}:{attempt}:{offset}:{len(data)}"},
    )


async def discard_chunks(js: JetStreamContext, image_id: str) -> None:
    """Drop whatever was uploaded for an image (a failed or abandoned upload)."""
    await js.purge_stream(f"OBJ_{IMAGE_STORE}", subject=chunk_subject(image_id))


async def read_chunks(js: JetStreamContext, image_id: str) -> AsyncIterator[bytes]:
    """Every stored chunk of an image, in order."""
    subject = chunk_subject(image_id)
    info = await js.stream_info(f"OBJ_{IMAGE_STORE}", subjects_filter=subject)
    if not info.state.subjects:
        return
    sub = await js.subscribe(subject, ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=30.0)
            except NatsTimeout:
                raise errors.ServiceUnavailable(
                    f"image {image_id}: chunks stopped coming"
                ) from None
            yield msg.data
            if msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def seal(js: JetStreamContext, image_id: str, size: int, sha256: str) -> None:
    """Check the stored chunks against the announced size and sha256, then write the
    object's meta entry. A mismatch discards the chunks and is a 400 naming it."""
    digest = hashlib.sha256()
    total = 0
    chunks = 0
    async for data in read_chunks(js, image_id):
        digest.update(data)
        total += len(data)
        chunks += 1
    if total != size or digest.hexdigest() != sha256:
        await discard_chunks(js, image_id)
        raise errors.BadRequest(
            f"image {image_id}: upload does not match: received {total} bytes with sha256 "
            f"{digest.hexdigest()}, the client sent {size} bytes with sha256 {sha256}; "
            "the upload was discarded, send it again"
        )
    info = ObjectInfo(
        name=image_id,
        bucket=IMAGE_STORE,
        nuid=_nuid(image_id),
        size=total,
        chunks=chunks,
        mtime=datetime.now(UTC).isoformat(),
        digest="SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
        options=ObjectMetaOptions(max_chunk_size=MAX_CHUNK),
    )
    await js.publish(
        _meta_subject(image_id),
        json.dumps(info.as_dict()).encode(),
        headers={"Nats-Rollup": "sub"},
    )


async def delete(js: JetStreamContext, image_id: str) -> None:
    """Remove an image's bytes and meta entry; nothing to remove is not an error."""
    store = await open_store(js)
    try:
        await store.delete(image_id)
    except (ObjectNotFoundError, NotFoundError):
        await discard_chunks(js, image_id)


async def download(js: JetStreamContext, image_id: str, sha256: str, out: IO[bytes]) -> int:
    """Write an image's bytes to the binary file `out`, verifying their sha256.

    Returns the number of bytes. Raises ValueError when they do not match `sha256`
    (the caller throws the file away) and NotFound when the image has no bytes.
    """
    digest = hashlib.sha256()
    total = 0
    async for data in read_chunks(js, image_id):
        out.write(data)
        digest.update(data)
        total += len(data)
    if total == 0 and sha256 != hashlib.sha256(b"").hexdigest():
        raise errors.NotFound(f"image {image_id} has no data in the image store")
    if digest.hexdigest() != sha256:
        raise ValueError(
            f"image {image_id}: downloaded bytes have sha256 {digest.hexdigest()}, "
            f"the image record says {sha256}"
        )
    return total
