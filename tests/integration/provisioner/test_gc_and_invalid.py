"""Garbage collection of orphan pools and vanished pools; invalid Machines never reach ARM."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kaito.api.machine import MACHINES
from kaito.provisioner.azure import AgentPoolSpec, AzureAgentPoolAPI
from kaito.runtime.client import Client
from kaito.runtime.resource import EVENTS
from kaito_dev.aks import Op

from .conftest import Rig, condition, emulator_nodes


def stamp(age: timedelta) -> str:
    return (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H-%M-%SZ")


def kaito_pool(name: str, age: timedelta) -> AgentPoolSpec:
    return AgentPoolSpec(
        name=name,
        vm_size="Standard_NC6s_v3",
        os_disk_size_gb=64,
        node_labels={
            "kaito.sh/workspace": "ws",
            "kaito.sh/machine-type": "gpu",
            "kaito.sh/creation-timestamp": stamp(age),
        },
        node_taints=("sku=gpu:NoSchedule",),
    )


async def test_gc_deletes_old_orphan_pools_and_their_nodes_only(
    rig: Rig, client: Client, pool_api: AzureAgentPoolAPI
) -> None:
    rig.emulator.config.create_latency = 0.05
    # An orphan (no Machine) old enough, a young orphan, and a pool kaito did not make.
    await asyncio.gather(
        pool_api.create(kaito_pool("orphan1", timedelta(minutes=5))),
        pool_api.create(kaito_pool("young1", timedelta(seconds=0))),
        pool_api.create(
            AgentPoolSpec(name="system1", vm_size="Standard_D4s_v3", os_disk_size_gb=64)
        ),
    )
    assert len(await emulator_nodes(client, rig.emulator)) == 3

    prov = await rig.start(gc_interval=0.3, gc_min_age=30)
    async with asyncio.timeout(15):
        while "orphan1" in rig.emulator.pools or prov.gc.runs < 2:
            await asyncio.sleep(0.05)
    assert set(rig.emulator.pools) == {"young1", "system1"}
    nodes = {
        n["metadata"]["labels"]["agentpool"] for n in await emulator_nodes(client, rig.emulator)
    }
    assert nodes == {"young1", "system1"}

    await asyncio.gather(pool_api.delete("young1"), pool_api.delete("system1"))


async def test_gc_replaces_a_machine_whose_pool_vanished(
    rig: Rig, client: Client, pool_api: AzureAgentPoolAPI
) -> None:
    prov = await rig.start(gc_interval=0.3)
    await rig.create_machine("vanish1")
    await rig.wait_ready("vanish1")
    runs = prov.gc.runs

    await pool_api.delete("vanish1")  # someone deletes the pool behind our back
    await rig.wait_machine("vanish1", lambda m: m is None, timeout=15)
    assert prov.gc.runs > runs
    async with asyncio.timeout(10):
        while True:
            events = await client.list(
                EVENTS, "default", field_selector="involvedObject.name=vanish1"
            )
            if any(e["reason"] == "AgentPoolNotFound" for e in events["items"]):
                break
            await asyncio.sleep(0.1)


async def test_invalid_machines_get_a_condition_naming_the_field_and_no_arm_call(
    rig: Rig, client: Client
) -> None:
    await rig.start()
    await rig.create_machine("bad-name-1")
    await rig.create_machine("notype1", instance_type=None)
    await rig.create_machine("nodisk1", storage="0")
    await rig.create_machine("notazure1", instance_type="p3.8xlarge")

    expected = {
        "bad-name-1": ("InvalidMachineName", "metadata.name"),
        "notype1": ("InstanceTypeMissing", "node.kubernetes.io/instance-type"),
        "nodisk1": ("InvalidStorage", "spec.resources.requests.storage must be greater than 0"),
        "notazure1": ("InvalidInstanceType", "is not an Azure VM size"),
    }
    for name, (reason, words) in expected.items():
        machine = await rig.wait_reason(name, reason)
        launched = condition(machine, "MachineLaunched")
        assert launched is not None and launched["status"] == "False"
        assert words in launched["message"], launched["message"]
        assert condition(machine, "Ready")["reason"] == reason  # type: ignore[index]

    # Fixing the spec is picked up (a spec change bumps the generation).
    await client.patch(
        MACHINES, "nodisk1", {"spec": {"resources": {"requests": {"storage": "64Gi"}}}}
    )
    await rig.wait_ready("nodisk1")
    assert [r.pool for r in rig.emulator.requests if r.op is Op.CREATE] == ["nodisk1"]

    for name in ("bad-name-1", "notype1", "notazure1"):
        await rig.delete_machine(name)  # the finalizer goes without asking ARM anything
    # (The GC's periodic LIST of pools names no pool.)
    assert {r.pool for r in rig.emulator.requests if r.op is not Op.LIST} == {"nodisk1"}


async def test_metrics_count_machines_azure_requests_and_durations(rig: Rig) -> None:
    prov = await rig.start()
    await rig.create_machine("metric1")
    await rig.wait_ready("metric1")
    server = prov.manager.metrics_server
    assert server is not None
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{server.port}/metrics") as r,
    ):
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    states = {s.labels["state"]: s.value for s in families["gpu_provisioner_machines"].samples}
    assert states["ready"] >= 1
    requests = {
        (s.labels["operation"], s.labels["code"]): s.value
        for s in families["gpu_provisioner_azure_requests"].samples
    }
    assert requests[("create", "201")] >= 1 and requests[("poll", "200")] >= 1
    launch = families["gpu_provisioner_launch_duration_seconds"]
    assert any(s.name.endswith("_count") and s.value >= 1 for s in launch.samples)
    registration = families["gpu_provisioner_registration_duration_seconds"]
    assert any(s.name.endswith("_count") and s.value >= 1 for s in registration.samples)
    assert "controller_runtime_reconcile_total" in text
