"""The metadata service and the config drive, read the way guests read them.

Content builders are checked directly; the HTTP service runs against a real nats-server
and is spoken to over TCP; the config drive is a real ISO checked with blkid and pycdlib.
cloud-init's own OpenStack code (the system python3's cloud-init, run by
tests/cloudinit_probe.py) reads both: the HTTP service from inside a network namespace
that plays the instance, so the service knows it by its source address alone.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from hvmesh.core.metadata import content as mc
from hvmesh.core.metadata.configdrive import build_config_drive
from hvmesh.core.metadata.service import MetadataService
from hvmesh.core.protocol.records import Flavor, Network, Port, Server, Vif
from hvmesh.core.state.store import Store
from tests.support import ApiClient, Deployment, boot

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = str(Path(__file__).with_name("cloudinit_probe.py"))
# An OpenSSH ed25519 public key (made-up key bytes: only the format matters here).
KEY = (
    "ssh-ed25519 "
    + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
    + " alice@example"
)
USER_DATA = b"#cloud-config\nruncmd:\n  - echo hello\n"


# --- records -----------------------------------------------------------------------------------


def network(name: str, cidr: str, gateway: str | None, dns: list[str]) -> Network:
    return Network(
        id=str(uuid.uuid4()), name=name, project="demo", cidr=cidr, gateway=gateway,
        dns_nameservers=dns,
    )  # fmt: skip


def vif_for(net: Network, ip: str, mac: str) -> Vif:
    return Vif(
        port_id=str(uuid.uuid4()), network_id=net.id, network_name=net.name, mac=mac, ip=ip,
        cidr=net.cidr, gateway=net.gateway, dns_nameservers=net.dns_nameservers, mtu=1450,
    )  # fmt: skip


def make_server(name: str, vifs: list[Vif], **kw: Any) -> Server:
    flavor = Flavor(id="f1", name="m1.small", vcpus=1, ram_mb=512, disk_gb=1)
    return Server(
        id=str(uuid.uuid4()), name=name, project="demo", user="alice", flavor=flavor,
        image_id=str(uuid.uuid4()), image_name="cirros", metadata={"role": "web"},
        network_info=vifs, vm_state="active", task_state=None,
        **{"availability_zone": "az1", **kw},
    )  # fmt: skip


def two_nic_server(name: str = "Web Server_1", first_ip: str = "10.0.0.5") -> Server:
    net_a = network("net-a", "10.0.0.0/24", "10.0.0.1", ["10.0.0.2"])
    net_b = network("net-b", "172.16.8.0/22", None, ["172.16.8.53", "10.0.0.2"])
    return make_server(
        name,
        [vif_for(net_a, first_ip, "fa:16:3e:00:00:01"), vif_for(net_b, "172.16.9.7", "fa:16:3e:00:00:02")],
        key_name="alice-key",
        public_key=KEY,
        user_data=base64.b64encode(USER_DATA).decode(),
    )  # fmt: skip


async def seed(store: Store, server: Server) -> None:
    """Write the server, its ports and networks as the API would have."""
    for vif in server.network_info:
        net = Network(
            id=vif.network_id, name=vif.network_name, project=server.project, cidr=vif.cidr,
            gateway=vif.gateway, dns_nameservers=vif.dns_nameservers, ips={vif.ip: vif.port_id},
        )  # fmt: skip
        await store.networks.put(net.id, net)
        port = Port(
            id=vif.port_id, name="", network_id=vif.network_id, project=server.project,
            mac=vif.mac, ip=vif.ip, server_id=server.id, status="ACTIVE",
        )  # fmt: skip
        await store.ports.put(port.id, port)
    await store.servers.put(server.id, server)


def loads(doc: mc.Document | None) -> Any:
    assert doc is not None
    assert doc.content_type == mc.JSON
    return json.loads(doc.body)


# --- content -------------------------------------------------------------------------------------


def test_meta_data_fields() -> None:
    server = two_nic_server()
    md = mc.meta_data(server)
    assert md["uuid"] == server.id
    assert md["name"] == "Web Server_1"
    assert md["hostname"] == "web-server-1"
    assert md["launch_index"] == 0
    assert md["availability_zone"] == "az1"
    assert md["project_id"] == "demo"
    assert md["meta"] == {"role": "web"}
    assert md["public_keys"] == {"alice-key": KEY}
    assert md["keys"] == [{"name": "alice-key", "type": "ssh", "data": KEY}]
    assert md["devices"] == [] and md["files"] == []
    assert len(base64.b64decode(md["random_seed"])) == mc.RANDOM_SEED_BYTES
    assert mc.meta_data(server)["random_seed"] != md["random_seed"]  # fresh every time
    # The oldest format has none of what later versions added.
    old = mc.meta_data(server, mc.FOLSOM)
    assert "random_seed" not in old and "keys" not in old and "project_id" not in old
    assert old["public_keys"] == {"alice-key": KEY}


def test_meta_data_without_key_or_zone() -> None:
    server = make_server("---", [], availability_zone=None)
    md = mc.meta_data(server)
    assert "public_keys" not in md and "keys" not in md
    assert md["availability_zone"] == "nova"
    assert md["hostname"] == f"server-{server.id[:8]}"
    assert mc.hostname(make_server("x" * 80 + ".example", [])) == "x" * 63


def test_network_data_two_networks() -> None:
    server = two_nic_server()
    a, b = server.network_info
    nd = mc.network_data(server)
    assert nd["links"] == [
        {"id": "tap" + a.port_id[:11], "type": "phy", "ethernet_mac_address": a.mac,
         "mtu": 1450, "vif_id": a.port_id},
        {"id": "tap" + b.port_id[:11], "type": "phy", "ethernet_mac_address": b.mac,
         "mtu": 1450, "vif_id": b.port_id},
    ]  # fmt: skip
    n0, n1 = nd["networks"]
    assert n0 == {
        "id": "network0", "type": "ipv4", "link": "tap" + a.port_id[:11],
        "ip_address": "10.0.0.5", "netmask": "255.255.255.0",
        "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}],
        "network_id": a.network_id, "services": [{"type": "dns", "address": "10.0.0.2"}],
    }  # fmt: skip
    assert n1["id"] == "network1" and n1["link"] == "tap" + b.port_id[:11]
    assert n1["ip_address"] == "172.16.9.7" and n1["netmask"] == "255.255.252.0"
    assert n1["routes"] == []  # that network has no gateway
    assert n1["network_id"] == b.network_id
    assert nd["services"] == [
        {"type": "dns", "address": "10.0.0.2"},
        {"type": "dns", "address": "172.16.8.53"},
    ]


def test_openstack_paths() -> None:
    server = two_nic_server()
    vd = {"cloud": "hvmesh"}
    for path in ("/openstack", "/openstack/"):
        doc = mc.lookup(server, path, vd)
        assert doc is not None
        assert doc.body.decode().split("\n") == [*mc.OPENSTACK_VERSIONS, "latest"]
    listing = mc.lookup(server, "/openstack/latest/", vd)
    assert listing is not None
    assert set(listing.body.decode().split("\n")) == {
        "meta_data.json", "network_data.json", "user_data", "vendor_data.json",
        "vendor_data2.json",
    }  # fmt: skip
    assert loads(mc.lookup(server, "/openstack/latest/meta_data.json", vd))["uuid"] == server.id
    assert loads(mc.lookup(server, "/openstack/2018-08-27/vendor_data.json", vd)) == vd
    assert loads(mc.lookup(server, "/openstack/latest/vendor_data2.json", vd)) == {}
    user = mc.lookup(server, "/openstack/2012-08-10/user_data", vd)
    assert user is not None and user.body == USER_DATA
    # What a version did not have yet, an unknown version, no user data: not found.
    assert mc.lookup(server, "/openstack/2013-04-04/network_data.json", vd) is None
    assert mc.lookup(server, "/openstack/2099-01-01/meta_data.json", vd) is None
    assert mc.lookup(server, "/openstack/latest/../latest/meta_data.json", vd) is None
    bare = make_server("bare", [])
    assert mc.lookup(bare, "/openstack/latest/user_data", vd) is None
    assert mc.lookup(bare, "/latest/user-data", vd) is None


def test_ec2_listings() -> None:
    server = two_nic_server()

    def text(path: str) -> str:
        doc = mc.lookup(server, path, {})
        assert doc is not None, path
        return doc.body.decode()

    assert text("/") == "2009-04-04\nlatest"
    assert text("/latest") == "meta-data/\nuser-data"
    listing = text("/latest/meta-data/").split("\n")
    assert "placement/" in listing and "public-keys/" in listing
    assert {"instance-id", "local-ipv4", "hostname", "ami-id", "instance-type"} <= set(listing)
    assert text("/latest/meta-data/instance-id") == "i-" + server.id.replace("-", "")[:8]
    assert text("/2009-04-04/meta-data/instance-id") == text("/latest/meta-data/instance-id")
    assert text("/latest/meta-data/local-ipv4") == "10.0.0.5"
    assert text("/latest/meta-data/local-hostname") == "web-server-1"
    assert text("/latest/meta-data/instance-type") == "m1.small"
    assert text("/latest/meta-data/placement/") == "availability-zone"
    assert text("/latest/meta-data/placement/availability-zone") == "az1"
    assert text("/latest/meta-data/public-keys/") == "0=alice-key"
    assert text("/latest/meta-data/public-keys/0/") == "openssh-key"
    assert text("/latest/meta-data/public-keys/0/openssh-key") == KEY
    assert text("/latest/user-data") == USER_DATA.decode()
    assert mc.lookup(server, "/latest/meta-data/public-keys/0/_name", {}) is None
    assert mc.lookup(server, "/latest/meta-data/nothing", {}) is None
    assert mc.lookup(server, "/1999-01-01/meta-data/", {}) is None


def test_config_drive_files() -> None:
    server = two_nic_server()
    files = mc.config_drive_files(server, {"a": 1})
    for version in (*mc.OPENSTACK_VERSIONS, "latest"):
        assert json.loads(files[f"openstack/{version}/meta_data.json"])["uuid"] == server.id
        assert files[f"openstack/{version}/user_data"] == USER_DATA
    assert json.loads(files["openstack/latest/vendor_data.json"]) == {"a": 1}
    assert json.loads(files["openstack/latest/network_data.json"])["networks"][1]["ip_address"] == (
        "172.16.9.7"
    )
    assert "openstack/2012-08-10/network_data.json" not in files  # as that version had
    ec2 = json.loads(files["ec2/latest/meta-data.json"])
    assert ec2["public-keys"] == {"0": {"openssh-key": KEY}}
    assert ec2["placement"] == {"availability-zone": "az1"}
    assert files["ec2/2009-04-04/meta-data.json"] == files["ec2/latest/meta-data.json"]


# --- config drive --------------------------------------------------------------------------------


def test_config_drive_iso(tmp_path: Path) -> None:
    server = two_nic_server()
    files = mc.config_drive_files(server, {"cloud": "hvmesh"})
    image = tmp_path / "disk.config"
    build_config_drive(files, image)

    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    if not os.path.exists(blkid):
        pytest.skip("blkid (util-linux) is not installed")
    out = subprocess.run(
        [blkid, "-p", "-o", "export", str(image)], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert fields["LABEL"] == "config-2" and fields["TYPE"] == "iso9660"

    # Read back every file by its Rock Ridge and its Joliet name.
    extracted = tmp_path / "extracted"
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        assert iso.has_rock_ridge() and iso.has_joliet()
        # Readers without either extension see strict ISO 9660 names.
        plain = io.BytesIO()
        iso.get_file_from_iso_fp(plain, iso_path="/OPENSTACK/2012_08_10/META_DATA.JSON;1")
        assert json.loads(plain.getvalue())["uuid"] == server.id
        for rel, data in files.items():
            rr, joliet = io.BytesIO(), io.BytesIO()
            iso.get_file_from_iso_fp(rr, rr_path="/" + rel)
            iso.get_file_from_iso_fp(joliet, joliet_path="/" + rel)
            assert rr.getvalue() == data and joliet.getvalue() == data, rel
            target = extracted / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(rr.getvalue())
    finally:
        iso.close()

    # cloud-init's config drive reader, on the tree as a guest would mount it.
    got = run_probe("drive", str(extracted))
    check_probe(got, server)
    assert got["vendor_data"] == {"cloud": "hvmesh"}


def test_config_drive_names_that_clash_in_iso9660(tmp_path: Path) -> None:
    files = {"a/meta-data.json": b"1", "a/meta_data.json": b"2", "a/b.c/d": b"3"}
    build_config_drive(files, tmp_path / "clash.iso")
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "clash.iso"))
    try:
        for rel, data in files.items():
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + rel)
            assert out.getvalue() == data, rel
    finally:
        iso.close()


def test_config_drive_rejects_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'\.\./x' is not a plain relative path"):
        build_config_drive({"../x": b""}, tmp_path / "bad.iso")
    assert not (tmp_path / "bad.iso").exists()


# --- cloud-init ------------------------------------------------------------------------------


def need_cloud_init() -> None:
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} is not installed")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import cloudinit"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cloud-init is not installed for {SYSTEM_PYTHON}")


def run_probe(mode: str, target: str, netns: str | None = None) -> dict[str, Any]:
    need_cloud_init()
    argv = [SYSTEM_PYTHON, PROBE, mode, target]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def run_probe_async(mode: str, target: str, netns: str) -> dict[str, Any]:
    """The probe as a child process, while this event loop keeps serving it."""
    need_cloud_init()
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, SYSTEM_PYTHON, PROBE, mode, target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("cloud-init probe did not finish in 120 s") from None
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def check_probe(got: dict[str, Any], server: Server) -> None:
    """What cloud-init understood matches the server record."""
    assert got["uuid"] == server.id and got["instance_id"] == server.id
    assert got["hostname"] == mc.hostname(server)
    assert got["availability_zone"] == server.availability_zone
    assert got["meta"] == server.metadata
    assert got["public_keys"] == [server.public_key]
    assert got["user_data"] == base64.b64decode(server.user_data or "").decode()
    config = got["network_config"]
    assert config["version"] == 1
    nics = [c for c in config["config"] if c["type"] == "physical"]
    assert [n["mac_address"] for n in nics] == [v.mac for v in server.network_info]
    for nic, vif in zip(nics, server.network_info, strict=True):
        assert nic["mtu"] == vif.mtu
        (subnet,) = nic["subnets"]
        assert subnet["type"] == "static" and subnet["address"] == vif.ip
        routes = subnet["routes"]
        if vif.gateway:
            assert routes == [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": vif.gateway}]
        else:
            assert routes == []
    dns = [c["address"] for c in config["config"] if c["type"] == "nameserver"]
    want: list[str] = []
    for vif in server.network_info:
        want.extend(a for a in vif.dns_nameservers if a not in want)
    assert dns == want


# --- the HTTP service ----------------------------------------------------------------------------


async def http(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    source: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request over TCP (from `source` when given); (status, headers, body)."""
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None
    )
    try:
        if raw is None:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    got = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert int(got["content-length"]) == len(body) or method == "HEAD"
    return int(status_line.split(" ")[1]), got, body


async def start_service(dep: Deployment, **metadata: Any) -> MetadataService:
    cfg = dep.config(metadata={"listen": "127.0.0.1", "port": 0, **metadata})
    nc = await dep.service_connection()
    dep.connections.append(nc)
    svc = MetadataService(nc, cfg)
    await dep.start(svc)
    return svc


async def test_service_by_forwarded_for(deployment: Deployment, tmp_path: Path) -> None:
    assert deployment.store is not None
    vendor = tmp_path / "vendor.json"
    vendor.write_text('{"cloud": "hvmesh"}')
    alice = two_nic_server("alice", first_ip="10.0.0.5")
    await seed(deployment.store, alice)
    svc = await start_service(
        deployment, use_forwarded_for=True, trusted_proxies=["127.0.0.1"], vendor_data=str(vendor)
    )
    assert svc.port > 0 and svc.address == "127.0.0.1"
    as_alice = {"X-Forwarded-For": "10.0.0.5, 127.0.0.1"}

    status, headers, body = await http(
        svc.port, "/openstack/latest/meta_data.json", headers=as_alice
    )
    assert status == 200 and headers["content-type"] == "application/json"
    md = json.loads(body)
    assert md["uuid"] == alice.id and md["public_keys"] == {"alice-key": KEY}
    status, _, body = await http(svc.port, "/openstack/latest/vendor_data.json", headers=as_alice)
    assert json.loads(body) == {"cloud": "hvmesh"}
    status, _, body = await http(svc.port, "/openstack", headers=as_alice)
    assert body.decode().split("\n")[-1] == "latest"
    status, _, body = await http(svc.port, "/latest/meta-data/local-ipv4", headers=as_alice)
    assert (status, body) == (200, b"10.0.0.5")
    status, headers, body = await http(
        svc.port, "/openstack/latest/user_data", method="HEAD", headers=as_alice
    )
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(USER_DATA)

    # A second instance, seeded after the service started (the ports watch sees it),
    # reads only its own data; alice still reads hers.
    bob = make_server(
        "bob", [vif_for(network("n", "10.0.1.0/24", None, []), "10.0.1.9", "fa:16:3e:00:01:09")]
    )
    await seed(deployment.store, bob)
    as_bob = {"X-Forwarded-For": "10.0.1.9"}
    status, _, body = await http(svc.port, "/openstack/latest/meta_data.json", headers=as_bob)
    assert status == 200 and json.loads(body)["uuid"] == bob.id
    assert "public_keys" not in json.loads(body)
    status, _, body = await http(svc.port, "/openstack/latest/user_data", headers=as_bob)
    assert status == 404 and b"not found" in body
    status, _, body = await http(svc.port, "/openstack/latest/network_data.json", headers=as_bob)
    assert [n["ip_address"] for n in json.loads(body)["networks"]] == ["10.0.1.9"]
    status, _, body = await http(svc.port, "/latest/meta-data/instance-id", headers=as_alice)
    assert body.decode() == mc.ec2_id("i", alice.id)

    # Nobody holds the address: 404 naming it. A bad header: 400.
    status, _, body = await http(svc.port, "/openstack", headers={"X-Forwarded-For": "10.9.9.9"})
    assert status == 404 and b"no instance has the address 10.9.9.9" in body
    status, _, body = await http(svc.port, "/openstack", headers={"X-Forwarded-For": "nope"})
    assert status == 400 and b"X-Forwarded-For 'nope' is not an IP address" in body
    # Without the header the request is the proxy's own, which is no instance.
    status, _, body = await http(svc.port, "/openstack/latest/meta_data.json")
    assert status == 404 and b"127.0.0.1" in body
    # A path that does not exist for the instance.
    status, _, body = await http(svc.port, "/openstack/latest/secrets", headers=as_alice)
    assert status == 404 and b"/openstack/latest/secrets not found" in body


async def test_service_by_source_address(deployment: Deployment) -> None:
    """Without a proxy the peer address names the instance; headers cannot override it."""
    assert deployment.store is not None
    # Linux answers on all of 127.0.0.0/8: 127.0.0.2 and .3 play two instances.
    net = network("lo", "127.0.0.0/8", None, [])
    one = make_server("one", [vif_for(net, "127.0.0.2", "fa:16:3e:00:00:aa")])
    two = make_server("two", [vif_for(net, "127.0.0.3", "fa:16:3e:00:00:bb")])
    await seed(deployment.store, one)
    await seed(deployment.store, two)
    # use_forwarded_for on, but the peers are not trusted proxies.
    svc = await start_service(deployment, use_forwarded_for=True, trusted_proxies=["192.0.2.250"])

    def uuid_of(body: bytes) -> str:
        return json.loads(body)["uuid"]

    path = "/openstack/latest/meta_data.json"
    status, _, body = await http(svc.port, path, source="127.0.0.2")
    assert status == 200 and uuid_of(body) == one.id
    status, _, body = await http(svc.port, path, source="127.0.0.3")
    assert status == 200 and uuid_of(body) == two.id
    # An untrusted X-Forwarded-For is ignored: one cannot read two's data.
    status, _, body = await http(
        svc.port, path, source="127.0.0.2", headers={"X-Forwarded-For": "127.0.0.3"}
    )
    assert status == 200 and uuid_of(body) == one.id
    # An address with no bound port.
    status, _, body = await http(svc.port, path, source="127.0.0.4")
    assert status == 404 and body == b"no instance has the address 127.0.0.4\n"
    # Unbinding the port takes the instance's access away.
    entry = await deployment.store.ports.get(two.network_info[0].port_id)
    assert entry is not None
    entry.value.server_id = None
    revision = await deployment.store.ports.put(entry.key, entry.value)
    await svc.wait_ports(revision)
    status, _, body = await http(svc.port, path, source="127.0.0.3")
    assert status == 404 and body == b"no instance has the address 127.0.0.3\n"


async def test_service_rejects_bad_requests(deployment: Deployment) -> None:
    svc = await start_service(deployment)
    status, headers, body = await http(svc.port, "/openstack", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert b"method POST is not allowed" in body
    status, _, body = await http(svc.port, "", raw=b"GET\r\n\r\n")
    assert status == 400 and b"malformed request line" in body
    status, _, body = await http(svc.port, "", raw=b"GET /x HTTP/2.0\r\n\r\n")
    assert status == 505
    status, _, body = await http(svc.port, "", raw=b"GET x HTTP/1.1\r\n\r\n")
    assert status == 400 and b"must be a path" in body
    status, _, body = await http(svc.port, "", raw=b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")
    assert status == 400 and b"request line longer than" in body
    status, _, body = await http(svc.port, "", raw=b"GET / HTTP/1.1\r\nbroken\r\n\r\n")
    assert status == 400 and b"malformed header line" in body


async def test_service_rejects_bad_vendor_data(deployment: Deployment, tmp_path: Path) -> None:
    from hvmesh.core.config import ConfigError

    bad = tmp_path / "vendor.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        await start_service(deployment, vendor_data=str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        await start_service(deployment, vendor_data=str(tmp_path / "missing.json"))


# --- cloud-init over HTTP, from an instance's own network namespace ------------------------------


def sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr.strip()}"


class Instance:
    """A network namespace playing an instance: one veth to the host, a second NIC inside."""

    def __init__(self) -> None:
        tag = os.urandom(3).hex()
        self.ns = f"hvm-md-{tag}"
        self.host_if = f"hvmd{tag}h"
        self.ns_if = f"hvmd{tag}n"
        # A random /29 of the documentation ranges that no address or route of this
        # machine overlaps (a sandbox may itself sit on 192.0.2.0/24): host side .1,
        # instance .2.
        net = random.choice(free_subnets())
        self.cidr = str(net)
        self.host_ip = str(net.network_address + 1)
        self.ip = str(net.network_address + 2)


def free_subnets() -> list[ipaddress.IPv4Network]:
    """/29s of 192.0.2.0/24 and 203.0.113.0/24 that overlap nothing this machine routes."""
    used: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-j", "-4", "addr"], ["ip", "-j", "-4", "route"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout or "[]"
        for item in json.loads(out):
            infos = item.get("addr_info", [item])
            for info in infos:
                dst = info.get("dst")
                if "local" in info:
                    used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", False))
                elif dst and dst != "default":
                    used.append(ipaddress.ip_network(dst, strict=False))
    candidates = [
        sub
        for block in ("192.0.2.0/24", "203.0.113.0/24")
        for sub in ipaddress.ip_network(block).subnets(new_prefix=29)
    ]
    free = [c for c in candidates if not any(c.overlaps(u) for u in used)]
    assert free, "every /29 of 192.0.2.0/24 and 203.0.113.0/24 is in use on this machine"
    return free


@pytest.fixture
def instance_netns() -> Iterator[Instance]:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace")
    if not shutil.which("ip"):
        pytest.skip("iproute2's ip is not installed")
    need_cloud_init()
    inst = Instance()
    made = subprocess.run(["ip", "netns", "add", inst.ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns is unavailable: {made.stderr.strip()}")
    try:
        yield inst
    finally:
        subprocess.run(["ip", "link", "del", inst.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", inst.ns], capture_output=True)


async def test_cloud_init_reads_the_service(
    deployment: Deployment, instance_netns: Instance
) -> None:
    """cloud-init's OpenStack data source, inside the instance, reads what it is served."""
    assert deployment.store is not None
    inst = instance_netns
    # Booted through the API on two networks: the ports, their addresses and MACs come
    # from hvmesh's IPAM; the first network's first address is the namespace's.
    await deployment.start_core(fake_hosts=1)
    admin = ApiClient(await deployment.connect("admin"))
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 256, "disk_gb": 1})
    await admin("images.create", {"name": "cirros"})
    await admin("networks.create", {
        "name": "net-a", "cidr": inst.cidr, "gateway": inst.host_ip,
        "allocation_start": inst.ip, "dns_nameservers": ["192.0.2.53"],
    })  # fmt: skip
    await admin("networks.create", {
        "name": "net-b", "cidr": "198.51.100.0/24", "gateway": "none",
        "dns_nameservers": ["198.51.100.53"],
    })  # fmt: skip
    await admin("keypairs.create", {"name": "alice-key", "public_key": KEY})
    server = await boot(
        deployment, admin, name="Probe VM", networks=["net-a", "net-b"], key_name="alice-key",
        user_data=base64.b64encode(USER_DATA).decode(), availability_zone="nova",
        metadata={"role": "probe"},
    )  # fmt: skip
    assert server.network_info[0].ip == inst.ip
    assert len({v.ip for v in server.network_info}) == 2
    # Someone else's server, whose data must never show.
    other = two_nic_server("other", first_ip="10.0.0.77")
    await seed(deployment.store, other)

    # The instance's NICs carry its ports' MACs, so cloud-init names them by MAC.
    a, b = server.network_info
    sh("ip", "link", "add", inst.host_if, "type", "veth", "peer", "name", inst.ns_if)
    sh("ip", "link", "set", inst.ns_if, "netns", inst.ns)
    sh("ip", "addr", "add", f"{inst.host_ip}/29", "dev", inst.host_if)
    sh("ip", "link", "set", inst.host_if, "up")
    ns = ("ip", "-n", inst.ns)
    sh(*ns, "link", "set", inst.ns_if, "address", a.mac)
    sh(*ns, "addr", "add", f"{inst.ip}/29", "dev", inst.ns_if)
    sh(*ns, "link", "set", inst.ns_if, "up")
    sh(*ns, "link", "set", "lo", "up")
    # The second NIC: one end of a veth pair that stays inside the namespace.
    sh(*ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1peer")
    sh(*ns, "link", "set", "eth1", "address", b.mac)

    svc = await start_service(deployment, listen=inst.host_ip)
    got = await run_probe_async("http", f"http://{inst.host_ip}:{svc.port}", inst.ns)
    check_probe(got, server)
    assert got["version"] == 2
    assert got["vendor_data"] == {}
    names = {c["mac_address"]: c["name"] for c in got["network_config"]["config"] if "name" in c}
    assert names[b.mac] == "eth1" and names[a.mac] == inst.ns_if
    ec2 = got["ec2"]
    assert ec2["instance-id"] == mc.ec2_id("i", server.id)
    assert ec2["local-ipv4"] == inst.ip
    assert ec2["public-keys"] == {"alice-key": KEY}
    assert ec2["placement"] == {"availability-zone": "nova"}
