"""Exponential backoff for retry loops: one implementation, every caller.

client-go has one ``wait.Backoff``/``BackoffManager`` and every retry loop in it uses
them; hand-written ``delay = min(delay * 2, cap)`` loops drift apart (one forgets the
cap, one the reset, one the jitter). `Backoff` answers "how long until the next try?";
the caller owns the loop, so it can log the delay it is about to wait and decide what
counts as success (`reset`).

The per-item requeue backoff of the work queue is a different thing (a rate limiter
keyed by item: `kaito.runtime.ratelimit`); this one paces a single loop.
"""

from __future__ import annotations

import math
import random

from kaito.runtime._clock import Clock, RealClock

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial``, ``initial * factor``, ... capped at ``cap``, plus jitter.

    The defaults are client-go's reflector backoff
    (``NewExponentialBackoffManager(800ms, 30s, 2m, 2.0, 1.0)``): 0.8 s doubling to
    30 s, each delay stretched by up to 100 % at random (so many clients that failed
    together do not retry together), and back to 0.8 s when the previous delay was
    asked for more than 2 minutes ago (a loop that stayed healthy that long starts
    afresh even if nobody called `reset`).
    """

    __slots__ = ("_clock", "_delay", "_last", "cap", "factor", "initial", "jitter", "reset_after")

    def __init__(
        self,
        *,
        initial: float = 0.8,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 1.0,
        reset_after: float = 120.0,
        clock: Clock | None = None,
    ) -> None:
        """
        Args:
            initial: the first delay in seconds (default 0.8); not capped.
            cap: the longest delay the growth reaches, before jitter (default 30).
            factor: growth per step (default 2).
            jitter: each delay ``d`` becomes ``d + random() * jitter * d``; 0 makes
                delays exact (default 1.0).
            reset_after: start again from ``initial`` when the previous `next` was this
                many seconds ago (default 120); ``math.inf`` never does.
            clock: measures ``reset_after`` (default `RealClock()`).
        """
        if initial < 0 or cap < 0 or factor < 1 or jitter < 0:
            raise ValueError("need initial >= 0, cap >= 0, factor >= 1 and jitter >= 0")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.reset_after = reset_after
        self._clock: Clock = clock if clock is not None else RealClock()
        self._delay = 0.0
        self._last = -math.inf

    def next(self) -> float:
        """One more failure: the seconds to wait before the next try."""
        now = self._clock.now()
        if self._delay == 0.0 or now - self._last > self.reset_after:
            self._delay = self.initial
        else:
            self._delay = min(self._delay * self.factor, self.cap)
        self._last = now
        return self._delay + random.random() * self.jitter * self._delay

    def reset(self) -> None:
        """Success: the next failure waits ``initial`` again."""
        self._delay = 0.0

    async def wait(self) -> float:
        """Sleep (on the clock) for `next()` seconds; return how long that was."""
        delay = self.next()
        await self._clock.sleep(delay)
        return delay
