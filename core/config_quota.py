"""The [quota] configuration section: each project's default limits, as Nova's [quota]."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct


class QuotaSection(Struct, kw_only=True, forbid_unknown_fields=True):
    instances: Annotated[
        int, Meta(ge=-1, description="Servers a project may have (-1: unlimited).")
    ] = 10
    cores: Annotated[int, Meta(ge=-1, description="Server vCPUs a project may have.")] = 20
    ram: Annotated[int, Meta(ge=-1, description="Server RAM (MB) a project may have.")] = 51200
    server_groups: Annotated[int, Meta(ge=-1, description="Server groups a project may have.")] = 10
    server_group_members: Annotated[
        int, Meta(ge=-1, description="Servers one server group may hold.")
    ] = 10
    key_pairs: Annotated[int, Meta(ge=-1, description="Key pairs one user may have.")] = 100
    metadata_items: Annotated[
        int, Meta(ge=-1, description="Metadata items one server may carry.")
    ] = 128
    resource_classes: Annotated[
        list[str],
        Meta(
            description="Default limits of resource classes flavors ask for "
            "(resources:CUSTOM_*), as CLASS=N, comma-separated; a class not named is "
            "unlimited."
        ),
    ] = []

    def __post_init__(self) -> None:
        self.defaults()  # a bad resource_classes item fails at load, naming it

    def defaults(self) -> dict[str, int]:
        """Every default limit by name; ValueError names a bad resource_classes item."""
        out = {
            "instances": self.instances,
            "cores": self.cores,
            "ram": self.ram,
            "server_groups": self.server_groups,
            "server_group_members": self.server_group_members,
            "key_pairs": self.key_pairs,
            "metadata_items": self.metadata_items,
        }
        for item in self.resource_classes:
            name, sep, value = item.partition("=")
            name = name.strip()
            try:
                limit = int(value)
            except ValueError:
                limit = -2
            if not sep or not name.startswith("CUSTOM_") or limit < -1:
                raise ValueError(
                    f"[quota] resource_classes: {item!r} is not CUSTOM_CLASS=N with N >= -1"
                )
            out[name] = limit
        return out
