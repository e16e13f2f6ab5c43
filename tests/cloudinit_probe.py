"""Read hvmesh metadata with cloud-init's own code and print what cloud-init understood.

Run with the system python3 (which has cloud-init), never the project's venv:

    python3 tests/cloudinit_probe.py http http://192.0.2.1:8775
    python3 tests/cloudinit_probe.py drive /path/to/extracted/config-drive

`http` runs cloud-init's OpenStack data source (DataSourceOpenStack.get_data, as a guest
does at boot) against the metadata service at the URL; run it inside the instance's
network namespace so the service knows it by its source address. `drive` reads a config
drive's files with cloud-init's ConfigDriveReader. Either prints one JSON object:
uuid, instance_id, hostname, public_keys, user_data, vendor_data, network_config, ec2.
This file imports nothing from hvmesh.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile

from cloudinit import helpers
from cloudinit.sources import DataSourceOpenStack
from cloudinit.sources.helpers import openstack


def _text(data: object) -> object:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data


def probe_http(base_url: str) -> dict:
    # This is no OpenStack machine (no OpenStack DMI product name), so the platform check
    # cannot pass here: accept the platform, as a guest on an OpenStack host would.
    DataSourceOpenStack.detect_openstack = lambda accept_oracle=False: True
    # cloud-init reads the EC2 tree from the fixed 169.254.169.254; read it from the same
    # service instead (the only change to how it talks to the service).
    openstack.ec2.get_instance_metadata = functools.partial(
        openstack.ec2.get_instance_metadata, metadata_address=base_url
    )
    sys_cfg = {
        "datasource_list": ["OpenStack"],
        "datasource": {
            "OpenStack": {
                "metadata_urls": [base_url],
                "max_wait": 10,
                "timeout": 3,
                "retries": 1,
                "apply_network_config": True,
            }
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
        ds = DataSourceOpenStack.DataSourceOpenStack(sys_cfg, None, paths)
        if not ds.get_data():
            raise SystemExit(f"cloud-init's OpenStack data source found nothing at {base_url}")
        return {
            "source": str(ds),
            "version": ds.version,
            "uuid": ds.metadata.get("uuid"),
            "instance_id": ds.get_instance_id(),
            "hostname": ds.metadata.get("local-hostname"),
            "availability_zone": ds.availability_zone,
            "meta": ds.metadata.get("meta"),
            "public_keys": ds.get_public_ssh_keys(),
            "user_data": _text(ds.userdata_raw),
            "vendor_data": ds.vendordata_pure,
            "network_config": ds.network_config,
            "ec2": ds.ec2_metadata,
        }


def probe_drive(path: str) -> dict:
    results = openstack.ConfigDriveReader(path).read_v2()
    md = results["metadata"]
    network_json = results.get("networkdata")
    # The guest's NICs do not exist here: name them eth0, eth1, ... in link order, as a
    # guest whose interfaces carry those MACs would see them.
    known_macs = {
        link["ethernet_mac_address"].lower(): f"eth{n}"
        for n, link in enumerate((network_json or {}).get("links", []))
    }
    return {
        "version": results["version"],
        "uuid": md.get("uuid"),
        "instance_id": md.get("instance-id"),
        "hostname": md.get("local-hostname"),
        "availability_zone": md.get("availability_zone"),
        "meta": md.get("meta"),
        "public_keys": list((md.get("public_keys") or {}).values()),
        "user_data": _text(results.get("userdata")),
        "vendor_data": results.get("vendordata"),
        "network_config": openstack.convert_net_json(network_json, known_macs=known_macs),
        "ec2": results.get("ec2-metadata"),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("http", "drive"):
        print(__doc__, file=sys.stderr)
        return 2
    out = probe_http(argv[2]) if argv[1] == "http" else probe_drive(argv[2])
    json.dump(out, sys.stdout, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
