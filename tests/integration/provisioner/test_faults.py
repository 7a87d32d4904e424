"""Azure failures surface on the Machine (reason + ARM message) and are retried with backoff.

Faults come from the emulator, answering over the wire exactly what ARM answers (the
real SDK parses them); each test then clears the fault and expects the Machine to
recover on its own.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from kaito.runtime.client import Client
from kaito.runtime.resource import EVENTS
from kaito_dev.aks import Fault, FaultKind, Op

from .conftest import Rig, condition, emulator_nodes


@pytest.mark.parametrize(
    ("kind", "reason", "words"),
    [
        (FaultKind.QUOTA, "QuotaExceeded", "exceeding approved standardNCSv3Family Cores quota"),
        (FaultKind.SKU_UNAVAILABLE, "SkuNotAvailable", "is currently not available"),
        (FaultKind.FAILED_LRO, "AllocationFailed", "Allocation failed"),
        (FaultKind.OPERATION_NOT_ALLOWED, "OperationNotAllowed", "Operation is not allowed"),
        (FaultKind.AUTH, "AuthenticationFailed", "access token is invalid"),
        (FaultKind.THROTTLE, "Throttled", "request is being throttled"),
        (FaultKind.SERVER_ERROR, "AzureServerError", "internal server error"),
    ],
)
async def test_each_fault_class_surfaces_on_the_machine_and_recovers_when_it_clears(
    rig: Rig, client: Client, kind: FaultKind, reason: str, words: str
) -> None:
    name = f"f{kind.value.replace('-', '')[:9]}"
    # Until cleared; throttling with Retry-After 0 so the SDK's retries cost no time.
    rig.emulator.inject(Fault(kind, pool=name, times=None, retry_after=0))
    await rig.start()
    await rig.create_machine(name)

    machine = await rig.wait_reason(name, reason)
    launched = condition(machine, "MachineLaunched")
    assert launched is not None
    assert launched["status"] == "False" and launched["severity"] == "Error"
    assert words.lower() in launched["message"].lower(), launched["message"]
    assert len(launched["message"]) <= 800
    ready = condition(machine, "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == reason
    assert await emulator_nodes(client, rig.emulator) == []

    # `kubectl describe machine` shows it as a Warning event.
    async with asyncio.timeout(10):
        while True:
            events = await client.list(
                EVENTS, "default", field_selector=f"involvedObject.name={name}"
            )
            if any(e["reason"] == reason and e["type"] == "Warning" for e in events["items"]):
                break
            await asyncio.sleep(0.1)

    rig.emulator.clear_faults()
    machine = await rig.wait_ready(name)
    launched = condition(machine, "MachineLaunched")
    assert launched is not None and launched["reason"] == "Launched"
    if kind is FaultKind.FAILED_LRO:  # the Failed pool was deleted, then created anew
        assert rig.emulator.count(Op.DELETE, pool=name) >= 1
    assert len(await emulator_nodes(client, rig.emulator)) == 1


async def test_a_transient_429_is_retried_by_the_sdk_after_retry_after(rig: Rig) -> None:
    rig.emulator.inject(Fault(FaultKind.THROTTLE, pool="thr1", times=1, retry_after=1))
    await rig.start()
    t0 = time.monotonic()
    await rig.create_machine("thr1")
    machine = await rig.wait_ready("thr1")
    assert time.monotonic() - t0 >= 1.0
    assert rig.emulator.count(Op.CREATE, pool="thr1", status=429) == 1
    assert rig.emulator.count(Op.CREATE, pool="thr1", status=201) == 1
    # Never surfaced: the SDK absorbed it.
    assert all(c["status"] == "True" for c in machine["status"]["conditions"])


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(FaultKind.THROTTLE, "Throttled"), (FaultKind.SERVER_ERROR, "AzureServerError")],
)
async def test_a_storm_the_sdk_keeps_retrying_shows_on_the_machine_while_it_lasts(
    rig: Rig, client: Client, kind: FaultKind, reason: str
) -> None:
    """Found by `make chaos`: with the SDK's retries outlasting the storm, a throttled or
    failing PUT left the Machine "launching" with no reason until ARM answered again."""
    name = f"r{kind.value.replace('-', '')[:9]}"
    rig.emulator.inject(Fault(kind, pool=name, times=None, retry_after=1))
    await rig.start(retry_total=30, retry_backoff_factor=0.5, lro_wait=60.0)
    await rig.create_machine(name)

    machine = await rig.wait_reason(name, reason, timeout=6)
    launched = condition(machine, "MachineLaunched")
    assert launched is not None and launched["status"] == "False", launched
    assert launched["severity"] == "Warning"
    assert "keeps retrying" in launched["message"], launched["message"]
    assert f"HTTP {429 if kind is FaultKind.THROTTLE else 500}" in launched["message"]
    ready = condition(machine, "Ready")
    assert ready is not None and ready["reason"] == reason
    assert rig.emulator.count(Op.CREATE, pool=name, status=201) == 0, "still in the SDK's retries"
    events = await client.list(EVENTS, "default", field_selector=f"involvedObject.name={name}")
    assert any(e["reason"] == reason for e in events["items"])

    rig.emulator.clear_faults()
    machine = await rig.wait_ready(name, timeout=20)
    launched = condition(machine, "MachineLaunched")
    assert launched is not None and launched["reason"] == "Launched"
    assert rig.emulator.count(Op.CREATE, pool=name, status=201) == 1
