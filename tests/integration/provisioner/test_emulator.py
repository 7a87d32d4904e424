"""The AKS emulator's own behaviour: Nodes like AKS's, kept fresh; control over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kaito.provisioner.azure import AgentPoolSpec, AzureError, ErrorReason
from kaito.runtime.client import Client
from kaito.runtime.resource import NODES
from kaito_dev.aks import AKSEmulator, EmulatorConfig

from .conftest import ArmTls, emulator_nodes, make_api


def ready(node: dict[str, Any]) -> dict[str, Any]:
    return dict(next(c for c in node["status"]["conditions"] if c["type"] == "Ready"))


@pytest.fixture
async def slow_nodes(client: Client, arm_tls: ArmTls) -> AsyncIterator[AKSEmulator]:
    """Nodes register NotReady and turn Ready 0.5 s later; heartbeats every 0.5 s."""
    cfg = EmulatorConfig(
        cluster_name=f"aks{uuid.uuid4().hex[:8]}",
        create_latency=0.05,
        delete_latency=0.05,
        node_ready_delay=0.5,
        heartbeat_interval=0.5,
    )
    async with AKSEmulator(client, cfg, tls=arm_tls.server_context) as emu:
        yield emu
        assert not emu.pools
        assert await emulator_nodes(client, emu) == []


async def test_nodes_turn_ready_lose_the_not_ready_taint_and_keep_heartbeating(
    slow_nodes: AKSEmulator, arm_tls: ArmTls, client: Client
) -> None:
    api = make_api(slow_nodes, arm_tls)
    try:
        await api.create(
            AgentPoolSpec(name="hb1", vm_size="Standard_ND96isr_H200_v5", os_disk_size_gb=256)
        )
        [node] = await emulator_nodes(client, slow_nodes)
        assert ready(node)["status"] == "False"
        # Put there by the apiserver's TaintNodesByCondition admission.
        assert any(t["key"] == "node.kubernetes.io/not-ready" for t in node["spec"]["taints"])
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
        assert node["status"]["capacity"]["cpu"] == "96"
        assert node["metadata"]["labels"]["kubernetes.azure.com/accelerator"] == "nvidia"
        async with asyncio.timeout(10):
            while ready(node)["status"] != "True" or node["spec"].get("taints"):
                await asyncio.sleep(0.1)
                [node] = await emulator_nodes(client, slow_nodes)
        first = ready(node)["lastHeartbeatTime"]
        async with asyncio.timeout(10):  # RFC 3339 has whole seconds: wait for the next one
            while ready(node)["lastHeartbeatTime"] == first:
                await asyncio.sleep(0.2)
                [node] = await emulator_nodes(client, slow_nodes)
        await api.delete("hb1")
    finally:
        await api.close()


def ready_and_untainted(node: dict[str, Any]) -> bool:
    taints = node["spec"].get("taints") or []
    return ready(node)["status"] == "True" and not any(
        t["key"] == "node.kubernetes.io/not-ready" for t in taints
    )


async def wait_ready_and_untainted(client: Client, emu: AKSEmulator, seconds: float) -> None:
    node: dict[str, Any] = {}
    try:
        async with asyncio.timeout(seconds):
            while True:
                [node] = await emulator_nodes(client, emu)
                if ready_and_untainted(node):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"Node not Ready and untainted after {seconds:g}s: Ready={ready(node)['status']} "
            f"taints={node['spec'].get('taints')}"
        ) from None


async def test_a_node_turned_ready_that_a_stale_write_made_not_ready_is_ready_again(
    slow_nodes: AKSEmulator, arm_tls: ArmTls, client: Client
) -> None:
    """Chaos seed 1, cycle 8: a heartbeat that read the Node just before it turned Ready
    wrote the NotReady conditions back over the turn, and nothing turned it Ready again
    (the Machine waited on NodeNotReady until the cycle gave up). Here the stale write is
    made by hand, NotReady conditions and the not-ready taint as they were at
    registration: the kubelet posts Ready again within a heartbeat or two."""
    api = make_api(slow_nodes, arm_tls)
    try:
        await api.create(
            AgentPoolSpec(name="stale1", vm_size="Standard_NC6s_v3", os_disk_size_gb=128)
        )
        [registered] = await emulator_nodes(client, slow_nodes)
        name = registered["metadata"]["name"]
        await wait_ready_and_untainted(client, slow_nodes, 10)
        [node] = await emulator_nodes(client, slow_nodes)
        await client.patch(
            NODES,
            name,
            {"status": {"conditions": registered["status"]["conditions"]}},
            subresource="status",
        )
        node = await client.get(NODES, name)
        node["spec"]["taints"] = registered["spec"]["taints"]
        await client.update(NODES, node)
        [node] = await emulator_nodes(client, slow_nodes)
        assert not ready_and_untainted(node)
        await wait_ready_and_untainted(client, slow_nodes, 5)  # heartbeats every 0.5 s
        await api.delete("stale1")
    finally:
        await api.close()


async def test_nodes_turn_ready_while_heartbeats_race_the_turn(
    client: Client, arm_tls: ArmTls
) -> None:
    """The race itself, made likely: heartbeats back to back, so that about every other
    turn to Ready lands between a heartbeat's read of the Node and its write. The old
    heartbeat wrote the NotReady conditions it had read back over the turn and the Node
    stayed NotReady for good (its Machine waited on ``NodeNotReady``); now the write is
    preconditioned on what it read (a `Conflict`, skipped) and a Node turned Ready that
    is found NotReady is posted Ready again. One pool at a time, so each turn races one
    heartbeat loop over one Node."""
    cfg = EmulatorConfig(
        cluster_name=f"aks{uuid.uuid4().hex[:8]}",
        create_latency=0.05,
        delete_latency=0.05,
        node_ready_delay=0.3,
        heartbeat_interval=0.001,
    )
    stuck: dict[str, Any] = {}
    async with AKSEmulator(client, cfg, tls=arm_tls.server_context) as emu:
        api = make_api(emu, arm_tls)
        try:
            for i in range(8):
                await api.create(
                    AgentPoolSpec(name=f"race{i}", vm_size="Standard_NC6s_v3", os_disk_size_gb=128)
                )
                [node] = await emulator_nodes(client, emu)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        while not ready_and_untainted(node):
                            await asyncio.sleep(0.1)
                            [node] = await emulator_nodes(client, emu)
                if not ready_and_untainted(node):
                    stuck[node["metadata"]["name"]] = (
                        ready(node)["status"],
                        node["spec"].get("taints"),
                    )
                await api.delete(f"race{i}")
        finally:
            await api.close()
        assert await emulator_nodes(client, emu) == []
    assert not stuck, f"Nodes that never turned Ready (Ready, taints): {stuck}"


@pytest.fixture
async def no_heartbeats(client: Client, arm_tls: ArmTls) -> AsyncIterator[AKSEmulator]:
    """Nodes register NotReady and turn Ready 0.3 s later; no heartbeats (no repair)."""
    cfg = EmulatorConfig(
        cluster_name=f"aks{uuid.uuid4().hex[:8]}",
        create_latency=0.05,
        delete_latency=0.05,
        node_ready_delay=0.3,
        heartbeat_interval=0,
    )
    async with AKSEmulator(client, cfg, tls=arm_tls.server_context) as emu:
        yield emu
        assert not emu.pools
        assert await emulator_nodes(client, emu) == []


async def test_turning_ready_outlasts_writers_that_keep_the_node_changing(
    no_heartbeats: AKSEmulator, arm_tls: ArmTls, client: Client
) -> None:
    """The untaint used to give up, silently, after ten update conflicts: with the
    provisioner and the workspace controller writing the same Node (here: label writers
    that never stop for 3 s) the not-ready taint stayed for good."""
    api = make_api(no_heartbeats, arm_tls)
    stop = asyncio.Event()

    async def label_forever(name: str, writer: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await client.patch(NODES, name, {"metadata": {"labels": {f"w{writer}": str(i)}}})

    try:
        await api.create(
            AgentPoolSpec(name="busy1", vm_size="Standard_NC6s_v3", os_disk_size_gb=128)
        )
        [node] = await emulator_nodes(client, no_heartbeats)
        assert not ready_and_untainted(node)
        writers = [
            asyncio.create_task(label_forever(node["metadata"]["name"], w)) for w in range(3)
        ]
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*writers)
        await wait_ready_and_untainted(client, no_heartbeats, 10)
        await api.delete("busy1")
    finally:
        await api.close()


async def test_faults_can_be_injected_over_http(emulator: AKSEmulator, arm_tls: ArmTls) -> None:
    api = make_api(emulator, arm_tls)
    async with aiohttp.ClientSession() as http:
        ssl_ctx = ssl.create_default_context(cafile=arm_tls.ca_file)
        async with http.post(
            f"{emulator.url}/_emulator/faults",
            json={"kind": "sku-unavailable", "vm_size": "Standard_NC6s_v3"},
            ssl=ssl_ctx,
        ) as r:
            assert r.status == 201
        async with http.post(
            f"{emulator.url}/_emulator/faults", json={"kind": "nope"}, ssl=ssl_ctx
        ) as r:
            assert r.status == 400
        try:
            with pytest.raises(AzureError) as info:
                await api.create(
                    AgentPoolSpec(name="http1", vm_size="Standard_NC6s_v3", os_disk_size_gb=64)
                )
            assert info.value.reason is ErrorReason.SKU_NOT_AVAILABLE
            async with http.get(f"{emulator.url}/_emulator/state", ssl=ssl_ctx) as r:
                state = await r.json()
            assert state["faults"] == [] and state["pools"] == {}
            assert state["requests"][-1] == {
                "method": "PUT",
                "op": "create",
                "pool": "http1",
                "status": 400,
            }
        finally:
            await api.close()
