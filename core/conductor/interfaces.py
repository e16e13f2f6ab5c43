"""The interface actions: attach-interface and detach-interface (Nova's os-interface).

The API has already made (or bound) the port of an attach, or checked that a detach
names one of the server's ports, and noted that port on the server (`pending_port`)
as it accepted the action. Each action is one driver step on the server's host; on
success the server's network_info gains or loses the interface, and a detached port is
let go (removed when hvmesh made it, else unbound). A failed or timed-out attach lets
its port go too; the server stays as it was.
"""

from __future__ import annotations

import msgspec

from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.protocol.records import Server, Vif
from hvmesh.core.state import ports

STEPS = {"attach-interface": "attach_interface", "detach-interface": "detach_interface"}


def register(lc: Lifecycle) -> None:
    for action, step in STEPS.items():
        runner = _Runner(lc, action, step)
        lc.register(
            action,
            Handlers(run=runner.run, steps={step: runner.on_step}, timeout=runner.on_timeout),
        )


class _Runner:
    def __init__(self, lc: Lifecycle, action: str, step: str) -> None:
        self.lc = lc
        self.action = action
        self.step = step
        self.attach = action == "attach-interface"

    async def vif_of(self, srv: Server) -> Vif | None:
        port_id = srv.pending_port
        if port_id is None:
            return None
        if not self.attach:
            return next((v for v in srv.network_info if v.port_id == port_id), None)
        port = await self.lc.st.ports.get(port_id)
        if port is None or port.value.server_id != srv.id:
            return None
        network = await self.lc.st.networks.get(port.value.network_id)
        return ports.vif(port.value, network.value) if network is not None else None

    async def run(self, task: Task, srv: Server) -> None:
        assert srv.host is not None
        await self.lc.started(srv, self.action)
        vif = await self.vif_of(srv)
        if vif is None:
            await self._failed(srv, "the port or its network is gone")
            return
        await self.lc.send(srv, self.action, self.step, srv.host, {"port": vif.port_id}, vif=vif)

    async def on_step(self, ev: AgentEvent, srv: Server) -> None:
        if not ev.ok:
            await self._failed(srv, ev.message)
            return
        vif = await self.vif_of(srv)
        port_id = srv.pending_port
        if self.attach and vif is not None:
            new = vif

            def attached(s: Server) -> Server:
                kept = [v for v in s.network_info if v.port_id != new.port_id]
                return msgspec.structs.replace(s, network_info=[*kept, new], pending_port=None)

            await ports.set_status(self.lc.st, attached(srv), "ACTIVE")
            await self.lc.finish(srv, self.action, attached)
            return
        if self.attach:
            await self._failed(srv, "the port or its network is gone")
            return

        def detached(s: Server) -> Server:
            kept = [v for v in s.network_info if v.port_id != port_id]
            return msgspec.structs.replace(s, network_info=kept, pending_port=None)

        if port_id:  # before the server shows the action done
            await ports.let_go(self.lc.st, srv.id, port_id)
        await self.lc.finish(srv, self.action, detached)

    async def on_timeout(self, task: Task, srv: Server) -> None:
        await self._failed(srv, self.lc.timeout_reason(task))

    async def _failed(self, srv: Server, message: str) -> None:
        port_id = srv.pending_port

        def clear(s: Server) -> Server:
            return msgspec.structs.replace(s, pending_port=None)

        if self.attach and port_id:  # before the server shows the action done
            await ports.let_go(self.lc.st, srv.id, port_id)
        await self.lc.finish(srv, self.action, clear, error=f"{self.action} failed: {message}")
