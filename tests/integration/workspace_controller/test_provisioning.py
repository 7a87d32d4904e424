"""Workspaces get their GPU nodes: Machines served by the real gpu-provisioner and the AKS
emulator, node labelling, conditions, events, restarts and deletion."""

from __future__ import annotations

import asyncio
import time

import pytest

from kaito.api.machine import MACHINES
from kaito.api.workspace import ANNOTATION_REVISION, FINALIZER, WORKSPACES_V1ALPHA1
from kaito.controllers.workspace.nodes.machines import machine_name
from kaito.runtime.client import Client
from kaito.runtime.resource import NODES
from kaito_dev.aks import Fault, FaultKind

from .conftest import WsRig, condition, emulator_nodes, is_true


async def test_quick_start_workspace_gets_a_labelled_gpu_node_and_deletion_cleans_up(
    wsrig: WsRig, client: Client
) -> None:
    wsrig.start()
    await wsrig.create("workspace-phi-3-mini")
    ws = await wsrig.wait_resource_ready("workspace-phi-3-mini")

    expected = machine_name(wsrig.namespace, "workspace-phi-3-mini", 0)
    machines = await wsrig.machines()
    assert [m["metadata"]["name"] for m in machines] == [expected]
    machine = machines[0]
    assert machine["metadata"]["labels"]["apps"] == "workspace-phi-3-mini"
    assert machine["metadata"]["labels"]["kaito.sh/workspacenamespace"] == wsrig.namespace
    assert machine["spec"]["resources"]["requests"]["storage"] == "80Gi"
    assert machine["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]

    node_name = machine["status"]["nodeName"]
    assert ws["status"]["workerNodes"] == [node_name]
    node = await client.get(NODES, node_name)
    assert node["metadata"]["labels"]["accelerator"] == "nvidia"
    assert FINALIZER in ws["metadata"]["finalizers"]
    assert len(ws["metadata"]["annotations"][ANNOTATION_REVISION]) == 64
    assert is_true(ws, "MachineReady")
    ready = condition(ws, "ResourceReady")
    assert ready is not None and ready["reason"] == "NodesReady" and node_name in ready["message"]
    await wsrig.wait_event("workspace-phi-3-mini", "MachineCreated")
    await wsrig.wait_event("workspace-phi-3-mini", "NodeLabelled")

    # Deletion: Machines (and through the provisioner, pools and Nodes) go first.
    await wsrig.delete("workspace-phi-3-mini")
    assert await wsrig.machines() == []
    assert await emulator_nodes(client, wsrig.emulator) == []
    await wsrig.emulator.wait_idle()
    assert not wsrig.emulator.pools


async def test_a_template_on_a_cpu_size_gets_its_node_without_gpus(
    wsrig: WsRig, client: Client
) -> None:
    """Admitted as upstream admits it (any SKU for a template), and served: a CPU node
    that reports no nvidia.com/gpu is Ready enough for a CPU workload."""
    wsrig.start()
    body = wsrig.body("template-cpu", instance_type="Standard_D8s_v3")
    body["inference"] = {
        "template": {"spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    }
    await client.create(WORKSPACES_V1ALPHA1, body)
    ws = await wsrig.wait_resource_ready("template-cpu")
    ready = condition(ws, "ResourceReady")
    assert ready is not None and ready["reason"] == "NodesReady", ready
    (node_name,) = ws["status"]["workerNodes"]
    node = await client.get(NODES, node_name)
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "Standard_D8s_v3"
    await wsrig.delete("template-cpu")
    assert await wsrig.machines() == []


async def test_count_two_creates_both_machines_at_once(wsrig: WsRig) -> None:
    wsrig.start()
    await wsrig.create("pair", count=2)
    async with asyncio.timeout(10):
        while len(machines := await wsrig.machines()) < 2:
            await asyncio.sleep(0.02)
    # Both exist while neither is Ready: created together, not one after the other.
    assert not any((condition(m, "Ready") or {}).get("status") == "True" for m in machines), (
        "a Machine was Ready before its sibling existed"
    )
    ws = await wsrig.wait_resource_ready("pair")
    assert len(ws["status"]["workerNodes"]) == 2
    names = sorted(m["metadata"]["name"] for m in await wsrig.machines())
    assert names == sorted(machine_name(wsrig.namespace, "pair", i) for i in range(2))


async def test_quota_error_appears_on_the_workspace_with_the_provisioners_message(
    wsrig: WsRig,
) -> None:
    wsrig.emulator.inject(Fault(FaultKind.QUOTA, times=None))
    wsrig.start()
    await wsrig.create("quota")

    def quota(ws: dict[str, object] | None) -> bool:
        cond = condition(ws, "MachineReady")  # type: ignore[arg-type]
        return cond is not None and cond["reason"] == "QuotaExceeded"

    ws = await wsrig.wait("quota", quota)
    cond = condition(ws, "MachineReady")
    assert cond is not None and cond["status"] == "False"
    assert "exceeding approved standardNCSv3Family Cores quota" in cond["message"]
    assert machine_name(wsrig.namespace, "quota", 0) in cond["message"]
    resource = condition(ws, "ResourceReady")
    assert resource is not None and resource["status"] == "False"
    assert resource["reason"] == "QuotaExceeded"

    # The quota is raised: the provisioner's retry succeeds and the Workspace follows.
    wsrig.emulator.clear_faults()
    ws = await wsrig.wait_resource_ready("quota")
    assert is_true(ws, "MachineReady")


async def test_a_controller_killed_mid_flight_converges_without_duplicates(
    wsrig: WsRig, client: Client
) -> None:
    wsrig.start()
    await wsrig.create("restart", count=2)
    async with asyncio.timeout(10):
        while len(await wsrig.machines()) < 2:
            await asyncio.sleep(0.02)
    await wsrig.kill()
    before = sorted(m["metadata"]["uid"] for m in await wsrig.machines())

    wsrig.start()
    ws = await wsrig.wait_resource_ready("restart")
    machines = await wsrig.machines()
    assert sorted(m["metadata"]["uid"] for m in machines) == before, "Machines were recreated"
    assert len(ws["status"]["workerNodes"]) == 2
    assert len(await emulator_nodes(client, wsrig.emulator)) == 2


async def test_deletion_waits_for_the_machines_before_releasing_the_finalizer(
    wsrig: WsRig, client: Client
) -> None:
    wsrig.start()
    await wsrig.create("bye")
    await wsrig.wait_resource_ready("bye")
    # Without a provisioner the Machines keep their termination finalizer: the Workspace
    # must wait, saying why.
    await wsrig.prov.stop()
    await wsrig.delete("bye", wait=False)

    def deleting(ws: dict[str, object] | None) -> bool:
        return is_true(ws, "WorkspaceDeleting")  # type: ignore[arg-type]

    ws = await wsrig.wait("bye", deleting)
    assert ws is not None and FINALIZER in ws["metadata"]["finalizers"]
    cond = condition(ws, "WorkspaceDeleting")
    assert cond is not None and cond["reason"] == "DeletingMachines"
    machines = await wsrig.machines()
    assert len(machines) == 1 and machines[0]["metadata"].get("deletionTimestamp")
    await asyncio.sleep(0.5)
    assert await wsrig.get("bye") is not None

    await wsrig.prov.start()
    await wsrig.wait("bye", lambda w: w is None)
    assert await client.list_all(MACHINES, label_selector=f"kaito-test={wsrig.test_id}") == []
    assert await emulator_nodes(client, wsrig.emulator) == []


@pytest.mark.parametrize("emulator", [0.0], indirect=True)
async def test_resource_ready_follows_node_registration_within_a_second(
    wsrig: WsRig, client: Client
) -> None:
    wsrig.start()
    await wsrig.create("fast")
    pool = machine_name(wsrig.namespace, "fast", 0)
    registered = ready = None
    async with asyncio.timeout(20):
        while ready is None:
            now = time.monotonic()
            if registered is None:
                nodes = await client.list(NODES, label_selector=f"agentpool={pool}")
                if nodes["items"]:
                    registered = now
            ws = await wsrig.get("fast")
            if is_true(ws, "ResourceReady"):
                ready = now
            await asyncio.sleep(0.01)
    assert registered is not None
    delta = ready - registered
    print(f"\nResourceReady {delta:.3f}s after the node registered")
    assert delta < 2.0, f"ResourceReady came {delta:.2f}s after the node registered"


async def test_existing_gpu_nodes_count_first_and_no_machine_is_created(
    wsrig: WsRig, client: Client
) -> None:
    """A Ready node that matches the labelSelector and the instance type (a node the user
    brought) serves the Workspace: no Machine, ``MachineReady`` says why."""
    name = f"byo-{wsrig.test_id}"
    labels = {
        "apps": "byo",
        "kaito-test": wsrig.test_id,
        "node.kubernetes.io/instance-type": "Standard_NC6s_v3",
    }
    await client.create(NODES, {"metadata": {"name": name, "labels": labels}})
    try:
        status = {
            "capacity": {"nvidia.com/gpu": "1", "cpu": "6", "memory": "112Gi", "pods": "110"},
            "allocatable": {"nvidia.com/gpu": "1", "cpu": "6", "memory": "112Gi", "pods": "110"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
        await client.patch(NODES, name, {"status": status}, subresource="status")
        wsrig.start()
        await wsrig.create("byo")
        ws = await wsrig.wait_resource_ready("byo")
        assert ws["status"]["workerNodes"] == [name]
        cond = condition(ws, "MachineReady")
        assert cond is not None and cond["status"] == "True"
        assert cond["reason"] == "NoMachinesNeeded"
        assert await wsrig.machines() == []
        node = await client.get(NODES, name)
        assert node["metadata"]["labels"]["accelerator"] == "nvidia"
        await wsrig.delete("byo")
        assert (await client.get(NODES, name))["metadata"]["name"] == name, "a BYO node stays"
    finally:
        await client.delete(NODES, name)
