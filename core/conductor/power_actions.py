"""The one-step actions: reboot, stop, start, pause, unpause, suspend, resume, rebuild.

Each is one driver step on the server's own host. On success the server rests in the
action's vm_state with the power state the agent saw; on failure (or when the host
does not answer within the action timeout) the task ends and the server is back where
it was, except after a failed reboot or rebuild, which Nova leaves in ERROR since the
guest's state is then unknown. Claims do not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.action_requests import Reboot, Rebuild
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.protocol.records import Server


@dataclass(frozen=True)
class OneStep:
    step: str  # the driver step (work kind)
    result: str | None  # vm_state after success; None: the one it started from
    on_failure: str | None = None  # vm_state after failure; None: unchanged


ONE_STEP: dict[str, OneStep] = {
    "reboot": OneStep("reboot", S.ACTIVE, on_failure=S.ERROR),
    "stop": OneStep("power_off", S.STOPPED),
    "start": OneStep("power_on", S.ACTIVE),
    "pause": OneStep("pause", S.PAUSED),
    "unpause": OneStep("unpause", S.ACTIVE),
    "suspend": OneStep("suspend", S.SUSPENDED),
    "resume": OneStep("resume", S.ACTIVE),
    # A stopped server is rebuilt stopped; an ERROR one comes back ACTIVE (as Nova's).
    "rebuild": OneStep("rebuild", None, on_failure=S.ERROR),
}


def register(lc: Lifecycle) -> None:
    for action, spec in ONE_STEP.items():
        runner = _Runner(lc, action, spec)
        lc.register(
            action,
            Handlers(
                run=runner.run,
                steps={spec.step: runner.on_step},
                timeout=runner.on_timeout,
            ),
        )


class _Runner:
    def __init__(self, lc: Lifecycle, action: str, spec: OneStep) -> None:
        self.lc = lc
        self.action = action
        self.spec = spec

    async def run(self, task: Task, srv: Server) -> None:
        assert srv.host is not None
        await self.lc.started(srv, self.action)
        params: dict[str, str] = {}
        image = None
        if isinstance(task.action, Reboot):
            params["type"] = task.action.type
        if isinstance(task.action, Rebuild):
            entry = await self.lc.st.images.get(task.action.image)
            if entry is None:
                await self.lc.fail(srv, self.action, f"image {task.action.image} is gone")
                return
            image = entry.value
            params["power_on"] = "0" if srv.vm_state == S.STOPPED else "1"
            new_image = image

            def to_new_image(s: Server) -> Server:
                return msgspec.structs.replace(
                    s,
                    image_id=new_image.id,
                    image_name=new_image.name,
                    image_properties=new_image.properties,
                )

            written = await self.lc.transition(srv, to_new_image)
            if written is None:
                return
            srv = written.value
        assert srv.host is not None  # checked at the start; a transition keeps the host
        await self.lc.send(srv, self.action, self.spec.step, srv.host, params, image)

    def _result(self, s: Server) -> str:
        if self.spec.result is not None:
            return self.spec.result
        return S.STOPPED if s.vm_state == S.STOPPED else S.ACTIVE  # rebuild

    async def on_step(self, ev: AgentEvent, srv: Server) -> None:
        power = ev.power_state

        if ev.ok:

            def succeeded(s: Server) -> Server:
                return msgspec.structs.replace(
                    s,
                    vm_state=self._result(s),
                    power_state=power if power is not None else s.power_state,
                    fault=None,
                )

            await self.lc.finish(srv, self.action, succeeded)
            return
        await self._failed(srv, power, ev.message)

    async def on_timeout(self, task: Task, srv: Server) -> None:
        await self._failed(srv, None, self.lc.timeout_reason(task))

    async def _failed(self, srv: Server, power: int | None, message: str) -> None:
        failure = self.spec.on_failure

        def failed(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                vm_state=failure or s.vm_state,
                power_state=power if power is not None else s.power_state,
            )

        await self.lc.finish(
            srv, self.action, failed, error=f"{self.action} failed: {message}", fault=True
        )
