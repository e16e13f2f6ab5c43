"""What a guest reads about itself: the OpenStack and EC2 metadata trees of one server.

Pure functions from a Server record (and the operator's vendor data) to the documents
the metadata service serves over HTTP and the config drive carries as files. The layout
follows Nova's: `openstack/<version>/meta_data.json`, `network_data.json`, `user_data`,
`vendor_data.json`, `vendor_data2.json`, and an EC2-style `<version>/meta-data/` tree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
from typing import Any

import msgspec

from hvmesh.core.config import ConfigError
from hvmesh.core.protocol.records import Server

LATEST = "latest"

# The dated OpenStack versions cloud-init knows (its helpers/openstack.py OS_VERSIONS),
# oldest first. Each adds to what the one before served:
FOLSOM = "2012-08-10"  # meta_data.json, user_data
GRIZZLY = "2013-04-04"  # random_seed
HAVANA = "2013-10-17"  # vendor_data.json
LIBERTY = "2015-10-15"  # network_data.json, keys, project_id
NEWTON_ONE = "2016-06-30"  # devices
NEWTON_TWO = "2016-10-06"  # vendor_data2.json
OCATA = "2017-02-22"  # devices carry their vif (no change without devices)
ROCKY = "2018-08-27"  # devices carry vf_trusted (no change without devices)
OPENSTACK_VERSIONS = (FOLSOM, GRIZZLY, HAVANA, LIBERTY, NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY)

EC2_VERSIONS = ("2009-04-04",)

DEFAULT_ZONE = "nova"
RANDOM_SEED_BYTES = 512

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"

_encoder = msgspec.json.Encoder()


class Document(msgspec.Struct, frozen=True):
    """One answer: its bytes and their media type."""

    body: bytes
    content_type: str


# --- names and ids ---------------------------------------------------------------------------


def hostname(server: Server) -> str:
    """A DNS-safe form of the server's name: one label, lower case, at most 63 characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", server.name.lower())
    label = re.sub(r"-{2,}", "-", label).strip("-")[:63].rstrip("-")
    return label or f"server-{server.id[:8]}"


def _hex8(ident: str) -> str:
    digits = ident.replace("-", "").lower()
    if len(digits) >= 8 and all(c in "0123456789abcdef" for c in digits[:8]):
        return digits[:8]
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


def ec2_id(prefix: str, ident: str) -> str:
    """An EC2-style id ("i-0a1b2c3d") for a record id: stable, from its first 8 hex digits."""
    return f"{prefix}-{_hex8(ident)}"


def availability_zone(server: Server) -> str:
    return server.availability_zone or DEFAULT_ZONE


def decoded_user_data(server: Server) -> bytes | None:
    """The user data as bytes (it is stored base64, as the user gave it), or None."""
    if server.user_data is None:
        return None
    try:
        return base64.b64decode(server.user_data, validate=True)
    except (binascii.Error, ValueError):
        # Not base64 after all: hand it over as the text it is rather than lose it.
        return server.user_data.encode()


def _at_least(version: str, since: str) -> bool:
    """Whether OpenStack `version` (a dated one or "latest") includes what `since` added."""
    return version == LATEST or version >= since


# --- OpenStack format --------------------------------------------------------------------------


def meta_data(server: Server, version: str = LATEST) -> dict[str, Any]:
    """meta_data.json, with what `version` of the format carries."""
    md: dict[str, Any] = {
        "uuid": server.id,
        "name": server.name,
        "hostname": hostname(server),
        "launch_index": 0,
        "availability_zone": availability_zone(server),
        "meta": dict(server.metadata),
    }
    if server.key_name and server.public_key:
        md["public_keys"] = {server.key_name: server.public_key}
        if _at_least(version, LIBERTY):
            md["keys"] = [{"name": server.key_name, "type": "ssh", "data": server.public_key}]
    if _at_least(version, GRIZZLY):
        md["random_seed"] = base64.b64encode(os.urandom(RANDOM_SEED_BYTES)).decode()
    if _at_least(version, LIBERTY):
        md["project_id"] = server.project
    if _at_least(version, NEWTON_ONE):
        md["devices"] = []
    md["files"] = []
    return md


def link_id(port_id: str) -> str:
    """The interface's id in network_data.json: its tap device's name on the host."""
    return "tap" + port_id[:11]


def network_data(server: Server) -> dict[str, Any]:
    """network_data.json: one link and one static IPv4 network per interface, DNS servers."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    all_dns: list[str] = []
    for n, vif in enumerate(server.network_info):
        link = link_id(vif.port_id)
        links.append(
            {
                "id": link,
                "type": "phy",
                "ethernet_mac_address": vif.mac,
                "mtu": vif.mtu,
                "vif_id": vif.port_id,
            }
        )
        netmask = str(ipaddress.ip_network(vif.cidr, strict=False).netmask)
        routes = []
        if vif.gateway:
            routes.append({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": vif.gateway})
        networks.append(
            {
                "id": f"network{n}",
                "type": "ipv4",
                "link": link,
                "ip_address": vif.ip,
                "netmask": netmask,
                "routes": routes,
                "network_id": vif.network_id,
                "services": [{"type": "dns", "address": a} for a in vif.dns_nameservers],
            }
        )
        all_dns.extend(a for a in vif.dns_nameservers if a not in all_dns)
    return {
        "links": links,
        "networks": networks,
        "services": [{"type": "dns", "address": a} for a in all_dns],
    }


def openstack_names(server: Server, version: str) -> list[str]:
    """The files in openstack/<version>/ for this server."""
    names = ["meta_data.json"]
    if server.user_data is not None:
        names.append("user_data")
    if _at_least(version, HAVANA):
        names.append("vendor_data.json")
    if _at_least(version, LIBERTY):
        names.append("network_data.json")
    if _at_least(version, NEWTON_TWO):
        names.append("vendor_data2.json")
    return names


def openstack_file(
    server: Server, version: str, name: str, vendor_data: dict[str, Any]
) -> Document | None:
    """One file of openstack/<version>/, or None when this server has no such file."""
    if name not in openstack_names(server, version):
        return None
    if name == "meta_data.json":
        return Document(_encoder.encode(meta_data(server, version)), JSON)
    if name == "network_data.json":
        return Document(_encoder.encode(network_data(server)), JSON)
    if name == "vendor_data.json":
        return Document(_encoder.encode(vendor_data), JSON)
    if name == "vendor_data2.json":
        return Document(b"{}", JSON)
    data = decoded_user_data(server)
    return None if data is None else Document(data, BINARY)


def openstack_versions_listing() -> bytes:
    return "\n".join((*OPENSTACK_VERSIONS, LATEST)).encode()


# --- EC2 format --------------------------------------------------------------------------------


def ec2_meta_data(server: Server) -> dict[str, Any]:
    """The EC2 meta-data tree: nested dicts are directories, strings are leaves.

    A directory may name itself in its parent's listing with a "_name" entry (EC2 lists
    public keys as "0=<key name>").
    """
    first_ip = server.network_info[0].ip if server.network_info else ""
    tree: dict[str, Any] = {
        "ami-id": ec2_id("ami", server.image_id),
        "ami-launch-index": "0",
        "hostname": hostname(server),
        "instance-action": "none",
        "instance-id": ec2_id("i", server.id),
        "instance-type": server.flavor.name,
        "local-hostname": hostname(server),
        "local-ipv4": first_ip,
        "placement": {"availability-zone": availability_zone(server)},
        "reservation-id": server.reservation_id or ec2_id("r", server.id),
        "security-groups": "default",
    }
    if server.key_name and server.public_key:
        tree["public-keys"] = {
            "0": {"_name": f"0={server.key_name}", "openssh-key": server.public_key}
        }
    return dict(sorted(tree.items()))


def _listing(tree: dict[str, Any]) -> bytes:
    lines = []
    for key, value in tree.items():
        if key == "_name":
            continue
        if isinstance(value, dict):
            lines.append(value.get("_name") or f"{key}/")
        else:
            lines.append(key)
    return "\n".join(lines).encode()


def _ec2_tree_json(tree: dict[str, Any]) -> dict[str, Any]:
    """The tree as the config drive's meta-data.json holds it (no listing names)."""
    return {
        k: _ec2_tree_json(v) if isinstance(v, dict) else v for k, v in tree.items() if k != "_name"
    }


def _ec2_lookup(server: Server, parts: list[str]) -> Document | None:
    node: Any = ec2_meta_data(server)
    for part in parts:
        if not isinstance(node, dict) or part == "_name" or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return Document(_listing(node), TEXT)
    return Document(str(node).encode(), TEXT)


# --- paths -------------------------------------------------------------------------------------


def lookup(server: Server, path: str, vendor_data: dict[str, Any]) -> Document | None:
    """What the metadata service answers for `path` (as requested, e.g. "/openstack/latest/"),
    or None for a path that does not exist for this server."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    if not parts:
        return Document("\n".join((*EC2_VERSIONS, LATEST)).encode(), TEXT)
    head, rest = parts[0], parts[1:]
    if head == "openstack":
        if not rest:
            return Document(openstack_versions_listing(), TEXT)
        version = rest[0]
        if version not in (*OPENSTACK_VERSIONS, LATEST):
            return None
        if len(rest) == 1:
            return Document("\n".join(openstack_names(server, version)).encode(), TEXT)
        if len(rest) == 2:
            return openstack_file(server, version, rest[1], vendor_data)
        return None
    if head not in (*EC2_VERSIONS, LATEST):
        return None
    if not rest:
        names = ["meta-data/"] + (["user-data"] if server.user_data is not None else [])
        return Document("\n".join(names).encode(), TEXT)
    if rest[0] == "meta-data":
        return _ec2_lookup(server, rest[1:])
    if rest == ["user-data"]:
        data = decoded_user_data(server)
        return None if data is None else Document(data, BINARY)
    return None


def config_drive_files(server: Server, vendor_data: dict[str, Any]) -> dict[str, bytes]:
    """Every file of the server's config drive, {relative path: bytes}, as Nova lays it out."""
    files: dict[str, bytes] = {}
    for version in (*OPENSTACK_VERSIONS, LATEST):
        for name in openstack_names(server, version):
            doc = openstack_file(server, version, name, vendor_data)
            if doc is not None:
                files[f"openstack/{version}/{name}"] = doc.body
    ec2 = _encoder.encode(_ec2_tree_json(ec2_meta_data(server)))
    user_data = decoded_user_data(server)
    for version in (*EC2_VERSIONS, LATEST):
        files[f"ec2/{version}/meta-data.json"] = ec2
        if user_data is not None:
            files[f"ec2/{version}/user-data"] = user_data
    return files


def load_vendor_data(path: str) -> dict[str, Any]:
    """The JSON object in the [metadata] vendor_data file ({} when no file is set)."""
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            data = msgspec.json.decode(fh.read())
    except OSError as exc:
        raise ConfigError(f"[metadata] vendor_data: cannot read {path}: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"[metadata] vendor_data: {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"[metadata] vendor_data: {path} must hold a JSON object")
    return data
