"""The emulator's operations outlive an unavailable apiserver, and DELETE is idempotent.

The apiserver here is a scripted stand-in (`FlakyKubelets`) that refuses a set number of
calls: a real one cannot be made to refuse exactly N calls on demand. The integration
test (tests/integration/provisioner/test_apiserver_outage.py) takes a real one away.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog.testing

from kaito_dev.aks.server import AKSEmulator
from kaito_dev.aks.state import AgentPools, EmulatorConfig


class FlakyKubelets:
    """Refuses the first ``refusals`` calls as a stopped apiserver does."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls = 0
        self.removed: list[str] = []

    async def register(self, pool: str, properties: Any, *, ready_delay: float) -> list[str]:
        self.calls += 1
        if self.calls <= self.refusals:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 6443)")
        return [f"aks-{pool}-0"]

    async def remove(self, names: list[str]) -> None:
        self.calls += 1
        if self.calls <= self.refusals:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 6443)")
        self.removed += names


def pools(kubelets: FlakyKubelets) -> AgentPools:
    cfg = EmulatorConfig(
        create_latency=0,
        delete_latency=0,
        apiserver_retry_initial=0.01,
        apiserver_retry_cap=0.02,
    )
    return AgentPools(
        cfg,
        kubelets,  # type: ignore[arg-type]
        lambda coro, name: asyncio.get_running_loop().create_task(coro, name=name),
    )


async def test_create_and_delete_retry_until_the_apiserver_answers() -> None:
    kubelets = FlakyKubelets(refusals=3)
    state = pools(kubelets)
    pool = state.begin_create("gpu1", {"vmSize": "Standard_NC6s_v3"}, failure=None)
    assert pool.task is not None
    await pool.task
    assert pool.state == "Succeeded" and pool.nodes == ["aks-gpu1-0"]
    assert kubelets.calls == 4

    kubelets.refusals, kubelets.calls = 2, 0
    op = state.begin_delete(pool)
    assert pool.task is not None
    await pool.task
    assert op.status == "Succeeded" and "gpu1" not in state.pools
    assert kubelets.removed == ["aks-gpu1-0"] and kubelets.calls == 3


async def test_delete_is_idempotent_while_running_and_restarts_a_dead_one() -> None:
    kubelets = FlakyKubelets(refusals=10**6)  # the apiserver stays down
    state = pools(kubelets)
    pool = state.begin_create("gpu2", {}, failure=None)
    pool.properties["provisioningState"] = "Succeeded"
    assert pool.task is not None and pool.op is not None
    pool.task.cancel()
    pool.op.finish("Succeeded")

    first = state.begin_delete(pool)
    assert state.begin_delete(pool) is first, "a running delete is the answer"
    await asyncio.sleep(0.05)
    assert pool.deleting and first.status == "InProgress"

    assert pool.task is not None
    pool.task.cancel()  # the operation's task died
    await asyncio.sleep(0)
    second = state.begin_delete(pool)
    assert second is not first and first.status == "Canceled"
    kubelets.refusals = 0
    assert pool.task is not None
    await pool.task
    assert second.status == "Succeeded" and "gpu2" not in state.pools


async def test_a_background_task_that_dies_is_logged() -> None:
    """The turn-Ready task of chaos seed 1's cycle 8 could die without a trace: nobody
    awaits the emulator's background tasks, so their exceptions were never seen."""
    emulator = AKSEmulator(None)

    async def dies() -> None:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 6443)")

    with structlog.testing.capture_logs() as logs:
        task = emulator._spawn(dies(), "ready aks-x-0")
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    [entry] = [e for e in logs if e["event"] == "background task failed"]
    assert entry["task"] == "aks-emulator ready aks-x-0"
    assert "Connect call failed" in entry["error"]
