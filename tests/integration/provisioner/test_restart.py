"""A provisioner killed mid-create leaves no duplicate behind: the next one converges.

"Killed" is the provisioner task cancelled wherever it is (mid-poll of the agent-pool
operation), with its Azure client thrown away; the next provisioner starts from what
the cluster and Azure say, like a restarted pod.
"""

from __future__ import annotations

import asyncio

from kaito.api.machine import MACHINES
from kaito.provisioner.context import TOKEN_ANNOTATION
from kaito.runtime.client import Client
from kaito_dev.aks import Op

from .conftest import Rig, emulator_nodes


async def wait_for_token(rig: Rig, name: str) -> str:
    machine = await rig.wait_machine(
        name, lambda m: bool(m and TOKEN_ANNOTATION in (m["metadata"].get("annotations") or {}))
    )
    assert machine is not None
    return str(machine["metadata"]["annotations"][TOKEN_ANNOTATION])


async def test_killed_mid_create_resumes_from_the_stored_token_and_creates_no_second_pool(
    rig: Rig, client: Client
) -> None:
    rig.emulator.config.create_latency = 1.5
    await rig.start()
    await rig.create_machine("kill1")
    await wait_for_token(rig, "kill1")
    await asyncio.sleep(0.2)  # some polls in
    polls_before = rig.emulator.count(Op.POLL, pool="kill1")
    await rig.kill()
    assert rig.emulator.pools["kill1"].state == "Creating"

    await rig.start()
    machine = await rig.wait_ready("kill1")
    assert rig.emulator.count(Op.CREATE, pool="kill1") == 1, "no second PUT"
    assert rig.emulator.count(Op.POLL, pool="kill1") > polls_before, "resumed polling"
    assert TOKEN_ANNOTATION not in (machine["metadata"].get("annotations") or {})
    assert len(await emulator_nodes(client, rig.emulator)) == 1


async def test_killed_before_the_token_was_stored_finds_the_pool_instead_of_creating_it(
    rig: Rig, client: Client
) -> None:
    rig.emulator.config.create_latency = 1.5
    await rig.start()
    await rig.create_machine("kill2")
    await wait_for_token(rig, "kill2")
    await rig.kill()
    # As if it died between ARM accepting the PUT and the annotation write.
    await client.patch(MACHINES, "kill2", {"metadata": {"annotations": {TOKEN_ANNOTATION: None}}})

    await rig.start()
    await rig.wait_ready("kill2")
    assert rig.emulator.count(Op.CREATE, pool="kill2") == 1, "no second PUT"
    assert rig.emulator.count(Op.GET, pool="kill2") >= 2, "found by GET, polled by GET"
    assert len(await emulator_nodes(client, rig.emulator)) == 1


async def test_graceful_stop_mid_create_then_restart_converges(rig: Rig) -> None:
    rig.emulator.config.create_latency = 1.0
    await rig.start(lro_wait=0.3)  # short waits: the reconcile requeues with its token
    await rig.create_machine("stop1")
    await wait_for_token(rig, "stop1")
    await rig.stop()
    await rig.start()
    await rig.wait_ready("stop1")
    assert rig.emulator.count(Op.CREATE, pool="stop1") == 1
