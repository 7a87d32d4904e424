"""Leader election safety and liveness with two candidates on one Lease, on the real apiserver.

Durations are shortened (lease 2 s, renew deadline 1.5 s, retry 0.3 s) so the suite
stays fast; the proportions between them are the production ones' (lease > deadline >
jitter * retry). Each test uses its own Lease. Times are measured on this process's
monotonic clock, which both candidates share here, so "took over only after the lease
duration" can be checked exactly against the moment of the last write the old leader
sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from kaito.runtime.client import Client, ClientConfig
from kaito.runtime.errors import WriteFenced
from kaito.runtime.leaderelection import LeaderElectionLost, LeaderElector, micro_time
from kaito.runtime.metrics import REGISTRY
from kaito.runtime.resource import CONFIGMAPS, LEASES

NAMESPACE = "default"
LEASE = 2.0
RENEW = 1.5
RETRY = 0.3
JITTER = 1.2
SLACK = 0.5
"""Scheduling slack on a loaded 2-core machine, for upper bounds only."""

FIVE_HOURS = 5 * 3600.0
WATCH = LEASE + (1 + JITTER) * RETRY + 0.2
"""How long to watch for a wrong takeover: past the first poll after a naive expiry."""


class RecordingClient(Client):
    """Our client, noting when each successful write was sent; `cut` fails every request.

    The cut is a scripted fault, used ONLY to model "this replica lost API access": the
    real apiserver cannot be made unreachable for one client on demand. Everything else
    goes to the real apiserver.
    """

    cut = False
    last_write_sent = 0.0

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        if self.cut:
            raise aiohttp.ClientConnectionError("API access cut by the test")
        sent = time.monotonic()
        result = await super().request(method, path, **kw)
        if method in ("POST", "PUT"):
            self.last_write_sent = sent
        return result


async def recording_client(kubeconfig: str) -> RecordingClient:
    return RecordingClient(await ClientConfig.from_kubeconfig(kubeconfig))


def candidate(client: Client, lease: str, who: str, **kw: Any) -> LeaderElector:
    return LeaderElector(
        client,
        name=lease,
        namespace=NAMESPACE,
        identity=who,
        lease_duration=LEASE,
        renew_deadline=RENEW,
        retry_period=RETRY,
        jitter_factor=JITTER,
        **kw,
    )


def lease_name() -> str:
    return f"le-{uuid.uuid4().hex[:10]}"


def master_status(lease: str) -> float | None:
    return REGISTRY.get_sample_value("leader_election_master_status", {"name": lease})


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_only_one_of_two_candidates_leads(client: Client) -> None:
    name = lease_name()
    a, b = candidate(client, name, "a"), candidate(client, name, "b")
    tasks = {asyncio.create_task(a.acquire()): a, asyncio.create_task(b.acquire()): b}
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        (won,) = done
        leader = tasks[won]
        follower = b if leader is a else a
        renewing = asyncio.create_task(leader.renew_until_lost())
        try:
            watch_until = time.monotonic() + WATCH
            while time.monotonic() < watch_until:
                assert leader.is_leader
                assert not follower.is_leader
                await asyncio.sleep(0.05)
            assert not any(t.done() for t in pending), "the follower acquired a held lease"
            assert not renewing.done()
            assert follower.leader == leader.identity
            assert master_status(name) == 1
        finally:
            await stop(renewing)
    finally:
        await stop(*tasks)
    spec = (await client.get(LEASES, name, NAMESPACE))["spec"]
    assert spec["holderIdentity"] == leader.identity
    assert spec["leaseTransitions"] == 0
    assert spec["leaseDurationSeconds"] == 2


async def test_leader_without_api_access_stops_within_renew_deadline_and_follower_waits_lease(
    client: Client, kubeconfig: str
) -> None:
    """A leader whose requests all fail gives up within the renew deadline; the follower
    takes over no earlier than the lease duration after the leader's last write.

    Scripted fault: the leader's client is cut (every request raises), the only way to
    take API access away from one replica of a real apiserver on demand.
    """
    name = lease_name()
    a_client, b_client = await recording_client(kubeconfig), await recording_client(kubeconfig)
    async with a_client, b_client:
        a, b = candidate(a_client, name, "a"), candidate(b_client, name, "b")
        await a.acquire()
        assert master_status(name) == 1
        renewing = asyncio.create_task(a.renew_until_lost())
        following = asyncio.create_task(b.acquire())
        try:
            await asyncio.sleep(1.0)  # a few renewals and follower polls
            assert a.is_leader
            assert not following.done()

            a_client.cut = True
            cut_at = time.monotonic()
            with pytest.raises(LeaderElectionLost):
                await renewing
            lost_after = time.monotonic() - cut_at
            assert not a.is_leader
            assert lost_after <= RENEW + 0.25, f"still leading {lost_after:.2f}s after the cut"
            assert master_status(name) == 0

            await asyncio.wait_for(following, LEASE + JITTER * RETRY + RETRY + SLACK)
            taken_at = b_client.last_write_sent
            assert b.is_leader
            # The follower's clock ran LEASE seconds from seeing a's last record, which was
            # written after a sent it.
            assert taken_at >= a_client.last_write_sent + LEASE
            assert taken_at >= cut_at + lost_after, "overlap: b led while a still did"
            assert master_status(name) == 1
        finally:
            await stop(renewing, following)
    spec = (await client.get(LEASES, name, NAMESPACE))["spec"]
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1


@pytest.mark.parametrize("renew_time_offset", [-FIVE_HOURS, +FIVE_HOURS], ids=["past", "future"])
async def test_follower_times_the_lease_on_its_own_clock_not_renew_time(
    client: Client, kubeconfig: str, renew_time_offset: float
) -> None:
    """A lease whose renewTime is hours off is neither taken at once (a renewTime in the
    past, as a wall-clock comparison would) nor kept forever (one in the future): the
    follower waits the lease duration from when it first saw the record."""
    name = lease_name()
    stamp = micro_time(time.time() + renew_time_offset)
    await client.create(
        LEASES,
        {
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "holderIdentity": "gone",
                "leaseDurationSeconds": 2,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 4,
            },
        },
    )
    b_client = await recording_client(kubeconfig)
    async with b_client:
        b = candidate(b_client, name, "b")
        started = time.monotonic()
        await asyncio.wait_for(b.acquire(), LEASE + (1 + JITTER) * RETRY + SLACK)
        assert b_client.last_write_sent - started >= LEASE
    spec = (await client.get(LEASES, name, NAMESPACE))["spec"]
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 5


async def test_wall_clock_skew_of_hours_breaks_neither_safety_nor_takeover(
    client: Client, kubeconfig: str
) -> None:
    """The leader's wall clock is 5 h behind, the follower's 5 h ahead: the follower still
    never leads while the leader renews, and takes over a lease duration after it stops.

    Scripted fault: the leader's client is cut to stop its renewals (see above).
    """
    name = lease_name()
    a_client, b_client = await recording_client(kubeconfig), await recording_client(kubeconfig)
    async with a_client, b_client:
        a = candidate(a_client, name, "a", wall_clock=lambda: time.time() - FIVE_HOURS)
        b = candidate(b_client, name, "b", wall_clock=lambda: time.time() + FIVE_HOURS)
        await a.acquire()
        renewing = asyncio.create_task(a.renew_until_lost())
        following = asyncio.create_task(b.acquire())
        try:
            watch_until = time.monotonic() + WATCH
            while time.monotonic() < watch_until:
                assert a.is_leader
                assert not following.done()
                await asyncio.sleep(0.05)
            spec = (await client.get(LEASES, name, NAMESPACE))["spec"]
            assert _age(spec["renewTime"]) > FIVE_HOURS - 60, "the skew was not applied"

            a_client.cut = True
            with pytest.raises(LeaderElectionLost):
                await renewing
            await asyncio.wait_for(following, LEASE + (1 + JITTER) * RETRY + SLACK)
            assert b_client.last_write_sent >= a_client.last_write_sent + LEASE
        finally:
            await stop(renewing, following)
    spec = (await client.get(LEASES, name, NAMESPACE))["spec"]
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1
    assert -_age(spec["renewTime"]) > FIVE_HOURS - 60


async def test_release_on_stop_lets_the_follower_take_over_without_waiting(
    client: Client, kubeconfig: str
) -> None:
    name = lease_name()
    b_client = await recording_client(kubeconfig)
    async with b_client:
        a, b = candidate(client, name, "a"), candidate(b_client, name, "b")
        await a.acquire()
        renewing = asyncio.create_task(a.renew_until_lost())
        following = asyncio.create_task(b.acquire())
        try:
            await asyncio.sleep(0.5)
            await stop(renewing)
            released_at = time.monotonic()
            assert await a.release()
            assert not a.is_leader
            await asyncio.wait_for(following, (1 + JITTER) * RETRY + SLACK)
            assert b_client.last_write_sent - released_at < LEASE
            assert not await a.release(), "releasing twice is a no-op"
        finally:
            await stop(renewing, following)
    spec = (await client.get(LEASES, name, NAMESPACE))["spec"]
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1


async def test_lost_race_to_renew_raises_when_another_holder_is_seen(client: Client) -> None:
    """Someone else writing the lease (a split brain we did not cause) ends leadership at
    the next renewal rather than at the renew deadline."""
    name = lease_name()
    a = candidate(client, name, "a")
    await a.acquire()
    lease = await client.get(LEASES, name, NAMESPACE)
    lease["spec"]["holderIdentity"] = "intruder"
    await client.update(LEASES, lease)
    started = time.monotonic()
    with pytest.raises(LeaderElectionLost, match="intruder"):
        await asyncio.wait_for(a.renew_until_lost(), RENEW + SLACK)
    assert time.monotonic() - started < RENEW
    assert not a.is_leader


async def test_a_leader_paused_past_its_renew_deadline_writes_nothing_when_it_resumes(
    client: Client, kubeconfig: str
) -> None:
    """The event loop is blocked past the renew deadline (in-process, the closest thing to
    SIGSTOP; test_leader_failover SIGSTOPs real processes). On resume, whichever task runs
    first, the write fence refuses every write -- another task's and the elector's own
    renewal -- so nothing reaches the apiserver; the loss is final and nothing is released.
    """
    name = lease_name()
    cm = {"metadata": {"name": name, "namespace": NAMESPACE}}
    a_client = await recording_client(kubeconfig)
    async with a_client:
        a = candidate(a_client, name, "a")
        a_client.set_write_fence(a.write_fence)
        with pytest.raises(ValueError, match="already has a write fence"):
            a_client.set_write_fence(a.write_fence)
        assert a.write_fence() is None, "a follower may write what is not leader work"
        await a.acquire()
        renewing = asyncio.create_task(a.renew_until_lost())
        try:
            await asyncio.sleep(0.5)
            await a_client.create(CONFIGMAPS, cm)  # the leader writes
            last_write = a_client.last_write_sent
            time.sleep(RENEW + 0.1)  # noqa: ASYNC251 - the pause: nothing else runs meanwhile
            with pytest.raises(WriteFenced, match=name):
                await a_client.delete(CONFIGMAPS, name, NAMESPACE)
            with pytest.raises(LeaderElectionLost):
                await renewing
            with pytest.raises(WriteFenced, match="was lost"):
                await a_client.delete(CONFIGMAPS, name, NAMESPACE)
            assert a_client.last_write_sent == last_write, "a write (or renewal) went out"
            assert await a_client.get(CONFIGMAPS, name, NAMESPACE), "reads still work"
            assert not await a.release()
            with pytest.raises(RuntimeError, match="lost the lease"):
                await a.acquire()
        finally:
            await stop(renewing)
            await client.delete(CONFIGMAPS, name, NAMESPACE)
    assert (await client.get(LEASES, name, NAMESPACE))["spec"]["holderIdentity"] == "a"


def test_options_are_validated_like_client_go() -> None:
    client: Any = None
    with pytest.raises(ValueError, match="lease_duration"):
        LeaderElector(client, name="x", namespace="y", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElector(client, name="x", namespace="y", renew_deadline=2, retry_period=2)
    default = LeaderElector(client, name="x", namespace="y")
    host, _, rand = default.identity.rpartition("_")
    assert host
    assert len(rand) == 36


def _age(micro: str) -> float:
    """Seconds from a MicroTime string to now (negative: in the future)."""
    parsed = datetime.strptime(micro, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return time.time() - parsed.timestamp()
