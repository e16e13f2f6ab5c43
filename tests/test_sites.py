"""Sites: a core and two sites, each a real `hvmesh up` (the sites with --site --hub), each
site's leaf-node link through a TCP relay the test cuts and restores.

Boots at the core land at the site of their availability zone; a site cut off boots and
deletes through its own API while the core lists its servers as UNKNOWN and the other
site works on; requests the core queued for it run once the link is back, or fail with
a fault once they outlive [site] request_timeout; the core's view then matches the
site's records server by server. With the core on a 3-node cluster, a node lost while
a site is cut off loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest

from hvmesh.core.ops import natsserver
from hvmesh.core.protocol import errors
from tests.site_relay import Relay
from tests.support import HVMESH, ApiClient, hvmesh, until
from tests.test_first_command import BANNER_END, Lines

REQUEST_TIMEOUT = 40  # the core's [site] request_timeout in these tests, seconds
BOOT = {"flavor": "m1.small", "image": "cirros", "networks": ["net1"]}


class Up:
    """One `hvmesh up` process: the core, or a site."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str], *extra: str) -> None:
        self.dir = tmp / name
        self.dir.mkdir()
        conf = self.dir / "hvmesh.conf"
        conf.write_text(
            f"[site]\nrequest_timeout = {REQUEST_TIMEOUT}\nlink_check_interval = 0.5\n"
            "[fake]\nspawn_delay = 0.05\ndestroy_delay = 0.01\n"
            "[compute]\nheartbeat_interval = 1.0\n"
        )
        self.port = natsserver.free_port()
        self.leaf_port = natsserver.free_port(avoid={self.port})
        argv = [
            HVMESH, "up", "--config", str(conf), "--data-dir", str(self.dir / "data"),
            "--nats-port", str(self.port), "--leaf-port", str(self.leaf_port),
            "--metadata-port", str(natsserver.free_port(avoid={self.port, self.leaf_port})),
            "--monitor-port", "0", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(self.dir / "up.log", "w"),  # noqa: SIM115 (closed with the process)
            text=True,
            start_new_session=True,
        )
        self.nc: Any = None

    async def ready(self) -> ApiClient:
        banner = await asyncio.to_thread(Lines(self.proc).until, BANNER_END, 180)
        assert "hvmesh is up" in banner, banner
        urls = [f"nats://127.0.0.1:{p}" for p in self.listening("client")]
        self.nc = await nats.connect(
            servers=urls, user="admin", password=self.password("admin"), max_reconnect_attempts=-1
        )
        return ApiClient(self.nc)

    def listening(self, what: str) -> list[int]:
        """The ports this deployment's nats-server(s) listen on for `what` (client,
        leafnode), node by node, as their logs say."""
        data = self.dir / "data"
        logs = sorted(data.glob("node-*/nats-server.log")) or [data / "nats-server.log"]
        ports = []
        for log in logs:
            for line in log.read_text().splitlines():
                if f"Listening for {what} connections on" in line:
                    ports.append(int(line.rsplit(":", 1)[1]))
                    break
        assert ports, f"no {what} port in {logs}"
        return ports

    def node_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-f", f"nats-server -c {self.dir / 'data'}/nats.conf"],
            capture_output=True,
            text=True,
        )
        return [int(p) for p in out.stdout.split()]

    def password(self, user: str) -> str:
        return json.loads((self.dir / "data" / "secrets.json").read_text())[user]

    def hub_url(self, port: int) -> str:
        """A leaf-node URL of this core through `port` (a relay), with its credentials."""
        return f"nats-leaf://hvmesh:{self.password('service')}@127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def catalogue(api: ApiClient) -> None:
    """A flavor, an image and a network: each deployment, core or site, has its own."""
    await api("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 256, "disk_gb": 1})
    await api("images.create", {"name": "cirros", "disk_format": "qcow2"})
    await api("networks.create", {"name": "net1", "cidr": "10.0.0.0/24", "shared": True})


async def listed(api: ApiClient) -> dict[str, dict[str, Any]]:
    """Every server the API lists, by id."""
    servers = (await api("servers.list", {"all_projects": True, "limit": 1000}))["servers"]
    return {s["id"]: s for s in servers}


async def sites(api: ApiClient) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in (await api("sites.list", {}))["sites"]}


async def statuses(api: ApiClient, want: dict[str, str], what: str, timeout: float = 60) -> None:
    """Wait until the API lists each server of `want` with its status."""
    last: dict[str, str] = {}

    async def match() -> bool:
        try:
            shown = await listed(api)
        except errors.ServiceUnavailable:  # a bounded pause while a core node is lost
            return False
        last.update({i: shown[i]["status"] if i in shown else "absent" for i in want})
        return all(last[i] == s for i, s in want.items())

    try:
        await until(match, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None


async def boot_at(api: ApiClient, name: str, zone: str | None) -> str:
    body = {"name": name, **BOOT, **({"availability_zone": zone} if zone else {})}
    return str((await api("servers.create", body))["server"]["id"])


@asynccontextmanager
async def deployment(
    tmp: Path, *core_args: str, names: tuple[str, ...] = ("east", "west")
) -> AsyncIterator[tuple[Up, ApiClient, dict[str, tuple[Up, ApiClient, Relay]]]]:
    """A core and the sites `names`, each joined through its own relay."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "xdg")}
    ups: list[Up] = []
    relays: list[Relay] = []
    try:
        core = Up(tmp, "core", env, "--fake-hosts", "1", *core_args)
        ups.append(core)
        core_api = await core.ready()
        await catalogue(core_api)
        leaf_ports = core.listening("leafnode")  # a cluster's: each node's
        joined: dict[str, tuple[Up, ApiClient, Relay]] = {}
        for name in names:
            relay = await Relay(leaf_ports).start()
            relays.append(relay)
            site = Up(tmp, name, env, "--fake-hosts", "2", "--site", name,
                      "--hub", core.hub_url(relay.port))  # fmt: skip
            ups.append(site)
            joined[name] = (site, await site.ready(), relay)
            await catalogue(joined[name][1])

        async def both_up() -> bool:
            known = await sites(core_api)
            return all(known.get(n, {}).get("link") == "up" for n in names)

        await until(both_up, 60, "every site joined, its link up")
        yield core, core_api, joined
    finally:
        for relay in relays:
            await relay.stop()
        for up in reversed(ups):
            await up.stop()


@pytest.mark.timeout(600)
async def test_sites_route_by_zone_keep_working_cut_off_and_converge(tmp_path: Path) -> None:
    async with deployment(tmp_path) as (_, core_api, joined):
        _, east_api, east_relay = joined["east"]
        _, west_api, _ = joined["west"]

        # Routed by zone: each boot lands at its zone's site; no zone stays at the core.
        a = await boot_at(core_api, "a", "east")
        a2 = await boot_at(core_api, "a2", "east")
        b = await boot_at(core_api, "b", "west")
        c = await boot_at(core_api, "c", None)
        want = {a: "ACTIVE", a2: "ACTIVE", b: "ACTIVE", c: "ACTIVE"}
        await statuses(core_api, want, "a, a2, b, c ACTIVE")
        at_east, at_west = await listed(east_api), await listed(west_api)
        assert set(at_east) == {a, a2} and set(at_west) == {b}
        assert at_east[a]["host"].startswith("east-fake-")
        assert at_west[b]["host"].startswith("west-fake-")
        shown = await listed(core_api)
        assert (shown[a]["site"], shown[b]["site"]) == ("east", "west")
        assert "site" not in shown[c]
        assert (await core_api("servers.get", {"id": a}))["server"]["host"] == at_east[a]["host"]
        # A create for a site with a client token, asked twice: one server.
        once = {"name": "once", **BOOT, "availability_zone": "west", "client_token": "t-once"}
        v11 = {"headers": {"Hvmesh-API-Version": "1.1"}}
        first = (await core_api("servers.create", once, **v11))["server"]["id"]
        again = (await core_api("servers.create", once, **v11))["server"]["id"]
        assert first == again
        await statuses(west_api, {first: "ACTIVE"}, "the once-created server at west")
        assert [s["name"] for s in (await listed(west_api)).values()].count("once") == 1
        # Updates and actions of a site's server at the core run at the site.
        await core_api("servers.update", {"id": b, "name": "b-renamed"})
        await core_api("servers.action", {"id": b, "action": "stop"})
        await statuses(west_api, {b: "SHUTOFF"}, "b stopped at west, through the core")
        assert (await listed(west_api))[b]["name"] == "b-renamed"
        await statuses(core_api, {b: "SHUTOFF"}, "b SHUTOFF at the core too")

        # A create the site refuses (no such flavor there) fails with the site's reason.
        refused = (
            await core_api(
                "servers.create",
                {"name": "r", **BOOT, "flavor": "m1.tiny", "availability_zone": "east"},
            )
        )["server"]["id"]
        await statuses(core_api, {refused: "ERROR"}, "the refused create in ERROR")
        fault = (await core_api("servers.get", {"id": refused}))["server"]["fault"]
        assert "site east" in fault["message"] and "m1.tiny" in fault["message"], fault
        await core_api("servers.delete", {"id": refused})  # nothing at east: gone at once
        assert refused not in await listed(core_api)

        # Cut east off.
        east_relay.cut()

        async def east_down() -> bool:
            return (await sites(core_api))["east"]["link"] == "down"

        await until(east_down, 30, "the core to see east's link down")
        await statuses(core_api, {a: "UNKNOWN", b: "SHUTOFF"}, "east's servers UNKNOWN")
        # East works through its own API: boots, and a delete.
        d = await boot_at(east_api, "d", None)
        e = await boot_at(east_api, "e", None)
        await east_api("servers.delete", {"id": a})
        await statuses(east_api, {d: "ACTIVE", e: "ACTIVE", a: "absent"}, "east's own work")
        # The other site works normally through the core.
        f = await boot_at(core_api, "f", "west")
        await statuses(core_api, {f: "ACTIVE", b: "SHUTOFF"}, "west's boot through the core")
        await core_api("servers.delete", {"id": first})
        # The core accepts a create for east: queued, shown BUILD, while east's are UNKNOWN.
        g = await boot_at(core_api, "g", "east")
        await statuses(core_api, {g: "BUILD", a: "UNKNOWN"}, "g queued for east")
        # ... and an action on one of east's: queued too, run when the link is back.
        await core_api("servers.action", {"id": a2, "action": "stop"})
        with pytest.raises(errors.Conflict, match="site east"):  # not handed to sites
            await core_api("servers.events.list", {"id": a2})
        assert (await sites(core_api))["east"]["queued"] == 1  # creates waiting

        # Restored: the queued create runs there, and the core converges to east's truth.
        east_relay.restore()
        await statuses(east_api, {g: "ACTIVE", a2: "SHUTOFF"}, "g booted, a2 stopped at east")
        truth: dict[str, str] = {}

        async def converged() -> bool:
            truth.clear()
            truth.update({i: s["status"] for i, s in (await listed(east_api)).items()})
            shown = await listed(core_api)
            at_core = {i: s["status"] for i, s in shown.items() if s.get("site") == "east"}
            return at_core == truth

        await until(converged, 60, "the core's view of east to match east, server by server")
        assert set(truth) == {a2, d, e, g}
        assert {truth[i] for i in (d, e, g)} == {"ACTIVE"} and truth[a2] == "SHUTOFF"
        assert a not in await listed(core_api)  # deleted during the cut: gone at the core

        # A request that outlives [site] request_timeout while east is cut off fails with
        # a fault at the core, and is not booted when it reaches east later.
        east_relay.cut()
        await until(east_down, 30, "east's link down again")
        h = await boot_at(core_api, "h", "east")
        await statuses(core_api, {h: "ERROR"}, "h failed at the core", REQUEST_TIMEOUT + 30)
        fault = (await core_api("servers.get", {"id": h}))["server"]["fault"]
        assert "request_timeout" in fault["message"], fault
        east_relay.restore()

        async def east_up() -> bool:
            return (await sites(core_api))["east"]["link"] == "up"

        await until(east_up, 30, "east's link up again")
        i = await boot_at(core_api, "i", "east")  # the link carries new work again
        await statuses(east_api, {i: "ACTIVE"}, "i booted at east")
        assert h not in await listed(east_api)  # came too late: not booted
        await core_api("servers.delete", {"id": i})  # a delete at the core runs at east
        await statuses(core_api, {i: "absent"}, "i deleted at east, through the core")
        assert i not in await listed(east_api)

        # The CLI shows the sites.
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        code, out, err = await hvmesh("site", "list", "-f", "json", env=env)
        assert code == 0, err
        shown_sites = {s["name"]: s for s in json.loads(out)}
        assert set(shown_sites) == {"east", "west"}
        assert shown_sites["east"]["availability_zones"] == ["east"]
        assert shown_sites["west"]["link"] == "up"


async def link(api: ApiClient, site: str, state: str) -> None:
    async def seen() -> bool:
        try:
            return (await sites(api))[site]["link"] == state
        except errors.ServiceUnavailable:  # a bounded pause while a core node is lost
            return False

    await until(seen, 60, f"the core to see {site}'s link {state}")


@pytest.mark.timeout(600)
async def test_core_cluster_loses_a_node_while_a_site_is_cut_off(tmp_path: Path) -> None:
    """Nothing is lost: the core's own server, the site's work during the cut, and a
    create the core queued for the site before the node died."""
    async with deployment(tmp_path, "--cluster", names=("east",)) as (core, core_api, joined):
        _, east_api, east_relay = joined["east"]
        a = await boot_at(core_api, "a", "east")
        c = await boot_at(core_api, "c", None)
        await statuses(core_api, {a: "ACTIVE", c: "ACTIVE"}, "a (east) and c (core) ACTIVE")

        east_relay.cut()
        await link(core_api, "east", "down")
        d = await boot_at(east_api, "d", None)
        await east_api("servers.delete", {"id": a})
        g = await boot_at(core_api, "g", "east")
        await statuses(core_api, {g: "BUILD", a: "UNKNOWN", c: "ACTIVE"}, "g queued")

        # The node east's link went to (the relay's first choice) dies, while east is cut.
        assert len(core.node_pids()) == 3
        log = (core.dir / "data" / "node-1" / "nats-server.log").read_text()
        first = int(log.split("]", 1)[0].lstrip("["))  # each line starts [<pid>]
        assert first in core.node_pids()
        os.kill(first, signal.SIGKILL)
        await until(lambda: len(core.node_pids()) == 2, 10, "the killed node gone")

        # The core answers on two nodes; the queued create and the core's server are kept.
        await statuses(core_api, {g: "BUILD", c: "ACTIVE"}, "the core on two nodes", 120)
        east_relay.restore()  # the relay now reaches a node still up
        await link(core_api, "east", "up")
        await statuses(east_api, {g: "ACTIVE", d: "ACTIVE", a: "absent"}, "g booted at east")
        truth: dict[str, str] = {}

        async def converged() -> bool:
            truth.clear()
            truth.update({i: s["status"] for i, s in (await listed(east_api)).items()})
            shown = await listed(core_api)
            return {i: s["status"] for i, s in shown.items() if s.get("site") == "east"} == truth

        await until(converged, 120, "the core's view of east to match east")
        assert set(truth) == {d, g}
        assert (await listed(core_api))[c]["status"] == "ACTIVE"
