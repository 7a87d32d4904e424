"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Several replicas of an operator run; one of them (the leader) runs the controllers.
The leader proves it is alive by renewing a Lease every retry period; the others
(followers) poll the Lease and take it over once it has gone unrenewed for the lease
duration. The rules that make this safe are client-go's (``tools/leaderelection``):

- **Followers time the lease on their own monotonic clock.** A follower records *when
  it saw the record change* (``observed_at``, local monotonic seconds) and considers the
  lease expired only when the record has stayed unchanged for ``leaseDurationSeconds``
  since then. It never compares the Lease's ``renewTime`` with its own wall clock, so
  clocks that are hours apart cannot make two replicas lead at once (and ``renewTime``
  is informational: it is written, never read for decisions).
- **The leader gives up before anyone can take over.** It stops leading when it has not
  renewed for ``renew_deadline`` (default 10 s) since the start of its last successful
  renewal, which is earlier than any follower can see the lease expire
  (``lease_duration``, default 15 s, counted from when the follower saw that renewal).
  This is slightly stricter than client-go, which counts the deadline from the start of
  the renew cycle after a success (up to one retry period later).
- **Every write is a compare-and-swap**: updates carry the resourceVersion that was
  read, so of two replicas racing for an expired lease exactly one wins (the other gets
  409 Conflict and stays a follower). A missing Lease is created; losing that race
  (AlreadyExists) is just a failed attempt.
- ``leaseTransitions`` increments whenever the holder changes; ``acquireTime`` is when
  the current holder took the lease.
- **Nothing is written after the deadline.** `write_fence` says why this process must not
  write (it lost the lease, or it leads past its renew deadline and has not noticed yet);
  the manager installs it on its client (`Client.set_write_fence`), which then refuses
  every write, the elector's own renewals included. That covers what the cancellation of
  the controllers cannot: a process paused (SIGSTOP, a VM freeze) past the deadline
  resumes with reconciles in flight and watch events queued, and whichever task runs
  first finds the fence closed. What it cannot cover: a write already handed to the
  kernel before the pause (the apiserver receives it at once, before any follower can
  take over) or one waiting on a brand-new TCP/TLS connection when the pause hits (sent
  on resume; pooled connections make this rare).

Usage (what the manager does)::

    elector = LeaderElector(client, name="kaito-controller", namespace="kaito-system")
    await elector.acquire()              # blocks until this replica leads
    async with asyncio.TaskGroup() as tg:
        tg.create_task(elector.renew_until_lost())   # raises LeaderElectionLost
        ...controllers...
    await elector.release()              # on a clean stop: followers take over at once
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn

import structlog

from kaito.runtime import metrics
from kaito.runtime._clock import Clock, RealClock
from kaito.runtime.client import Client
from kaito.runtime.errors import AlreadyExists, Conflict, NotFound
from kaito.runtime.meta import Obj
from kaito.runtime.resource import LEASES

__all__ = ["LeaderElectionLost", "LeaderElector", "default_identity", "micro_time"]

log = structlog.get_logger(__name__)


_RECORD_FIELDS = (
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
)


class LeaderElectionLost(Exception):
    """This replica stopped being the leader; whatever it ran as leader must stop now.

    Raised by `LeaderElector.renew_until_lost` when the lease could not be renewed within
    the renew deadline, or when another replica was seen holding it. Like controller-runtime,
    the process should exit (non-zero) rather than try to become a follower again: work
    started as leader may still be in flight.
    """


def default_identity() -> str:
    """``<hostname>_<random uuid>``, as controller-runtime names a leader election candidate.

    The hostname says which pod leads; the random part keeps two processes on one host
    (or a restarted pod) from mistaking each other's lease for their own.
    """
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def micro_time(epoch_seconds: float) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds, e.g. ``...T10:00:00.123456Z``."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for the leadership of one Lease (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        *,
        name: str,
        namespace: str,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        jitter_factor: float = 1.2,
        clock: Clock | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Options, keyword-only (defaults are client-go's and controller-runtime's):

        - ``name``, ``namespace``: the Lease (the leader election ID and its namespace).
        - ``identity``: this candidate's holderIdentity; default `default_identity()`.
        - ``lease_duration`` (15 s): how long followers wait, on their own clock, after the
          record last changed before taking over. Written as ``leaseDurationSeconds``
          (rounded up to whole seconds); followers use the value in the record.
        - ``renew_deadline`` (10 s): how long the leader keeps trying to renew before it
          gives up leading. Must be shorter than ``lease_duration``.
        - ``retry_period`` (2 s): the pause between attempts. While acquiring it is
          jittered: each pause is ``retry_period * (1 + random() * jitter_factor)``.
        - ``jitter_factor`` (1.2): see ``retry_period``; must leave
          ``renew_deadline > jitter_factor * retry_period``.
        - ``clock`` (`RealClock`): monotonic time and sleeps; it must advance at the
          rate of real time, since it also bounds how long one API request may take.
        - ``wall_clock`` (``time.time``): epoch seconds for the informational
          ``acquireTime``/``renewTime`` strings only; never used for decisions.
        """
        if lease_duration <= renew_deadline:
            raise ValueError("lease_duration must be greater than renew_deadline")
        if retry_period <= 0 or jitter_factor < 0:
            raise ValueError("retry_period must be positive and jitter_factor non-negative")
        if renew_deadline <= jitter_factor * retry_period:
            raise ValueError("renew_deadline must be greater than jitter_factor * retry_period")
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.jitter_factor = jitter_factor
        self._client = client
        self._clock = clock or RealClock()
        self._wall_clock = wall_clock
        self._duration_seconds = max(1, math.ceil(lease_duration))
        # What this candidate last saw of the record, and when (on self._clock).
        self._observed: Obj | None = None
        self._observed_at = 0.0
        self._lease: Obj | None = None  # the last Lease object read or written (for its RV)
        self._leading = False
        self._lost = False  # set for good by _lose(): this candidate never writes again
        self._renewed_at = 0.0  # clock reading at the start of the last successful write
        metrics.register_runtime_metrics()
        self._gauge = metrics.LEADER_ELECTION_MASTER_STATUS.labels(name=name)
        self._gauge.set(0)

    # -- what the manager asks -------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this candidate holds the lease and is within its renew deadline.

        Checked against the clock, not only a flag, so it turns False at the deadline even
        if the renewing coroutine has not had a chance to run.
        """
        return self._leading and self._clock.now() < self._renewed_at + self.renew_deadline

    def write_fence(self) -> str | None:
        """Why this process must not write now, or None when it may.

        Closed for good once the lease was lost, and while leading past the renew
        deadline (before `renew_until_lost` has run to notice). Open before the first
        acquisition (a follower may write what is not leader work, e.g. register its
        webhook) and after a clean `release`.
        """
        if self._lost:
            return f"the lease {self._key} was lost"
        if self._leading and self._clock.now() >= self._renewed_at + self.renew_deadline:
            return f"the lease {self._key} was not renewed within the renew deadline"
        return None

    @property
    def leader(self) -> str:
        """The holderIdentity last observed on the Lease ("" when none or unknown)."""
        return str((self._observed or {}).get("holderIdentity") or "")

    async def acquire(self) -> None:
        """Return once this candidate leads; retry every (jittered) retry period until then.

        Cancel it to stop trying. Errors talking to the apiserver are logged and retried.
        A candidate that lost the lease cannot acquire again (its writes stay fenced):
        like controller-runtime, the process exits and a new one starts as a follower.
        """
        if self._lost:
            raise RuntimeError(f"{self._key}: this candidate lost the lease; start a new one")
        log.info("attempting to acquire leader lease", lease=self._key, identity=self.identity)
        while True:
            if await self._attempt(within=self.renew_deadline):
                self._leading = True
                self._gauge.set(1)
                log.info("leader lease acquired", lease=self._key, identity=self.identity)
                return
            pause = self.retry_period * (1 + random.random() * self.jitter_factor)
            await self._clock.sleep(pause)

    async def renew_until_lost(self) -> NoReturn:
        """Keep renewing every retry period; raise `LeaderElectionLost` once leadership ends.

        Leadership ends when no renewal succeeded within ``renew_deadline`` of the start
        of the last successful one, or as soon as another holder is seen on the Lease.
        Each request is bounded by the time left before the deadline, so a hanging
        apiserver connection cannot keep a stale leader leading. Cancelling it (a clean
        stop) leaves the lease held; call `release` afterwards to hand it over at once.
        """
        if not self._leading:
            raise RuntimeError("renew_until_lost() needs leadership: await acquire() first")
        while True:
            remaining = self._renewed_at + self.renew_deadline - self._clock.now()
            await self._clock.sleep(min(self.retry_period, max(0.0, remaining)))
            remaining = self._renewed_at + self.renew_deadline - self._clock.now()
            if remaining <= 0:
                self._lose("failed to renew the lease within the renew deadline")
            if await self._attempt(within=remaining):
                continue
            holder = self.leader
            if holder and holder != self.identity:
                self._lose(f"the lease is now held by {holder}")

    async def release(self) -> bool:
        """Give the lease up on a clean stop, as client-go's ``ReleaseOnCancel`` does.

        Writes an empty holderIdentity and ``leaseDurationSeconds: 1`` against the
        resourceVersion this candidate last wrote, so it can never clear another holder's
        lease; followers then take over on their next attempt instead of waiting out the
        lease duration. Stops leading first (the caller has stopped its leader work).
        Returns whether the lease was released; failures are logged, not raised. The
        request is bounded by one retry period: if it takes longer, followers fall back
        to waiting out the lease duration, which is safe. A leader past its renew
        deadline releases nothing.
        """
        if not self.is_leader or self._lease is None:
            return False
        self._leading = False
        self._gauge.set(0)
        stamp = micro_time(self._wall_clock())
        lease = dict(self._lease)
        lease["spec"] = {
            **(self._lease.get("spec") or {}),
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": stamp,
            "renewTime": stamp,
        }
        try:
            async with asyncio.timeout(self.retry_period):
                written = await self._client.update(LEASES, lease)
        except Exception as e:
            log.warning("leader lease release failed", lease=self._key, error=str(e))
            return False
        self._observe(written)
        log.info("leader lease released", lease=self._key, identity=self.identity)
        return True

    # -- mechanics ---------------------------------------------------------------------------

    @property
    def _key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _lose(self, why: str) -> NoReturn:
        self._leading = False
        self._lost = True
        self._gauge.set(0)
        log.error("leader election lost", lease=self._key, identity=self.identity, reason=why)
        raise LeaderElectionLost(f"{self._key}: {why}")

    async def _attempt(self, *, within: float) -> bool:
        """One `_try_acquire_or_renew`, bounded by ``within`` seconds; errors are failures."""
        try:
            async with asyncio.timeout(within):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            log.warning("leader lease request timed out", lease=self._key, seconds=within)
        except Conflict:
            log.info("leader lease changed while writing it", lease=self._key)
        except Exception as e:
            log.warning("leader lease request failed", lease=self._key, error=str(e))
        return False

    async def _try_acquire_or_renew(self) -> bool:
        """client-go's ``tryAcquireOrRenew``: True when this candidate holds the lease now."""
        started = self._clock.now()
        stamp = micro_time(self._wall_clock())

        # Fast path: the leader renews the Lease it last wrote without reading it first.
        if self._leading and self._lease is not None:
            lease = dict(self._lease)
            lease["spec"] = {**(self._lease.get("spec") or {}), "renewTime": stamp}
            try:
                self._renewed(await self._client.update(LEASES, lease), started)
                return True
            except Exception as e:
                log.info("leader lease fast renewal failed", lease=self._key, error=str(e))

        try:
            lease = await self._client.get(LEASES, self.name, self.namespace)
        except NotFound:
            body: Obj = {
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._record(stamp, acquire_time=stamp, transitions=0),
            }
            try:
                created = await self._client.create(LEASES, body)
            except AlreadyExists:
                return False  # another candidate created it first; look again next time
            self._renewed(created, started)
            return True

        self._observe(lease)
        spec: Obj = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            duration = spec.get("leaseDurationSeconds") or self._duration_seconds
            if self._clock.now() < self._observed_at + duration:
                return False  # held by another, and not yet expired on our clock
        if holder == self.identity:
            record = self._record(
                stamp,
                acquire_time=spec.get("acquireTime") or stamp,
                transitions=spec.get("leaseTransitions") or 0,
            )
        else:
            record = self._record(
                stamp, acquire_time=stamp, transitions=(spec.get("leaseTransitions") or 0) + 1
            )
        desired = {**lease, "spec": {**spec, **record}}
        self._renewed(await self._client.update(LEASES, desired), started)  # Conflict: lost race
        if holder != self.identity:
            log.info(
                "leader lease taken over", lease=self._key, identity=self.identity, previous=holder
            )
        return True

    def _record(self, stamp: str, *, acquire_time: str, transitions: int) -> Obj:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._duration_seconds,
            "acquireTime": acquire_time,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }

    def _renewed(self, lease: Obj, started: float) -> None:
        self._observe(lease)
        self._renewed_at = started

    def _observe(self, lease: Obj) -> None:
        """Remember the Lease; restart the expiry timer when its record changed."""
        self._lease = lease
        spec = lease.get("spec") or {}
        record = {k: spec.get(k) for k in _RECORD_FIELDS}
        if record != self._observed:
            previous = self.leader
            self._observed = record
            self._observed_at = self._clock.now()
            if self.leader != previous:
                log.info("new leader observed", lease=self._key, leader=self.leader or None)
