"""Two managers on one Lease (RUNTIME.md semantics 12, at the manager level).

Only the leader's controllers reconcile; a leader that loses API access stops within the
renew deadline (``run()`` raises `LeaderElectionLost`, its controllers are cancelled);
the follower's controllers start only after the lease duration, on its own clock.
Durations are shortened (lease 2 s, renew 1.5 s, retry 0.3 s) to keep the test fast.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from kaito.runtime.client import Client
from kaito.runtime.leaderelection import LeaderElectionLost
from kaito.runtime.manager import Manager, ManagerOptions
from kaito.runtime.reconcile import Request
from kaito.runtime.resource import CONFIGMAPS, NAMESPACES

from .test_leader_election import LEASE, RENEW, RETRY, SLACK, recording_client


def manager(client: Client, ns: str, lease: str, seen: list[str], who: str) -> Manager:
    mgr = Manager(
        client,
        ManagerOptions(
            metrics_bind_address="0",
            health_probe_bind_address="0",
            namespace=ns,
            leader_election=True,
            leader_election_id=lease,
            leader_election_namespace=ns,
            lease_duration=LEASE,
            renew_deadline=RENEW,
            retry_period=RETRY,
        ),
    )

    async def reconcile(req: Request) -> None:
        seen.append(f"{who}:{req.name}")

    mgr.controller(f"le-{who}", reconcile).for_(CONFIGMAPS)
    return mgr


async def test_only_the_leader_reconciles_and_a_cut_off_leader_stops_then_the_other_takes_over(
    client: Client, kubeconfig: str
) -> None:
    ns = f"mle-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    lease = f"lease-{uuid.uuid4().hex[:6]}"
    seen: list[str] = []
    a_client, b_client = await recording_client(kubeconfig), await recording_client(kubeconfig)
    a = manager(a_client, ns, lease, seen, "a")
    run_a = asyncio.create_task(a.run())
    async with asyncio.timeout(10):
        while a.elector is None or not a.elector.is_leader:
            await asyncio.sleep(0.05)
    b = manager(b_client, ns, lease, seen, "b")
    run_b = asyncio.create_task(b.run())
    try:
        await client.create(CONFIGMAPS, {"metadata": {"name": "one", "namespace": ns}})
        async with asyncio.timeout(10):
            while "a:one" not in seen:
                await asyncio.sleep(0.05)
        await asyncio.sleep(LEASE)  # b had ample time to (wrongly) start
        assert not any(s.startswith("b:") for s in seen), "the follower must not reconcile"

        a_client.cut = True
        cut_at = time.monotonic()
        last_write = a_client.last_write_sent
        with pytest.raises(LeaderElectionLost):
            async with asyncio.timeout(RENEW + 2 * SLACK + RETRY):
                await run_a
        assert time.monotonic() - last_write <= RENEW + SLACK, "stopped within the renew deadline"

        async with asyncio.timeout(LEASE + 4 * RETRY + 5):
            while not any(s.startswith("b:") for s in seen):
                await asyncio.sleep(0.05)
        took_over = time.monotonic()
        assert took_over - last_write >= LEASE, "no takeover before the lease expired"
        assert "b:one" in seen, "the new leader's informer replays existing objects"
        assert took_over - cut_at < LEASE + RENEW + 4 * RETRY + 2 * SLACK
    finally:
        b.stop()
        if not run_a.done():
            run_a.cancel()
        await asyncio.gather(run_a, run_b, return_exceptions=True)
        await a_client.close()
        await b_client.close()
        await client.delete(NAMESPACES, ns)
