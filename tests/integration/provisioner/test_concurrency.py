"""Machines created together are provisioned together: 10 take about as long as one."""

from __future__ import annotations

import asyncio
import sys
import time

from kaito.runtime.client import Client
from kaito_dev.aks import Op

from .conftest import Rig, emulator_nodes

POOL_LATENCY = 4.0
"""The emulator's create latency for this test (seconds from PUT to Succeeded)."""


async def test_ten_machines_at_once_are_ready_within_one_and_a_half_pool_latencies(
    rig: Rig, client: Client
) -> None:
    rig.emulator.config.create_latency = POOL_LATENCY
    await rig.start(workers=20, polling_interval=0.1)

    t0 = time.monotonic()
    await rig.create_machine("solo")
    await rig.wait_ready("solo", timeout=30)
    single = time.monotonic() - t0

    names = [f"many{i}" for i in range(10)]
    t0 = time.monotonic()
    await asyncio.gather(*(rig.create_machine(n) for n in names))
    await rig.wait_all_ready(names)
    ten = time.monotonic() - t0

    print(
        f"\n[provisioner] pool latency {POOL_LATENCY:.1f}s: one Machine ready in {single:.2f}s, "
        f"ten in {ten:.2f}s ({ten / POOL_LATENCY:.2f}x the pool latency)",
        file=sys.stderr,
    )
    assert ten <= 1.5 * POOL_LATENCY, f"10 Machines took {ten:.2f}s"
    assert all(rig.emulator.count(Op.CREATE, pool=n) == 1 for n in names)
    assert len(await emulator_nodes(client, rig.emulator)) == 11

    t0 = time.monotonic()
    await asyncio.gather(*(rig.delete_machine(n, timeout=30) for n in [*names, "solo"]))
    print(f"[provisioner] eleven deleted in {time.monotonic() - t0:.2f}s", file=sys.stderr)
