"""A Machine's life against the real apiserver, the AKS emulator and the real Azure SDK."""

from __future__ import annotations

import time

from kaito.api.machine import LABEL_INITIALIZED, LABEL_REGISTERED, TERMINATION_FINALIZER
from kaito.provisioner.context import TOKEN_ANNOTATION
from kaito.runtime.client import Client
from kaito.runtime.resource import NODES
from kaito_dev.aks import Op

from .conftest import Rig, condition, emulator_nodes


async def test_machine_becomes_ready_on_an_agent_pool_with_a_registered_node(
    rig: Rig, client: Client
) -> None:
    await rig.start()
    await rig.create_machine("ready1", storage="120Gi")
    machine = await rig.wait_ready("ready1")

    assert TERMINATION_FINALIZER in machine["metadata"]["finalizers"]
    assert TOKEN_ANNOTATION not in (machine["metadata"].get("annotations") or {})
    types = [c["type"] for c in machine["status"]["conditions"]]
    assert types == ["MachineLaunched", "MachineRegistered", "MachineInitialized", "Ready"]
    assert all(c["status"] == "True" for c in machine["status"]["conditions"])

    # The agent pool: what PROVISIONER.md says the PUT carries.
    pool = rig.emulator.pools["ready1"].properties
    assert pool["vmSize"] == "Standard_NC12s_v3"
    assert pool["count"] == 1 and pool["osType"] == "Linux" and pool["osSKU"] == "Ubuntu"
    assert pool["osDiskSizeGB"] == 120
    assert pool["type"] == "VirtualMachineScaleSets"
    assert pool["nodeTaints"] == ["sku=gpu:NoSchedule"]
    labels = pool["nodeLabels"]
    assert labels["kaito.sh/workspace"] == "ws" and labels["kaito.sh/machine-type"] == "gpu"
    assert (
        labels["kaito.sh/creation-timestamp"].endswith("Z")
        and ":" not in labels["kaito.sh/creation-timestamp"]
    )
    assert rig.emulator.count(Op.CREATE, pool="ready1") == 1

    # The Node: found by its agent-pool label, synced, copied into the status.
    [node] = await emulator_nodes(client, rig.emulator)
    name = node["metadata"]["name"]
    assert name.startswith("aks-ready1-") and name.endswith("-vmss000000")
    assert machine["status"]["nodeName"] == name
    assert machine["status"]["providerID"] == node["spec"]["providerID"]
    assert node["spec"]["providerID"].startswith("azure:///subscriptions/")
    assert node["metadata"]["labels"][LABEL_REGISTERED] == "true"
    assert node["metadata"]["labels"][LABEL_INITIALIZED] == "true"
    assert node["metadata"]["labels"]["kaito-test"] == rig.test_id
    assert machine["status"]["allocatable"]["nvidia.com/gpu"] == "2"  # NC12s_v3: 2 x V100
    assert machine["status"]["capacity"]["nvidia.com/gpu"] == "2"


async def test_deleting_a_machine_deletes_node_then_pool_then_finalizer(
    rig: Rig, client: Client
) -> None:
    await rig.start()
    await rig.create_machine("gone1")
    await rig.wait_ready("gone1")
    assert "gone1" in rig.emulator.pools and await emulator_nodes(client, rig.emulator)

    t0 = time.monotonic()
    await rig.delete_machine("gone1")  # returns once the finalizer is released
    assert "gone1" not in rig.emulator.pools
    assert await emulator_nodes(client, rig.emulator) == []
    assert rig.emulator.count(Op.DELETE, pool="gone1") == 1
    assert time.monotonic() - t0 < 5


async def test_startup_taints_hold_initialization_until_removed(rig: Rig, client: Client) -> None:
    await rig.start()
    await rig.create_machine(
        "taint1", startupTaints=[{"key": "example.com/agent", "effect": "NoSchedule"}]
    )

    def initialized_unknown(m: dict | None) -> bool:
        cond = condition(m, "MachineInitialized")
        return cond is not None and cond.get("reason") == "StartupTaintsExist"

    machine = await rig.wait_machine("taint1", initialized_unknown)
    assert machine is not None
    assert condition(machine, "MachineRegistered")["status"] == "True"  # type: ignore[index]
    assert condition(machine, "Ready")["status"] == "Unknown"  # type: ignore[index]
    node = await client.get(NODES, machine["status"]["nodeName"])
    keys = [t["key"] for t in node["spec"]["taints"]]
    assert keys == ["sku", "example.com/agent"]

    # What a node agent would do: remove its startup taint. The Node event wakes the Machine.
    node["spec"]["taints"] = [t for t in node["spec"]["taints"] if t["key"] == "sku"]
    await client.update(NODES, node)
    await rig.wait_ready("taint1")
    node = await client.get(NODES, machine["status"]["nodeName"])
    assert [t["key"] for t in node["spec"]["taints"]] == ["sku"], "startup taint not re-added"


async def test_node_that_never_joins_times_out_and_the_machine_is_replaced(rig: Rig) -> None:
    from kaito_dev.aks import Fault, FaultKind

    rig.emulator.inject(Fault(FaultKind.NODE_NEVER_JOINS, pool="late1"))
    await rig.start(registration_timeout=1.5)
    await rig.create_machine("late1")

    def waiting(m: dict | None) -> bool:
        cond = condition(m, "MachineRegistered")
        return cond is not None and cond.get("reason") == "NodeNotFound"

    await rig.wait_machine("late1", waiting)
    # Then: RegistrationTimeout, Machine deleted, its pool deleted by the finalizer.
    await rig.wait_machine("late1", lambda m: m is None, timeout=15)
    assert "late1" not in rig.emulator.pools
    assert rig.emulator.count(Op.DELETE, pool="late1") == 1


async def test_deleting_a_machine_mid_create_stops_waiting_and_cancels_the_pool(
    rig: Rig, client: Client
) -> None:
    rig.emulator.config.create_latency = 30.0
    await rig.start()
    await rig.create_machine("abort1")
    await rig.wait_machine(
        "abort1", lambda m: TOKEN_ANNOTATION in ((m or {})["metadata"].get("annotations") or {})
    )
    t0 = time.monotonic()
    await rig.delete_machine("abort1", timeout=10)
    assert time.monotonic() - t0 < 5, "did not wait for the 30 s create"
    assert "abort1" not in rig.emulator.pools
    assert await emulator_nodes(client, rig.emulator) == []
