"""What a request may carry, as the endpoints share it (who may do what: policy_rules/)."""

from __future__ import annotations

import base64
import binascii

from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Flavor, Image

MAX_USER_DATA = 65535


def check_user_data(text: str | None) -> str | None:
    """user_data must be base64 of at most 64 KiB, as Nova's; returned as given."""
    if text is None:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise errors.BadRequest("user_data: not valid base64") from None
    if len(raw) > MAX_USER_DATA:
        raise errors.BadRequest(f"user_data: {len(raw)} bytes, at most {MAX_USER_DATA}")
    return text


def check_fits(flavor: Flavor, image: Image) -> None:
    """400 when the image needs more RAM or disk than the flavor gives."""
    if image.min_ram_mb > flavor.ram_mb:
        raise errors.BadRequest(
            f"flavor {flavor.name} has {flavor.ram_mb} MB RAM; image {image.name} needs "
            f"{image.min_ram_mb}"
        )
    if image.min_disk_gb > flavor.disk_gb:
        raise errors.BadRequest(
            f"flavor {flavor.name} has a {flavor.disk_gb} GB disk; image {image.name} needs "
            f"{image.min_disk_gb}"
        )
