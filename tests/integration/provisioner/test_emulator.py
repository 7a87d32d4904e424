"""The AKS emulator's own behaviour: Nodes like AKS's, kept fresh; control over HTTP."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kaito.provisioner.azure import AgentPoolSpec, AzureError, ErrorReason
from kaito.runtime.client import Client
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
