"""Test doubles for the runtime's injected dependencies (client-go's ``clock/testing``).

Kept out of ``kaito.runtime``'s public names on purpose: production code takes a
`Clock` and gets `RealClock` by default; only tests construct a `FakeClock`. The
controllers' own tests import from here too, never from the private ``_clock``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from kaito.runtime._clock import TimerHandle

__all__ = ["FakeClock"]


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
