"""Injectable monotonic clocks.

Everything in the runtime that waits or measures time (the work queue's delayed items,
rate limiters, leader election) takes a `Clock` instead of calling `time.monotonic` and
`asyncio.sleep` directly, so tests can drive time by hand with `FakeClock`: no real
sleeps, no flakiness, and a 1000 s backoff is tested in microseconds.

A clock offers three things: `now()`, `sleep()` and `call_at()`. The last one is what
lets the work queue wake itself for a delayed item without a background task: it arms a
plain callback (an event-loop timer for `RealClock`, an entry in a heap for `FakeClock`)
that is cancelled on shutdown.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "RealClock", "TimerHandle"]


class TimerHandle(Protocol):
    """A callback armed with `Clock.call_at`; `asyncio.TimerHandle` satisfies it."""

    def cancel(self) -> None:
        """Disarm the callback; a no-op when it already ran or was cancelled."""


class Clock(Protocol):
    """Monotonic time as the runtime sees it, in seconds."""

    def now(self) -> float:
        """Monotonic seconds; only differences between two readings are meaningful."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller until `now()` has advanced by `seconds`."""

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """Run `callback()` once `now()` reaches `when` (a reading of this clock).

        The callback runs on the event loop (RealClock) or inside `FakeClock.advance`,
        never concurrently with other code, so it may touch loop-owned state freely.
        It must be called from the thread running the event loop.
        """


class RealClock:
    """The process's monotonic clock and the running event loop's timers."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        # Convert to a delay rather than passing `when` to loop.call_at: the loop's own
        # time base is not guaranteed to be time.monotonic() (uvloop uses libuv's).
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.monotonic()), callback)


class _FakeTimer:
    """One armed callback of a `FakeClock`; ordered by deadline, then arming order."""

    __slots__ = ("_clock", "callback", "cancelled", "seq", "when")

    def __init__(
        self, clock: FakeClock, when: float, seq: int, callback: Callable[[], object]
    ) -> None:
        self._clock = clock
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: _FakeTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._clock._armed -= 1


class FakeClock:
    """A clock for tests that only moves when `advance` is called.

    `advance(seconds)` runs every timer whose deadline falls inside the step, in
    deadline order, with `now()` reading that deadline while each callback runs; this
    makes "what fires first" deterministic. Sleepers are resumed through futures, so a
    test yields to the loop (``await asyncio.sleep(0)``) after `advance` to let them run.
    """

    __slots__ = ("_armed", "_count_waiters", "_now", "_seq", "_timers")

    def __init__(self, start: float = 0.0) -> None:
        """`start` is the initial reading of `now()` (default 0.0)."""
        self._now = start
        self._timers: list[_FakeTimer] = []
        self._seq = itertools.count()
        self._armed = 0
        self._count_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_at(self._now + seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        timer = _FakeTimer(self, when, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        self._armed += 1
        if self._count_waiters:
            self._notify_count_waiters()
        return timer

    @property
    def armed(self) -> int:
        """How many timers (sleeps included) are armed and not yet fired or cancelled."""
        return self._armed

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, firing every timer that falls due on the way.

        Timers armed by a callback during the step fire too if their deadline is inside
        it. Exceptions from callbacks propagate to the caller (the test).
        """
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back (advance({seconds}))")
        target = self._now + seconds
        timers = self._timers
        while timers and timers[0].when <= target:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            timer.cancelled = True  # fired: a later cancel() must not count it twice
            self._armed -= 1
            self._now = max(self._now, timer.when)
            timer.callback()
        self._now = target

    async def wait_for_sleepers(self, count: int) -> None:
        """Wait until at least `count` timers are armed (sleeps and `call_at` alike).

        Lets a test hand control to the code under test until it has reached its wait,
        then `advance` past it, without guessing how many loop iterations that takes.
        Bound it with `asyncio.timeout` in tests that might never get there.
        """
        if self._armed >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count_waiters.append((count, future))
        try:
            await future
        finally:
            self._count_waiters = [(n, f) for n, f in self._count_waiters if f is not future]

    def _notify_count_waiters(self) -> None:
        for count, future in self._count_waiters:
            if self._armed >= count and not future.done():
                future.set_result(None)
