"""The vCenter simulator the VMware tests run against serves the inventory they expect.

Checked with pyvmomi directly: the model (datacenter, clusters of hosts, a standalone
host, datastores on every host, distributed port groups, resource pools), credentials,
verified TLS with the simulator's own certificate, moves between hosts and clusters, and
the process's life (bad flags refused, stop, restart on the same port, exit with its
parent's pipe).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.vcsim_peer import (
    Model,
    Vcsim,
    VcsimError,
    served_thumbprint,
)


def entities(content: Any, kind: type) -> dict[str, Any]:
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return {e.name: e for e in view.view}
    finally:
        view.DestroyView()


def test_default_model(vcsim: Vcsim) -> None:
    model = vcsim.model
    assert vcsim.url == f"https://127.0.0.1:{vcsim.port}/sdk" and vcsim.port > 0
    with vcsim.session() as content:
        assert content.about.apiType == "VirtualCenter"
        [dc] = content.rootFolder.childEntity
        assert dc.name == "DC0" and model.datacenter_names() == ["DC0"]
        assert (dc.vmFolder.name, dc.hostFolder.name) == ("vm", "host")
        assert (dc.datastoreFolder.name, dc.networkFolder.name) == ("datastore", "network")

        clusters = entities(content, vim.ClusterComputeResource)
        assert sorted(clusters) == ["DC0_C0", "DC0_C1"] == model.cluster_names()
        for name, cluster in clusters.items():
            assert sorted(h.name for h in cluster.host) == model.cluster_host_names(name)
            assert len(model.cluster_host_names(name)) == 2
            assert cluster.resourcePool.name == "Resources"
            children = [p.name for p in cluster.resourcePool.resourcePool]
            assert children == model.pool_names(name) == [f"{name}_RP1"]

        hosts = entities(content, vim.HostSystem)
        assert sorted(hosts) == sorted(model.host_names())
        standalone = hosts["DC0_H0"].parent
        assert isinstance(standalone, vim.ComputeResource)
        assert not isinstance(standalone, vim.ClusterComputeResource)
        for host in hosts.values():
            assert host.runtime.connectionState == "connected"
            assert host.summary.hardware.numCpuCores > 0
            assert host.summary.hardware.memorySize > 0
            assert sorted(d.name for d in host.datastore) == model.datastore_names()
            networks = {n.name for n in host.network}
            assert set(model.portgroup_names()) <= networks

        datastores = entities(content, vim.Datastore)
        assert sorted(datastores) == ["LocalDS_0", "LocalDS_1"] == model.datastore_names()
        for ds in datastores.values():
            assert ds.summary.accessible and ds.summary.freeSpace > 0
            assert ds.summary.url.startswith(str(vcsim.workdir))

        portgroups = entities(content, vim.dvs.DistributedVirtualPortgroup)
        for name in model.portgroup_names():
            assert portgroups[name].config.distributedVirtualSwitch.name == "DVS0"
        assert isinstance(entities(content, vim.Network)["VM Network"], vim.Network)
        assert entities(content, vim.VirtualMachine) == {}


def test_model_options(vcsim_factory: Callable[..., Vcsim]) -> None:
    model = Model(
        clusters=1, cluster_hosts=3, standalone_hosts=0, vms=2, datastores=1, portgroups=1, pools=0
    )
    sim = vcsim_factory(model)
    with sim.session() as content:
        assert sorted(entities(content, vim.HostSystem)) == model.host_names()
        assert len(model.host_names()) == 3
        assert sorted(entities(content, vim.Datastore)) == ["LocalDS_0"]
        [cluster] = entities(content, vim.ClusterComputeResource).values()
        assert cluster.resourcePool.resourcePool == []
        vms = entities(content, vim.VirtualMachine)
        assert sorted(vms) == model.vm_names() == ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"]
        for vm in vms.values():
            assert vm.runtime.powerState == "poweredOn"
            assert [n.name for n in vm.network] == ["DC0_DVPG0"]
            assert vm.runtime.host.name in model.host_names()


def test_wrong_credentials_are_refused(vcsim: Vcsim) -> None:
    for user, password in [(vcsim.username, "wrong"), ("someone", vcsim.password), ("x", "y")]:
        with pytest.raises(vim.fault.InvalidLogin):
            vcsim.connect(user, password)
    si = vcsim.connect()
    try:
        assert si.content.sessionManager.currentSession.userName == vcsim.username
    finally:
        Disconnect(si)


def test_tls_is_verified_against_its_certificate(vcsim: Vcsim) -> None:
    assert vcsim.cert is not None and vcsim.thumbprint is not None
    assert served_thumbprint(vcsim.host, vcsim.port) == vcsim.thumbprint
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(
            host=vcsim.host,
            port=vcsim.port,
            user=vcsim.username,
            pwd=vcsim.password,
            sslContext=ssl.create_default_context(),
        )
    si = vcsim.connect()  # trusts exactly vcsim.cert, hostname checked
    Disconnect(si)


def test_vms_move_between_hosts_and_clusters(vcsim_factory: Callable[..., Vcsim]) -> None:
    sim = vcsim_factory(Model(vms=1))
    with sim.session() as content:
        vm = entities(content, vim.VirtualMachine)["DC0_C0_RP0_VM0"]
        hosts = entities(content, vim.HostSystem)
        target_cluster = entities(content, vim.ClusterComputeResource)["DC0_C1"]
        other = next(h for h in ("DC0_C0_H0", "DC0_C0_H1") if h != vm.runtime.host.name)

        assert vm.runtime.powerState == "poweredOn"
        WaitForTask(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=hosts[other])))
        assert vm.runtime.host.name == other

        spec = vim.vm.RelocateSpec(host=hosts["DC0_C1_H1"], pool=target_cluster.resourcePool)
        WaitForTask(vm.RelocateVM_Task(spec))
        assert vm.runtime.host.name == "DC0_C1_H1"
        assert vm.resourcePool == target_cluster.resourcePool


def test_stop_and_restart_on_the_same_port(vcsim: Vcsim) -> None:
    port, thumbprint = vcsim.port, vcsim.thumbprint
    with vcsim.session() as content:
        dc = content.rootFolder.childEntity[0]
        dc.vmFolder.CreateFolder("made-before-restart")
        [ds_dir] = (vcsim.workdir / "tmp-1").glob("govcsim-DC0-LocalDS_0-*")
    assert vcsim.stop() == 0
    assert not ds_dir.exists()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass

    vcsim.restart()
    assert (vcsim.port, vcsim.thumbprint) == (port, thumbprint)
    with vcsim.session() as content:
        dc = content.rootFolder.childEntity[0]
        assert [f.name for f in dc.vmFolder.childEntity] == []


def test_exits_when_its_stdin_closes(vcsim: Vcsim) -> None:
    assert vcsim.process is not None and vcsim.process.stdin is not None
    vcsim.process.stdin.close()
    assert vcsim.process.wait(timeout=30) == 0
    assert "end of stdin" in vcsim.stderr()


def test_bad_options_are_refused_clearly(
    vcsim_factory: Callable[..., Vcsim],
    tmp_path: Path,
) -> None:
    with pytest.raises(VcsimError, match=r"-ds must be at least 1"):
        vcsim_factory(Model(datastores=0))
    with pytest.raises(VcsimError, match=r"the model has no host"):
        vcsim_factory(Model(clusters=0, standalone_hosts=0))
    with pytest.raises(VcsimError, match=r"-method-delay: \"PowerOnVM_Task\" is not"):
        vcsim_factory(None, "-method-delay=PowerOnVM_Task")
    with pytest.raises(VcsimError, match=r"-username and -password must not be empty"):
        vcsim_factory(password="")

    first = vcsim_factory()
    with pytest.raises(VcsimError, match=rf"cannot listen on 127\.0\.0\.1:{first.port}"):
        second = Vcsim(first.binary, tmp_path / "second", Model(), "u", "p")
        second.port = first.port
        second.workdir.mkdir()
        second.start()
    assert second.process is not None and second.process.returncode == 2


def test_binary_reports_bad_flags_itself(vcsim: Vcsim) -> None:
    done = subprocess.run(
        [str(vcsim.binary), "-cluster=-1"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "vcsim: -cluster must be between 0 and 1000, got -1" in done.stderr
