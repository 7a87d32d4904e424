"""`AzureAgentPoolAPI`: the real azure-mgmt-containerservice async client, over HTTPS,
against the AKS emulator (which speaks ARM's agentPools protocol and registers Nodes)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from kaito.provisioner.azure import (
    AgentPoolSpec,
    AzureAgentPoolAPI,
    AzureError,
    ErrorReason,
)
from kaito.provisioner.credentials import StaticTokenCredential
from kaito.runtime.client import Client
from kaito_dev.aks import AKSEmulator, Fault, FaultKind, Op

from .conftest import ArmTls, emulator_nodes, make_api


def spec(name: str, vm_size: str = "Standard_NC12s_v3", **kw: object) -> AgentPoolSpec:
    return AgentPoolSpec(
        name=name,
        vm_size=vm_size,
        os_disk_size_gb=128,
        node_labels={"kaito.sh/workspace": "ws", "kaito.sh/machine-type": "gpu"},
        node_taints=("sku=gpu:NoSchedule",),
        **kw,  # type: ignore[arg-type]
    )


async def test_create_get_list_delete_round_trip_registers_and_removes_the_node(
    pool_api: AzureAgentPoolAPI, emulator: AKSEmulator, client: Client
) -> None:
    tokens: list[str] = []

    async def started(token: str) -> None:
        tokens.append(token)

    pool = await pool_api.create(spec("api1"), on_started=started)
    assert pool.provisioning_state == "Succeeded"
    assert pool.vm_size == "Standard_NC12s_v3" and pool.os_disk_size_gb == 128
    assert pool.node_labels["kaito.sh/workspace"] == "ws"
    assert pool.node_taints == ("sku=gpu:NoSchedule",)
    assert len(tokens) == 1 and pool_api.owns_token(tokens[0])

    assert await pool_api.get("api1") == pool
    assert await pool_api.get("absent") is None
    assert [p.name for p in await pool_api.list()] == ["api1"]

    [node] = await emulator_nodes(client, emulator)
    labels = node["metadata"]["labels"]
    assert labels["agentpool"] == labels["kubernetes.azure.com/agentpool"] == "api1"
    assert labels["node.kubernetes.io/instance-type"] == "Standard_NC12s_v3"
    assert labels["kaito.sh/workspace"] == "ws"
    assert node["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    assert "/virtualMachineScaleSets/aks-api1-" in node["spec"]["providerID"]

    await pool_api.delete("api1")
    assert await pool_api.get("api1") is None
    assert await emulator_nodes(client, emulator) == []
    await pool_api.delete("api1")  # deleting what is gone is done, not an error


async def test_a_create_resumes_from_its_continuation_token_without_a_second_put(
    emulator: AKSEmulator, arm_tls: ArmTls
) -> None:
    emulator.config.create_latency = 1.0
    first = make_api(emulator, arm_tls)
    saved = asyncio.Event()
    tokens: list[str] = []

    async def started(token: str) -> None:
        tokens.append(token)
        saved.set()

    task = asyncio.create_task(first.create(spec("resume1"), on_started=started))
    await saved.wait()
    task.cancel()  # the process dies mid-poll
    with pytest.raises(asyncio.CancelledError):
        await task
    await first.close()

    second = make_api(emulator, arm_tls)  # a new process
    try:
        pool = await second.resume_create(tokens[0])
        assert pool.provisioning_state == "Succeeded"
        assert emulator.count(Op.CREATE, pool="resume1") == 1
        await second.delete("resume1")
    finally:
        await second.close()


async def test_a_forged_continuation_token_is_refused(pool_api: AzureAgentPoolAPI) -> None:
    forged = {
        "version": 1,
        "data": {
            "request": {"method": "PUT", "url": "https://evil.example/steal", "headers": {}},
            "response": {
                "status_code": 201,
                "headers": {"Azure-AsyncOperation": "https://evil.example/op"},
                "content": "",
            },
            "context": {},
        },
    }
    token = base64.b64encode(json.dumps(forged).encode()).decode()
    assert not pool_api.owns_token(token)
    assert not pool_api.owns_token("not base64 json")
    with pytest.raises(AzureError, match="refusing a continuation token"):
        await pool_api.resume_create(token)


async def test_list_follows_next_links(pool_api: AzureAgentPoolAPI, emulator: AKSEmulator) -> None:
    emulator.config.list_page_size = 2
    emulator.config.create_latency = 0.05
    names = [f"page{i}" for i in range(5)]
    await asyncio.gather(*(pool_api.create(spec(n, "Standard_D4s_v3")) for n in names))
    assert sorted(p.name for p in await pool_api.list()) == names
    assert emulator.count(Op.LIST) == 3
    await asyncio.gather(*(pool_api.delete(n) for n in names))


@pytest.mark.parametrize(
    ("kind", "reason", "status", "words"),
    [
        (FaultKind.QUOTA, ErrorReason.QUOTA_EXCEEDED, 400, "quota"),
        (FaultKind.SKU_UNAVAILABLE, ErrorReason.SKU_NOT_AVAILABLE, 400, "not available"),
        (FaultKind.OPERATION_NOT_ALLOWED, ErrorReason.OPERATION_NOT_ALLOWED, 409, "not allowed"),
        (FaultKind.AUTH, ErrorReason.AUTHENTICATION_FAILED, 401, "token is invalid"),
        (FaultKind.FAILED_LRO, ErrorReason.ALLOCATION_FAILED, 200, "Allocation failed"),
    ],
)
async def test_arm_errors_are_classified_with_the_arm_message(
    pool_api: AzureAgentPoolAPI,
    emulator: AKSEmulator,
    kind: FaultKind,
    reason: ErrorReason,
    status: int,
    words: str,
) -> None:
    emulator.inject(Fault(kind))
    with pytest.raises(AzureError) as info:
        await pool_api.create(spec("bad1"))
    err = info.value
    assert err.reason is reason
    assert err.status == status
    assert words.lower() in str(err).lower()
    assert len(str(err)) <= 800
    await pool_api.delete("bad1")  # a failed LRO leaves a Failed pool behind


async def test_429_is_retried_after_retry_after_and_500_gives_up_after_the_retries(
    pool_api: AzureAgentPoolAPI, emulator: AKSEmulator
) -> None:
    emulator.inject(Fault(FaultKind.THROTTLE, op=Op.GET, times=1, retry_after=1))
    t0 = time.monotonic()
    assert await pool_api.get("nothing") is None
    assert time.monotonic() - t0 >= 1.0, "Retry-After: 1 honoured"
    assert emulator.count(Op.GET, status=429) == 1

    emulator.inject(Fault(FaultKind.SERVER_ERROR, op=Op.GET, times=None))
    with pytest.raises(AzureError) as info:
        await pool_api.get("nothing")
    assert info.value.reason is ErrorReason.AZURE_SERVER_ERROR
    assert emulator.count(Op.GET, status=500) == 3  # the first try and retry_total=2


async def test_a_rejected_token_is_an_authentication_failure(
    emulator: AKSEmulator, arm_tls: ArmTls
) -> None:
    emulator.config.accept_token = lambda token: token == "the-right-one"
    api = make_api(emulator, arm_tls)  # sends "test-token"
    try:
        with pytest.raises(AzureError) as info:
            await api.list()
        assert info.value.reason is ErrorReason.AUTHENTICATION_FAILED
        assert "InvalidAuthenticationToken" in str(info.value)
    finally:
        await api.close()
        emulator.config.accept_token = None


async def test_a_second_put_while_creating_is_in_progress_not_a_failure(
    pool_api: AzureAgentPoolAPI, emulator: AKSEmulator
) -> None:
    emulator.config.create_latency = 0.5
    first = asyncio.create_task(pool_api.create(spec("twice1")))
    while emulator.count(Op.CREATE, pool="twice1") == 0:
        await asyncio.sleep(0.01)
    with pytest.raises(AzureError) as info:
        await pool_api.create(spec("twice1"))
    assert info.value.in_progress
    await first
    await pool_api.delete("twice1")


async def test_delete_while_creating_cancels_the_create(
    pool_api: AzureAgentPoolAPI, emulator: AKSEmulator, client: Client
) -> None:
    emulator.config.create_latency = 5.0
    creating = asyncio.create_task(pool_api.create(spec("cancel1")))
    while emulator.count(Op.CREATE, pool="cancel1") == 0:
        await asyncio.sleep(0.01)
    await pool_api.delete("cancel1")
    with pytest.raises(AzureError):
        await creating  # the create operation ends Canceled
    assert await pool_api.get("cancel1") is None
    assert await emulator_nodes(client, emulator) == []


async def test_no_answer_at_all_is_azure_unreachable(
    emulator: AKSEmulator, arm_tls: ArmTls
) -> None:
    from kaito_dev.controlplane import free_port

    api = AzureAgentPoolAPI(
        subscription_id=emulator.config.subscription_id,
        resource_group=emulator.config.resource_group,
        cluster_name=emulator.config.cluster_name,
        credential=StaticTokenCredential("t"),
        base_url=f"https://127.0.0.1:{free_port()}",  # nothing listens there
        ca_file=arm_tls.ca_file,
        retry_total=0,
    )
    try:
        with pytest.raises(AzureError) as info:
            await api.get("x")
        assert info.value.reason is ErrorReason.AZURE_UNREACHABLE
    finally:
        await api.close()
