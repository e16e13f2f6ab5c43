"""The image a createImage (create-image) action makes: written queued before the action is accepted.

As Nova's compute API does before it casts the snapshot, the API writes the new image at
once, owned by the server's project and private, with the server's image properties
(less the ones Nova does not pass on), `base_image_ref`, `instance_uuid`, `user_id`,
`image_type=snapshot` and the request's metadata over them; min_ram is the base
image's, min_disk the larger of the base image's and the flavor's disk. Its disk format
is set when the driver has written the copy; the conductor makes it active, or deletes
it when the snapshot fails.
"""

from __future__ import annotations

import msgspec

from hvmesh.core import log
from hvmesh.core.api.context import ApiContext
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.action_requests import CreateImage
from hvmesh.core.protocol.base import new_id
from hvmesh.core.protocol.records import Image, Server
from hvmesh.core.state import image_data

LOG = log.get_logger(__name__)

# Nova's [DEFAULT] non_inheritable_image_properties, and what hvmesh's snapshot sets anew.
NOT_INHERITED = frozenset(
    {
        "cache_in_nova",
        "bittorrent",
        "img_signature",
        "img_signature_hash_method",
        "img_signature_certificate_uuid",
        "img_signature_key_type",
        "base_image_ref",
        "instance_uuid",
        "user_id",
        "image_type",
        "image_location",
        "image_state",
        "owner_id",
    }
)


async def create_image(api: ApiContext, s: Server, req: CreateImage) -> CreateImage:
    """Write the snapshot's image (status queued); the request then names its id."""
    if req.image_id is not None:
        raise errors.BadRequest("create-image: image_id is chosen by the API, do not send it")
    base = await api.st.images.get(s.image_id) if s.image_id else None
    props = {k: v for k, v in s.image_properties.items() if k not in NOT_INHERITED}
    props |= {
        "base_image_ref": s.image_id,
        "instance_uuid": s.id,
        "user_id": s.user,
        "image_type": "snapshot",
    }
    props |= req.metadata
    image = Image(
        id=new_id(),
        name=req.name,
        disk_format="",  # the driver's, once the copy is written
        status="queued",
        properties=props,
        min_ram_mb=base.value.min_ram_mb if base is not None else 0,
        min_disk_gb=max(base.value.min_disk_gb if base is not None else 0, s.flavor.disk_gb),
        project=s.project,
        visibility="private",
    )
    await api.st.images.create(image.id, image)
    LOG.info("api.snapshot_image", server=s.id, image=image.id)
    return msgspec.structs.replace(req, image_id=image.id)


async def drop_image(api: ApiContext, image_id: str) -> None:
    """The action was refused after its image was written: the image goes again."""
    await api.st.images.delete(image_id)
    await image_data.delete(api.js, image_id)
