"""One loop per kind of upkeep runs every host's job of a process in turn (agents/upkeep.py)."""

from __future__ import annotations

import asyncio

import pytest

from hvmesh.agents.upkeep import Job, Rounds

INTERVAL = 0.2


def upkeep_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("upkeep-") and not t.done()]


async def test_one_loop_walks_every_host_in_turn() -> None:
    rounds = Rounds("test-turns", INTERVAL)
    ran: list[str] = []
    enough = asyncio.Event()
    hosts = [f"h{i}" for i in range(5)]

    def job_of(host: str) -> Job:
        async def job() -> None:
            ran.append(host)
            if len(ran) >= 3 * len(hosts):
                enough.set()

        return job

    jobs = {h: job_of(h) for h in hosts}
    for h in hosts:
        rounds.join(h, jobs[h])
    try:
        assert len(upkeep_tasks()) == 1  # one loop for all five hosts
        await asyncio.wait_for(enough.wait(), 30)
    finally:
        for h in hosts:
            await rounds.leave(h, jobs[h])
    assert ran[: 3 * len(hosts)] == hosts * 3  # each once a round, in turn
    assert upkeep_tasks() == []  # the last host gone, the loop ended


async def test_a_failing_job_holds_up_no_other() -> None:
    rounds = Rounds("test-failing", INTERVAL)
    others = asyncio.Event()
    failures = 0

    async def fails() -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("the hypervisor did not answer")

    async def works() -> None:
        if failures >= 2:
            others.set()

    rounds.join("bad", fails)
    rounds.join("good", works)
    try:
        await asyncio.wait_for(others.wait(), 30)
    finally:
        await rounds.leave("bad", fails)
        await rounds.leave("good", works)
    assert failures >= 2


async def test_leaving_cancels_the_running_job_and_spares_a_newer_one() -> None:
    rounds = Rounds("test-leave", INTERVAL)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rounds.join("h1", hangs)
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.wait_for(rounds.leave("h1", hangs), 30)
    assert cancelled.is_set()
    assert upkeep_tasks() == []

    # A host's agent restarted in the same process: the old one leaving takes the new
    # one's job along with it only if it is the same job.
    again = asyncio.Event()

    async def newer() -> None:
        again.set()

    rounds.join("h1", hangs)
    rounds.join("h1", newer)
    await rounds.leave("h1", hangs)
    assert rounds.jobs == {"h1": newer}
    try:
        await asyncio.wait_for(again.wait(), 30)
    finally:
        await rounds.leave("h1", newer)


@pytest.mark.parametrize("interval", [INTERVAL, 2 * INTERVAL])
async def test_rounds_are_shared_per_kind_and_interval(interval: float) -> None:
    assert Rounds.of("power_sync", interval) is Rounds.of("power_sync", interval)
    assert Rounds.of("power_sync", interval) is not Rounds.of("reconcile", interval)
    assert Rounds.of("power_sync", interval) is not Rounds.of("power_sync", interval + 1)
