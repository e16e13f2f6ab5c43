"""The config drive: a server's metadata as files on a small ISO 9660 image labelled config-2.

Guests that cannot (or should not) reach the metadata service find the same documents on
this disk: cloud-init's ConfigDrive data source looks for a filesystem labelled
"config-2" and reads openstack/<version>/... from it. The image carries Rock Ridge (for
Linux) and Joliet (for Windows) names so long, lower-case names survive.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path, PurePosixPath

import pycdlib

from hvmesh.core import log

LOG = log.get_logger(__name__)

VOLUME_LABEL = "config-2"
PUBLISHER = "hvmesh"


def _parts(rel: str) -> tuple[str, ...]:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"config drive path {rel!r} is not a plain relative path")
    return parts


def _iso_name(name: str, is_dir: bool, taken: set[str]) -> str:
    """A strict ISO 9660 (level 2+) name for `name`, unique among `taken` in its directory.

    Readers use the Rock Ridge or Joliet name; this one is what a reader without either
    extension sees: upper case d-characters, at most 30 characters with the extension.
    """
    stem, dot, ext = ("", "", name) if is_dir else name.rpartition(".")
    if not dot:
        stem, ext = ext, ""
    stem = re.sub(r"[^A-Z0-9_]", "_", stem.upper()) or "_"
    ext = re.sub(r"[^A-Z0-9_]", "_", ext.upper())[:8]
    room = 30 - len(ext) - (0 if is_dir else 1)
    for n in range(len(taken) + 1):
        suffix = f"_{n}" if n else ""
        candidate = stem[: room - len(suffix)] + suffix
        candidate = candidate if is_dir else f"{candidate}.{ext}"
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    raise AssertionError("unreachable: one of len(taken) + 1 candidates is free")


def build_config_drive(files: dict[str, bytes], path: Path) -> None:
    """Write an ISO 9660 image holding `files` ({relative path: bytes}) to `path`.

    Written to a temporary name beside `path` and renamed, so a reader never sees half
    an image.
    """
    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=3,
        vol_ident=VOLUME_LABEL,
        pub_ident_str=PUBLISHER,
        joliet=3,
        rock_ridge="1.09",
    )
    iso_dirs: dict[tuple[str, ...], str] = {(): ""}  # directory -> its ISO 9660 path
    taken: dict[tuple[str, ...], set[str]] = {(): set()}  # ISO names used in a directory
    try:
        for rel in sorted(files):
            parts = _parts(rel)
            for depth in range(1, len(parts)):
                d = parts[:depth]
                if d not in iso_dirs:
                    name = _iso_name(d[-1], True, taken[d[:-1]])
                    iso_dirs[d] = f"{iso_dirs[d[:-1]]}/{name}"
                    taken[d] = set()
                    iso.add_directory(iso_dirs[d], rr_name=d[-1], joliet_path="/" + "/".join(d))
            name = _iso_name(parts[-1], False, taken[parts[:-1]])
            data = files[rel]
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"{iso_dirs[parts[:-1]]}/{name};1",
                rr_name=parts[-1],
                joliet_path="/" + "/".join(parts),
            )
        tmp = path.with_name(path.name + ".tmp")
        iso.write(str(tmp))
    finally:
        iso.close()
    os.replace(tmp, path)
    LOG.info("configdrive.built", path=str(path), files=len(files))
