"""Client side of an image upload: a file sent to the API in chunks, with progress.

The file's sha256 is computed while it is sent; images.upload_finish hands it to the
API, which checks the stored bytes against it. A chunk whose reply is lost is sent
again: the API takes it once (the offset says whether it has it already).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from nats.aio.client import Client

from hvmesh.core.bus import micro as bus
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.state.image_data import CHUNK_SIZE

Progress = Callable[[int, int], None]
RETRIES = 3


async def upload(
    nc: Client,
    image_id: str,
    path: Path,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Send `path` as image `image_id`'s data; returns the active image."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    sent = 0
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(CHUNK_SIZE)
            if not chunk:
                break
            await _send(nc, image_id, sent, chunk, timeout)
            digest.update(chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent, size)
    reply = await bus.call(
        nc,
        subjects.api("images", "upload_finish"),
        {"id": image_id, "size": sent, "sha256": digest.hexdigest()},
        timeout=max(timeout, 60.0 + size / 50e6),  # the API reads it all back
    )
    return reply["image"]


async def _send(nc: Client, image_id: str, offset: int, chunk: bytes, timeout: float) -> None:
    headers = {"Hvmesh-Image": image_id, "Hvmesh-Offset": str(offset)}
    for attempt in range(RETRIES):
        try:
            await bus.call(
                nc, subjects.api("images", "upload"), chunk, timeout=timeout, headers=headers
            )
            return
        except errors.ServiceUnavailable:
            if attempt == RETRIES - 1:
                raise


class ProgressBar:
    """A one-line progress bar on stderr when it is a terminal; quiet otherwise."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        frac = done / total if total else 1.0
        width = 30
        bar = "#" * int(frac * width)
        rate = done / max(now - self.started, 1e-6) / 2**20
        self.stream.write(
            f"\r{self.label} [{bar:<{width}}] {frac:6.1%} {done / 2**20:,.1f}/"
            f"{total / 2**20:,.1f} MiB {rate:,.1f} MiB/s"
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
