"""`hvmesh server <action>` and `hvmesh server event list|show` through the real binary."""

from __future__ import annotations

from hvmesh.core.ops import audit
from tests.support import ApiClient, Deployment, boot, make_flavor_image, wait_server
from tests.test_cli import Cli, hvmesh


async def boot_id(dep: Deployment, admin: ApiClient) -> str:
    await make_flavor_image(admin)
    return (await boot(dep, admin)).id


async def test_cli_server_actions(cloud: Deployment, admin: ApiClient) -> None:
    cli = Cli(cloud)
    sid = await boot_id(cloud, admin)

    stopped = await cli.json("server", "stop", sid, "--wait")
    assert (stopped["status"], stopped["task_state"]) == ("SHUTOFF", None)
    assert stopped["request_id"].startswith("req-")
    table = await cli.ok("server", "start", sid, "--wait")
    assert "ACTIVE" in table and "request_id" in table
    rebooted = await cli.json("server", "reboot", sid, "--hard", "--wait")
    assert rebooted["status"] == "ACTIVE" and rebooted["power_state"] == 1

    # Without --wait the reply is the accepted action; a second one is refused in one line.
    paused = await cli.json("server", "pause", sid)
    assert paused["task_state"] in ("pausing", None)
    await wait_server(cloud.store, sid, lambda s: s is not None and s.task_state is None)
    error = await cli.fails("server", "resume", sid)
    assert error.startswith("error (409):") and "vm_state paused" in error
    assert (await cli.json("server", "unpause", sid, "--wait"))["status"] == "ACTIVE"

    console = await cli.ok("server", "console-log", sid)
    assert "booting cirros" in console and "hard reboot" in console
    assert (await cli.ok("server", "console-log", sid, "--lines", "1")).splitlines() == [
        console.splitlines()[-1]
    ]

    locked = await cli.json("server", "lock", sid, "--reason", "backup")
    assert locked["locked"] is True and locked["locked_reason"] == "backup"
    assert (await cli.json("server", "unlock", sid))["locked"] is False
    assert (await cli.json("server", "reset-state", sid))["status"] == "ERROR"
    assert (await cli.json("server", "reset-state", sid, "--active"))["status"] == "ACTIVE"

    events = await cli.json("server", "event", "list", sid)
    assert [e["action"] for e in events][:4] == ["reset-state", "reset-state", "unlock", "lock"]
    assert events[-1]["action"] == "create"
    stop = next(e for e in events if e["action"] == "stop")
    listing = await cli.ok("server", "event", "list", sid)
    assert [cell.strip() for cell in listing.splitlines()[1].strip("|").split("|")] == [
        "Request ID",
        "Action",
        "Start Time",
        "Message",
        "User",
    ]
    shown = await cli.ok("server", "event", "show", sid, stop["request_id"])
    assert "conductor_stop" in shown and "compute_power_off" in shown and "Success" in shown
    detail = await cli.json("server", "event", "show", sid, stop["request_id"])
    assert [e["event"] for e in detail["events"]] == ["conductor_stop", "compute_power_off"]
    assert await audit.audit(cloud.store) == []


async def test_cli_wait_reports_a_failed_action(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(fake={"fail_steps": ["power_off"]}), fake_hosts=1)
    cli = Cli(deployment)
    sid = await boot_id(deployment, admin)
    code, _, err = await hvmesh("server", "stop", sid, "--wait", *cli.auth)
    assert code == 1
    *progress, error = err.rstrip().splitlines()  # progress lines, then one error line
    assert progress and all(line.startswith(" ") for line in progress)
    assert error.startswith("error: stop of server") and "simulated power_off failure" in error
    events = await cli.json("server", "event", "list", sid)
    assert (events[0]["action"], events[0]["message"]) == ("stop", "Error")
    assert await audit.audit(deployment.store) == []
