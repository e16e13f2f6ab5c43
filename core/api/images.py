"""The API's image endpoints: hvmesh.api.images.{create,list,get,update,delete,upload,upload_finish}.

An image is created "queued" when its bytes are to be uploaded. The client then sends
them in order, one chunk per images.upload request (headers Hvmesh-Image and
Hvmesh-Offset, the raw bytes as body), and ends with images.upload_finish naming the size
and sha256 it sent: the API reads the stored bytes back, checks both, and only then
makes the image "active". An image a server still uses cannot be deleted.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from hvmesh.core import log
from hvmesh.core.api import paging
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.list_indexes import PUBLIC
from hvmesh.core.api.lookups import check_ref, find_image
from hvmesh.core.api.paging import Page
from hvmesh.core.api.requests import Ref
from hvmesh.core.bus.micro import Caller, Raw
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import Name, new_id, now
from hvmesh.core.protocol.records import Image
from hvmesh.core.protocol.requests import ImageCreate, ImageUpdate, ImageUploadFinish
from hvmesh.core.state import image_data

LOG = log.get_logger(__name__)


class ImageList(Page):
    """hvmesh.api.images.list: Glance's status and exact-name filters."""

    status: Literal["queued", "saving", "active"] | None = None
    name: Name | None = None


class ImageEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    async def create(self, caller: Caller, req: ImageCreate) -> dict:
        image = Image(
            id=new_id(),
            name=req.name,
            disk_format=req.disk_format,
            container_format=req.container_format,
            status="queued" if req.upload else "active",
            properties=req.properties,
            min_ram_mb=req.min_ram_mb,
            min_disk_gb=req.min_disk_gb,
            project=caller.project,
            visibility=req.visibility,
        )
        await self.api.st.images.create(image.id, image)
        return {"image": image}

    async def list(self, caller: Caller, req: ImageList) -> dict:
        """Images by name then id, paged by image id."""

        def keep(i: Image) -> bool:
            return (req.status is None or i.status == req.status) and (
                req.name is None or i.name == req.name
            )

        scopes = None if caller.is_admin else (caller.project, PUBLIC)
        images = self.api.lists.images
        return await paging.from_index(
            self.api, "images", images, req, scopes, lambda i: i.id, keep=keep
        )

    async def get(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "image")
        return {"image": await find_image(self.api.st, req.id or req.name or "", caller)}

    async def _own(self, ref: str, caller: Caller) -> Image:
        image = await find_image(self.api.st, ref, caller)
        if not caller.is_admin and image.project != caller.project:
            raise errors.Forbidden(f"image {image.id} belongs to another project")
        return image

    async def update(self, caller: Caller, req: ImageUpdate) -> dict:
        """Change an image in one compare-and-set; its formats only while it is queued."""
        image = await self._own(req.id, caller)
        formats = req.disk_format is not None or req.container_format is not None
        changes = {
            k: v
            for k in ("name", "visibility", "min_ram_mb", "min_disk_gb")
            if (v := getattr(req, k)) is not None
        }
        if not changes and not formats and not req.properties:
            raise errors.BadRequest(
                "nothing to update: give name, visibility, minimums or properties"
            )

        def change(i: Image) -> Image:
            if formats and i.status != "queued":
                raise errors.Conflict(f"image {i.id} is {i.status}: its formats are set")
            properties = dict(i.properties)
            for key, value in req.properties.items():
                if value is None:
                    properties.pop(key, None)
                else:
                    properties[key] = value
            return msgspec.structs.replace(
                i,
                **changes,
                disk_format=req.disk_format or i.disk_format,
                container_format=req.container_format or i.container_format,
                properties=properties,
                updated_at=now(),
            )

        entry = await self.api.st.images.mutate(image.id, change)
        if entry is None:
            raise errors.NotFound(f"image {req.id} not found")
        LOG.info("api.image_updated", image=image.id, fields=sorted([*changes, *req.properties]))
        return {"image": entry.value}

    async def delete(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "image")
        image = await self._own(req.id or req.name or "", caller)
        users = [s.id for s in await self.api.st.servers.values() if s.image_id == image.id]
        if users:
            more = f" and {len(users) - 3} more" if len(users) > 3 else ""
            raise errors.Conflict(
                f"image {image.id} is in use by server(s) {', '.join(users[:3])}{more}"
            )
        await self.api.st.images.delete(image.id)
        await image_data.delete(self.api.js, image.id)
        LOG.info("api.image_deleted", image=image.id)
        return {"deleted": image.id}

    # --- upload ---------------------------------------------------------------------------

    async def upload(self, caller: Caller, req: Raw) -> dict:
        image_id = req.headers.get("Hvmesh-Image", "")
        try:
            offset = int(req.headers.get("Hvmesh-Offset", ""))
        except ValueError:
            raise errors.BadRequest(
                "images.upload needs headers Hvmesh-Image and Hvmesh-Offset"
            ) from None
        if not image_id or offset < 0:
            raise errors.BadRequest("images.upload needs headers Hvmesh-Image and Hvmesh-Offset")
        image = await self._own(image_id, caller)
        if image.status not in ("queued", "saving"):
            raise errors.Conflict(f"image {image.id} is {image.status}: it takes no upload")
        if offset < image.uploaded:  # a retry of a chunk already taken: nothing to do
            return {"id": image.id, "uploaded": image.uploaded}
        if offset > image.uploaded:
            raise errors.Conflict(
                f"image {image.id}: chunk at offset {offset}, expected {image.uploaded}"
            )
        await image_data.store_chunk(self.api.js, image.id, offset, req.data, image.upload_attempt)

        def advance(i: Image) -> Image | None:
            if i.uploaded != offset or i.status not in ("queued", "saving"):
                return None
            return msgspec.structs.replace(
                i, status="saving", uploaded=offset + len(req.data), updated_at=now()
            )

        entry = await self.api.st.images.mutate(image.id, advance)
        if entry is None:
            raise errors.NotFound(f"image {image.id} not found")
        return {"id": image.id, "uploaded": entry.value.uploaded}

    async def finish(self, caller: Caller, req: ImageUploadFinish) -> dict:
        image = await self._own(req.id, caller)
        if image.status == "active" and image.checksum == req.sha256:
            return {"image": image}  # finished already (a retried request)
        if image.status not in ("queued", "saving"):
            raise errors.Conflict(f"image {image.id} is {image.status}: it takes no upload")
        try:
            await image_data.seal(self.api.js, image.id, req.size, req.sha256)
        except errors.BadRequest:
            await self.api.st.images.mutate(
                image.id,
                lambda i: msgspec.structs.replace(
                    i,
                    status="queued",
                    uploaded=0,
                    upload_attempt=i.upload_attempt + 1,
                    updated_at=now(),
                ),
            )
            raise

        def activate(i: Image) -> Image:
            return msgspec.structs.replace(
                i,
                status="active",
                size=req.size,
                checksum=req.sha256,
                uploaded=req.size,
                updated_at=now(),
            )

        entry = await self.api.st.images.mutate(image.id, activate)
        if entry is None:
            raise errors.NotFound(f"image {image.id} not found")
        LOG.info("api.image_uploaded", image=image.id, size=req.size)
        return {"image": entry.value}
