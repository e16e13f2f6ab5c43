"""The Hyper-V driver against the WinRM test peer (tests/winrm): the transport, PowerShell errors, credentials, values passed as data, and what each step does to the host model.

The driver talks to the peer through pywinrm's real HTTPS transport; the model is
checked directly (its VMs, files and the cmdlets it ran).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from winrm.exceptions import WSManFaultError
from winrm.protocol import Protocol

from hvmesh.agents.driver import DriverError
from hvmesh.agents.hyperv import scripts
from hvmesh.agents.hyperv.clixml import error_message
from hvmesh.agents.hyperv.driver import HypervDriver
from hvmesh.agents.hyperv.transport import CommandFailed
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Flavor, Server, Vif
from tests.drivers.hyperv_peer import LocalImages, hyperv_config, vhdx_image
from tests.drivers.peers import ready
from tests.support import until
from tests.winrm.hyperv import VM
from tests.winrm.peer import HypervSim

TIMEOUT = 30.0


def encoded(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode()


def protocol(sim: HypervSim, host: str = "HV1", password: str | None = None) -> Protocol:
    return Protocol(
        f"https://127.0.0.1:{sim.host(host).port}/wsman",
        transport="basic",
        username=sim.username,
        password=password or sim.password,
        ca_trust_path=str(sim.ca_file),
        proxy=None,
    )


def vif(mac: str = "fa:16:3e:00:00:01", physnet: str = "physnet1") -> Vif:
    return Vif(port_id=f"port-{mac[-2:]}", network_id="n", network_name="net", mac=mac,
               ip="10.0.0.5", cidr="10.0.0.0/24", physical_network=physnet)  # fmt: skip


def server(name: str = "vm", **kw: object) -> Server:
    flavor = Flavor(id="f", name="m1", vcpus=2, ram_mb=512, disk_gb=1)
    s = Server(id=str(uuid.uuid4()), name=name, project="demo", user="alice", flavor=flavor,
               image_id="img-vhdx", image_name="tiny", vm_state="active", task_state=None,
               host="HV1")  # fmt: skip
    return msgspec.structs.replace(s, **kw) if kw else s


def vm_of(sim: HypervSim, server_id: str, host: str = "HV1") -> VM | None:
    return next((vm for vm in sim.host(host).model.vms if vm.name == server_id), None)


@contextlib.asynccontextmanager
async def driver_on(
    sim: HypervSim, tmp: Path, host: str = "HV1", **hyperv: object
) -> AsyncIterator[tuple[HypervDriver, LocalImages]]:
    tmp.mkdir(parents=True, exist_ok=True)
    image, images = vhdx_image(tmp)
    driver = HypervDriver(host, hyperv_config(sim, host, **hyperv))
    await ready(driver, images)
    driver.test_image = image  # type: ignore[attr-defined]
    try:
        yield driver, images
    finally:
        await driver.cleanup_host()


# --- the transport ------------------------------------------------------------------------


def test_a_shell_lives_through_create_command_receive_signal_delete(hyperv_sim: HypervSim) -> None:
    p = protocol(hyperv_sim)
    shell = p.open_shell()
    command = p.run_command(
        shell, "powershell.exe", ["-NoProfile", "-EncodedCommand", encoded("Get-VMHost | Select-Object ComputerName | ConvertTo-Json -Compress")],
        skip_cmd_shell=True,
    )  # fmt: skip
    stdout, stderr, code = p.get_command_output(shell, command)
    assert (stdout.strip(), stderr, code) == (b'{"ComputerName":"HV1"}', b"", 0)
    p.cleanup_command(shell, command)  # Signal terminate
    with pytest.raises(WSManFaultError) as gone:  # the signalled command is no more
        p.get_command_output_raw(shell, command)
    assert gone.value.fault_subcode == "w:InvalidSelectors"
    # two commands in one shell
    for script in ("$null", "Test-Path -LiteralPath 'C:\\' | ConvertTo-Json"):
        c = p.run_command(shell, "powershell.exe", ["-EncodedCommand", encoded(script)])
        assert p.get_command_output(shell, c)[2] == 0
        p.cleanup_command(shell, c)
    p.close_shell(shell)  # Delete
    with pytest.raises(WSManFaultError) as closed:
        p.run_command(shell, "powershell.exe", ["-EncodedCommand", encoded("$null")])
    assert "shell was not found" in closed.value.reason


def soap(action: str, body: str, shell: str = "", message_id: str = "") -> bytes:
    selector = (
        f'<w:SelectorSet><w:Selector Name="ShellId">{shell}</w:Selector></w:SelectorSet>'
        if shell else ""
    )  # fmt: skip
    return (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Header>'
        f"<a:To>https://127.0.0.1/wsman</a:To><a:Action>{action}</a:Action>"
        f"<a:MessageID>{message_id or 'uuid:' + str(uuid.uuid4())}</a:MessageID>"
        "<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
        f"<w:OperationTimeout>PT20S</w:OperationTimeout>{selector}</s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def test_another_client_speaking_the_protocol_runs_a_command(hyperv_sim: HypervSim) -> None:
    """Plain SOAP from urllib (no pywinrm): Create, Command with -Command, Receive, and a
    fault for an action the service does not have."""
    import re

    ctx = ssl.create_default_context(cafile=str(hyperv_sim.ca_file))
    url = f"https://127.0.0.1:{hyperv_sim.host('HV1').port}/wsman"
    auth = base64.b64encode(f"{hyperv_sim.username}:{hyperv_sim.password}".encode()).decode()

    def post(data: bytes) -> tuple[int, str]:
        req = urllib.request.Request(url, data=data, headers={
            "Content-Type": "application/soap+xml;charset=UTF-8", "Authorization": f"Basic {auth}"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=TIMEOUT) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    shell_rsp = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
    status, text = post(soap("http://schemas.xmlsoap.org/ws/2004/09/transfer/Create",
                             "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>"
                             "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>",
                             message_id="uuid:11111111-1111-1111-1111-111111111111"))  # fmt: skip
    assert status == 200 and "uuid:11111111-1111-1111-1111-111111111111" in text
    shell = re.search(r'Name="ShellId">([^<]+)<', text).group(1)  # type: ignore[union-attr]
    status, text = post(soap(f"{shell_rsp}/Command", "<rsp:CommandLine><rsp:Command>powershell"
                             "</rsp:Command><rsp:Arguments>-Command Get-VMSwitch | "
                             "Select-Object Name | ConvertTo-Json -Compress</rsp:Arguments>"
                             "</rsp:CommandLine>", shell))  # fmt: skip
    command = re.search(r"<rsp:CommandId>([^<]+)<", text).group(1)  # type: ignore[union-attr]
    status, text = post(soap(f"{shell_rsp}/Receive", f'<rsp:Receive><rsp:DesiredStream CommandId="{command}">stdout stderr</rsp:DesiredStream></rsp:Receive>', shell))  # fmt: skip
    assert status == 200 and "CommandState/Done" in text and "<rsp:ExitCode>0<" in text
    out = re.search(r'<rsp:Stream Name="stdout" CommandId="[^"]+">([^<]+)<', text).group(1)  # type: ignore[union-attr]
    assert base64.b64decode(out).strip() == b'[{"Name":"External"},{"Name":"Internal"}]'
    status, text = post(soap("http://example.com/Nope", "", shell))
    assert status == 500 and "a:ActionNotSupported" in text and "WSManFault" in text
    status, _ = post(b"<not xml")
    assert status == 500


def test_clixml_errors_become_the_cmdlets_message() -> None:
    stderr = (
        "#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\">"
        "<Obj S=\"progress\" RefId=\"0\"><TN RefId=\"0\"><T>System.Object</T></TN></Obj>"
        "<S S=\"Error\">Start-VM : 'web' failed to change state._x000D__x000A_</S>"
        "<S S=\"Error\">The operation cannot be performed while the object is in its current state._x000D__x000A_</S>"
        "<S S=\"Error\">At line:4 char:1_x000D__x000A_</S><S S=\"Error\">+ Start-VM -Name $a.name_x000D__x000A_</S>"
        "<S S=\"Error\">+ ~~~~~~~~~~~~~~~~~~~~~~_x000D__x000A_</S>"
        "<S S=\"Error\">    + CategoryInfo          : InvalidOperation: (:) [Start-VM], VirtualizationException_x000D__x000A_</S>"
        "<S S=\"Error\">    + FullyQualifiedErrorId : InvalidState,Microsoft.HyperV.PowerShell.Commands.StartVM_x000D__x000A_</S></Objs>"
    )  # fmt: skip
    assert error_message(stderr) == (
        "Start-VM : 'web' failed to change state. The operation cannot be performed while "
        "the object is in its current state."
    )
    assert error_message("plain failure\r\n") == "plain failure"


async def test_a_refused_cmdlet_is_a_driver_error_with_its_message(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    async with driver_on(hyperv_sim, tmp_path) as (d, _):
        s = server("web")
        await d.spawn(s, d.test_image)  # type: ignore[attr-defined]
        with pytest.raises(CommandFailed) as refused:  # starting a running VM
            await d.vm_ps(scripts.START, f"starting {s.id}", s.id)
        msg = str(refused.value)
        assert f"Start-VM : '{s.id}' failed to change state." in msg, msg
        assert "current state" in msg and "At line" not in msg and "CategoryInfo" not in msg
        missing = str(uuid.uuid4())
        with pytest.raises(DriverError, match=f"instance {missing} not found on HV1"):
            await d.vm_ps(scripts.START, f"starting {missing}", missing)


async def test_wrong_credentials_and_an_untrusted_certificate_are_clear_errors(
    hyperv_sim: HypervSim,
) -> None:
    bad = HypervDriver("HV1", hyperv_config(hyperv_sim, password="wrong"))
    with pytest.raises(
        DriverError, match=r"refused the credentials of user 'hvmesh'.*username, password"
    ):
        await bad.init_host()
    await bad.cleanup_host()
    assert not bad.healthy()
    untrusted = HypervDriver("HV1", hyperv_config(hyperv_sim, ca_file=""))
    with pytest.raises(DriverError, match=r"certificate is not trusted.*ca_file"):
        await untrusted.init_host()
    await untrusted.cleanup_host()
    cfg = hyperv_config(hyperv_sim)
    cfg.hyperv.host = ""
    nobody = HypervDriver("HV1", cfg)
    with pytest.raises(DriverError, match=r"\[hyperv\] host is not set"):
        await nobody.init_host()
    await nobody.cleanup_host()


# --- values are data --------------------------------------------------------------------------


async def test_a_name_made_of_powershell_is_only_data(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    evil = "x'; Remove-VM -Name * -Force; '"
    async with driver_on(hyperv_sim, tmp_path) as (d, _):
        image = d.test_image  # type: ignore[attr-defined]
        bystander, kept_off = server("bystander"), server("kept-off")
        await d.spawn(bystander, image)
        await d.spawn(kept_off, image)
        await d.power_off(kept_off.id)  # an Off VM is one Remove-VM -Force would take
        hyperv_sim.host("HV1").model.vms.append(
            VM("not-hvmesh", 2, 1 << 30, "C:\\VMs", "HV1")
        )  # a VM of someone else's, also Off
        s = server(evil, network_info=[vif()])
        await d.spawn(s, image)
        assert (await d.get_info(s.id)).power_state == states.RUNNING
        vm = vm_of(hyperv_sim, s.id)
        assert vm is not None and vm.notes == f"hvmesh:{s.id}\n{evil}"
        names = {vm.name for vm in hyperv_sim.host("HV1").model.vms}
        assert {bystander.id, kept_off.id, "not-hvmesh", s.id} <= names
        removes = [p for name, p in hyperv_sim.host("HV1").calls if name == "Remove-VM"]
        assert removes == [], removes
        assert all(evil not in script for script in hyperv_sim.host("HV1").endpoint.scripts)
        assert await d.list_instances() == sorted([bystander.id, kept_off.id, s.id])


# --- what the steps do to the host ---------------------------------------------------------------


async def test_spawn_builds_the_vm_from_the_flavor_ports_and_cached_image(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    host = hyperv_sim.host("HV1")
    async with driver_on(hyperv_sim, tmp_path) as (d, images):
        image = d.test_image  # type: ignore[attr-defined]
        s = server("web", network_info=[vif("fa:16:3e:00:00:01"), vif("fa:16:3e:00:00:02", "physnet2")],
                   config_drive=True)  # fmt: skip
        await d.spawn(s, image)
        vm = vm_of(hyperv_sim, s.id)
        assert vm is not None and vm.state == "Running" and vm.generation == 2
        assert (vm.processors, vm.memory) == (2, 512 << 20)
        assert [(a.mac, a.switch) for a in vm.adapters] == [
            ("FA163E000001", "External"), ("FA163E000002", "Internal")]  # fmt: skip
        cached = f"C:\\ProgramData\\hvmesh\\Images\\{image.checksum}.vhdx"
        assert host.model.read(cached) == images.path.read_bytes()
        assert vm.disks == [f"C:\\ProgramData\\hvmesh\\Instances\\{s.id}\\root.vhdx"]
        assert host.model.vhd_parent(vm.disks[0]) == cached  # a differencing disk over it
        assert vm.dvds and host.model.read(vm.dvds[0])[32769:32774] == b"CD001"
        uploads = sum(1 for name, _ in host.calls if name in ("Set-Content", "Add-Content"))
        t = server("second")
        await d.spawn(t, image)
        again = sum(1 for name, _ in host.calls if name in ("Set-Content", "Add-Content"))
        assert again == uploads, "the cached image was uploaded again"
        inv = await d.get_inventory()
        assert (inv.vcpus, inv.memory_mb) == (8, 16 * 1024)
        assert inv.local_gb == (host.model.volume_size - host.model.used_bytes()) >> 30
        await d.destroy(s.id)
        assert vm_of(hyperv_sim, s.id) is None
        assert not host.model.exists(f"C:\\ProgramData\\hvmesh\\Instances\\{s.id}")
        assert host.model.exists(cached)  # the cache stays


async def test_a_guest_that_ignores_shutdown_is_turned_off(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    async with driver_on(hyperv_sim, tmp_path) as (d, _):
        s = server()
        await d.spawn(s, d.test_image)  # type: ignore[attr-defined]
        vm = vm_of(hyperv_sim, s.id)
        assert vm is not None
        vm.guest_shutdown = False
        await d.power_off(s.id)
        assert vm.state == "Off"
        stops = [p for name, p in hyperv_sim.host("HV1").calls if name == "Stop-VM"]
        assert [bool(p.get("TurnOff")) for p in stops] == [False, True]
        await d.power_on(s)
        await d.reboot(s, "SOFT")  # no guest restart: a reset instead
        assert vm.state == "Running" and vm.resets == 1


async def test_a_start_that_does_not_fit_in_memory_fails_and_leaves_nothing(
    hyperv_sim_factory: object, tmp_path: Path
) -> None:
    sim = hyperv_sim_factory(hosts={"HV1": {"memory_capacity": 1 << 30}})  # type: ignore[operator]
    async with driver_on(sim, tmp_path) as (d, _):
        big = server("big", flavor=msgspec.structs.replace(server().flavor, ram_mb=2048))
        with pytest.raises(DriverError, match="Not enough memory"):
            await d.spawn(big, d.test_image)  # type: ignore[attr-defined]
        assert sim.host("HV1").model.vms == []
        assert not sim.host("HV1").model.exists(f"C:\\ProgramData\\hvmesh\\Instances\\{big.id}")


async def test_power_changes_made_on_the_host_reach_the_listener(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    async with driver_on(hyperv_sim, tmp_path) as (d, _):
        heard: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

        async def listen(server_id: str, power: int) -> None:
            await heard.put((server_id, power))

        s = server()
        await d.spawn(s, d.test_image)  # type: ignore[attr-defined]
        d.power_listener = listen
        vm = vm_of(hyperv_sim, s.id)
        assert vm is not None
        async with asyncio.timeout(TIMEOUT):
            while (await heard.get()) != (s.id, states.RUNNING):
                pass
            vm.state = "Off"  # as an administrator's Stop-VM on the host
            while (await heard.get()) != (s.id, states.SHUTDOWN):
                pass


async def test_a_host_that_drops_off_is_unhealthy_until_it_is_back(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    async with driver_on(hyperv_sim, tmp_path) as (d, _):
        assert d.healthy()
        host = hyperv_sim.host("HV1")
        host.stop()
        with pytest.raises(DriverError, match="unreachable"):
            await d.list_instances()
        assert not d.healthy()
        host.start()
        await until(d.healthy, TIMEOUT, "the reconnect")
        assert await d.list_instances() == []


async def test_a_command_that_hangs_is_stopped_at_its_deadline(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    async with driver_on(hyperv_sim, tmp_path, command_timeout=1.0, operation_timeout=1) as (d, _):
        endpoint = hyperv_sim.host("HV1").endpoint
        endpoint.hold.clear()
        try:
            with pytest.raises(DriverError, match=r"did not end in 1\.0 s"):
                await d.list_instances()
            assert endpoint.terminated  # the command was signalled to terminate
        finally:
            endpoint.hold.set()
        assert await d.list_instances() == []


async def test_resize_in_place_and_live_migration_to_the_other_host(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    async with (
        driver_on(hyperv_sim, tmp_path) as (src, _),
        driver_on(hyperv_sim, tmp_path / "dest", host="HV2") as (dest, _),
    ):
        s = server("mover", network_info=[vif()])
        await src.spawn(s, src.test_image)  # type: ignore[attr-defined]
        bigger = msgspec.structs.replace(s.flavor, vcpus=4, ram_mb=1024)
        with pytest.raises(DriverError, match="in place only"):
            await src.migrate_disk_and_power_off(s, "HV2", bigger)
        assert vm_of(hyperv_sim, s.id) is not None and vm_of(hyperv_sim, s.id).state == "Running"  # type: ignore[union-attr]
        await src.migrate_disk_and_power_off(s, "HV1", bigger)
        await src.finish_migration(msgspec.structs.replace(s, flavor=bigger), None, power_on=True)
        vm = vm_of(hyperv_sim, s.id)
        assert vm is not None and (vm.processors, vm.memory, vm.state) == (4, 1024 << 20, "Running")

        await dest.check_can_live_migrate_destination(s, "HV1")
        await src.check_can_live_migrate_source(s, "HV2")
        await dest.pre_live_migration(s)
        await src.live_migration(s, "HV2")
        await dest.post_live_migration_at_destination(s)
        assert vm_of(hyperv_sim, s.id) is None
        moved = vm_of(hyperv_sim, s.id, "HV2")
        assert moved is not None and moved.state == "Running"
        assert hyperv_sim.host("HV2").model.exists(moved.disks[0])
        assert s.id in await dest.list_instances() and s.id not in await src.list_instances()
        hyperv_sim.host("HV1").model.migration_enabled = False
        with pytest.raises(DriverError, match="does not accept VM migrations"):
            await src.check_can_live_migrate_destination(s, "HV2")


async def test_ntlm_authenticates_the_connection(hyperv_sim: HypervSim, tmp_path: Path) -> None:
    async with driver_on(hyperv_sim, tmp_path, transport="ntlm") as (d, _):
        s = server("over-ntlm")
        await d.spawn(s, d.test_image)  # type: ignore[attr-defined]
        assert await d.list_instances() == [s.id]
    assert hyperv_sim.host("HV1").endpoint.ntlm_logins, "no connection authenticated by NTLM"
    cfg = hyperv_config(hyperv_sim, transport="ntlm", password="wrong")
    bad = HypervDriver("HV1", cfg)
    with pytest.raises(DriverError, match="refused the credentials of user 'hvmesh'"):
        await bad.init_host()
    await bad.cleanup_host()


async def test_two_spawns_of_one_image_upload_it_once(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    host = hyperv_sim.host("HV1")
    async with driver_on(hyperv_sim, tmp_path, upload_chunk=512) as (d, images):
        image = d.test_image  # type: ignore[attr-defined]
        a, b = server("a"), server("b")
        await asyncio.gather(d.spawn(a, image), d.spawn(b, image))
        firsts = [p for name, p in host.calls if name == "Set-Content"]
        assert len(firsts) == 1, "the image was uploaded twice"
        cached = f"C:\\ProgramData\\hvmesh\\Images\\{image.checksum}.vhdx"
        assert host.model.read(cached) == images.path.read_bytes()
        assert sorted(await d.list_instances()) == sorted([a.id, b.id])
        await d.suspend(a.id)  # a saved VM is turned off by discarding its saved state
        await d.power_off(a.id)
        assert vm_of(hyperv_sim, a.id).state == "Off"  # type: ignore[union-attr]
        assert any(name == "Remove-VMSavedState" for name, _ in host.calls)


async def test_a_snapshot_is_the_disk_under_a_checkpoint_merged_and_downloaded(
    hyperv_sim: HypervSim, tmp_path: Path
) -> None:
    host = hyperv_sim.host("HV1")
    async with driver_on(hyperv_sim, tmp_path) as (d, images):
        s = server("snap")
        await d.spawn(s, d.test_image)  # type: ignore[attr-defined]
        vm = vm_of(hyperv_sim, s.id)
        assert vm is not None
        disks = list(vm.disks)
        target = tmp_path / "snapshot.vhdx"
        assert await d.snapshot(s, target) == "vhdx"
        assert target.read_bytes() == images.path.read_bytes()  # the base merged in
        assert vm.state == "Running" and vm.disks == disks and vm.checkpoints == {}
        assert not host.model.exists(f"C:\\ProgramData\\hvmesh\\Instances\\{s.id}\\snapshot.vhdx")
        ran = [name for name, _ in host.calls]
        assert (
            ran.index("Checkpoint-VM") < ran.index("Convert-VHD") < ran.index("Remove-VMSnapshot")
        )
        # Without the checkpoint the running VM's disk is in use: Hyper-V's refusal comes back.
        with pytest.raises(CommandFailed, match="being used by another process"):
            await d.ps(scripts.EXPORT_DISK, "exporting", disk=disks[0], dest="C:\\x.vhdx")
