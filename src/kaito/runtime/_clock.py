"""Injectable monotonic clocks.

Everything in the runtime that waits or measures time (the work queue's delayed items,
rate limiters, leader election) takes a `Clock` instead of calling `time.monotonic` and
`asyncio.sleep` directly, so tests can drive time by hand with
`kaito.runtime.testing.FakeClock`: no real sleeps, no flakiness, and a 1000 s backoff is
tested in microseconds.

A clock offers three things: `now()`, `sleep()` and `call_at()`. The last one is what
lets the work queue wake itself for a delayed item without a background task: it arms a
plain callback (an event-loop timer for `RealClock`, an entry in a heap for the fake
clock) that is cancelled on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "RealClock", "TimerHandle"]


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

        The callback runs on the event loop (RealClock) or inside a fake clock's `advance`,
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
