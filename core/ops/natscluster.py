"""The core on a cluster of nats-servers: three (or more) nodes routed to each other, each with
its own JetStream store, so that hvmesh's replicated streams and buckets outlive any one node.

`hvmesh up --cluster` and the chaos run's cluster start one here on one machine; the same
nats.conf runs each node of a real cluster (docs/sites.md shows the per-node commands).
All nodes share one configuration directory (passwords, users, TLS, cluster.conf); each
has its own store, log and ports under <data-dir>/node-<n>.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from hvmesh.core.ops import natsserver
from hvmesh.core.ops import tls as nats_tls

CLUSTER_NAME = "hvmesh"


def cluster_block(host: str, route_ports: list[int], password: str) -> str:
    """The cluster block every node includes: its route port from the environment, every
    node's route (a node ignores the route to itself), routes authenticated by password."""
    routes = "\n".join(f"    nats-route://route:{password}@{host}:{p}" for p in route_ports)
    return (
        "cluster {\n"
        f"  name: {CLUSTER_NAME}\n"
        f"  host: {host}\n"
        "  port: $HVMESH_CLUSTER_PORT\n"
        f'  authorization {{ user: route, password: "{password}" }}\n'
        "  routes: [\n"
        f"{routes}\n"
        "  ]\n"
        "}\n"
    )


@dataclass
class Node:
    """One node's ports and files; `server` while it runs."""

    index: int
    port: int
    leaf_port: int
    route_port: int
    monitor_port: int
    dir: Path
    server: natsserver.NatsServer | None = None

    @property
    def name(self) -> str:
        return f"{CLUSTER_NAME}-{self.index + 1}"

    def running(self) -> bool:
        return self.server is not None and self.server.process.poll() is None


@dataclass
class NatsCluster:
    """A running cluster; reached, as a client, through every node's address."""

    data_dir: Path
    host: str
    nodes: list[Node]
    passwords: dict[str, str]
    conf: Path
    tls: nats_tls.TlsFiles | None = None
    tied: bool = False
    ready_timeout: float = 30.0
    _starts: dict[int, int] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    @property
    def address(self) -> str:
        """Every node's URL, comma-separated: what [nats] url takes."""
        return ",".join(f"{self.scheme}://{self.host}:{n.port}" for n in self.nodes)

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def leaf_port(self) -> int:
        return self.nodes[0].leaf_port

    @property
    def monitor_port(self) -> int:
        return self.nodes[0].monitor_port

    @property
    def log_path(self) -> Path:
        return self.nodes[0].dir / "nats-server.log"

    def ports_for(self, what: str) -> str:
        """Each node's `what` port ("port", "leaf_port", "monitor_port"), comma-separated."""
        return ",".join(str(getattr(n, what)) for n in self.nodes)

    def url_for(self, user: str) -> str:
        name = "hvmesh" if user == "service" else user
        secret = self.passwords[user]
        return ",".join(f"{self.scheme}://{name}:{secret}@{self.host}:{n.port}" for n in self.nodes)

    def tls_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca))

    def running(self) -> list[int]:
        return [n.index for n in self.nodes if n.running()]

    def launch(self, index: int) -> natsserver.NatsServer:
        """Start node `index` (again: same ports, same store); returns before it is ready."""
        node = self.nodes[index]
        env = natsserver.node_env(
            self.passwords,
            host=self.host,
            port=node.port,
            leaf_port=node.leaf_port,
            monitor_port=node.monitor_port,
            store_dir=node.dir / "jetstream",
            name=node.name,
        )
        env["HVMESH_CLUSTER_PORT"] = str(node.route_port)
        log_path = node.dir / "nats-server.log"
        node.server = natsserver.NatsServer(
            process=natsserver.spawn(self.conf, env, log_path, self.tied),
            host=self.host,
            port=node.port,
            leaf_port=node.leaf_port,
            passwords=self.passwords,
            log_path=log_path,
            monitor_port=node.monitor_port,
            tls=self.tls,
        )
        self._starts[index] = self._starts.get(index, 0) + 1
        return node.server

    async def restart(self, index: int) -> None:
        """Start node `index` again and wait until it serves JetStream (it catches up after)."""
        server = self.launch(index)
        await natsserver.wait_ready(server, self.ready_timeout)

    def kill(self, index: int) -> None:
        """SIGKILL node `index`."""
        server = self.nodes[index].server
        if server is not None:
            server.kill()

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            if node.server is not None:
                node.server.stop(timeout)


async def start(
    data_dir: Path,
    nodes: int = 3,
    ports: list[int] | None = None,
    host: str = "127.0.0.1",
    tied: bool = False,
    leaf_ports: list[int] | None = None,
    monitor_ports: list[int] | None = None,
    tls_files: nats_tls.TlsFiles | None = None,
    ready_timeout: float = 30.0,
) -> NatsCluster:
    """Start `nodes` nats-servers routed into one cluster; returns once every one serves
    JetStream (which needs a quorum, so all are started before any is waited for).

    Client, leaf node and monitoring ports are `ports`, `leaf_ports` and `monitor_ports`
    (free ones where None); route ports are free ones.
    """
    if nodes < 3 or nodes % 2 == 0:
        raise natsserver.NatsServerError(
            f"a cluster needs an odd number of nodes, at least 3 (not {nodes})"
        )
    taken: set[int] = set()

    def pick() -> int:
        port = natsserver.free_port(avoid=taken)
        taken.add(port)
        return port

    for given in (ports, leaf_ports, monitor_ports):
        taken.update(given or [])
    client_ports = ports or [pick() for _ in range(nodes)]
    leaves = leaf_ports or [pick() for _ in range(nodes)]
    monitors = monitor_ports or [pick() for _ in range(nodes)]
    members = [
        Node(
            index=i,
            port=client_ports[i],
            leaf_port=leaves[i],
            route_port=pick(),
            monitor_port=monitors[i],
            dir=data_dir / f"node-{i + 1}",
        )
        for i in range(nodes)
    ]
    passwords = natsserver.load_secrets(data_dir)
    block = cluster_block(host, [n.route_port for n in members], passwords["route"])
    conf = natsserver.write_conf(data_dir, tls_files, cluster=block)
    cluster = NatsCluster(
        data_dir=data_dir,
        host=host,
        nodes=members,
        passwords=passwords,
        conf=conf,
        tls=tls_files,
        tied=tied,
        ready_timeout=ready_timeout,
    )
    try:
        servers = [cluster.launch(i) for i in range(nodes)]
        await asyncio.gather(*(natsserver.wait_ready(s, ready_timeout) for s in servers))
    except BaseException:
        cluster.stop()
        raise
    return cluster
