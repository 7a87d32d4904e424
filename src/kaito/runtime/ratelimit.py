"""Rate limiters for requeues, with client-go's semantics.

A rate limiter answers "how long should this item wait before it is retried?". The
work queue asks it on every `add_rate_limited` and tells it to `forget` an item once a
reconcile succeeds. The controller default is client-go's
`DefaultTypedControllerRateLimiter`: the larger of a per-item exponential backoff
(5 ms doubling to 1000 s) and a shared token bucket (10 qps, burst 100), so a single
failing object backs off on its own while a storm of failures across many objects is
held to 10 retries per second overall.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Protocol

from kaito.runtime._clock import Clock, RealClock

__all__ = [
    "BucketRateLimiter",
    "ItemExponentialFailureRateLimiter",
    "MaxOfRateLimiter",
    "RateLimiter",
    "TokenBucket",
    "default_controller_rate_limiter",
]


class RateLimiter(Protocol):
    """Decides per item how long a retry waits (client-go's `TypedRateLimiter`)."""

    def when(self, item: Hashable) -> float:
        """Record one more failure of `item` and return the seconds to wait before retry."""

    def forget(self, item: Hashable) -> None:
        """Stop tracking `item` (it succeeded); its next failure starts from scratch."""

    def num_requeues(self, item: Hashable) -> int:
        """How many failures of `item` are on record."""


class ItemExponentialFailureRateLimiter:
    """Per-item exponential backoff: `base * 2**failures`, capped at `max_delay`.

    The first `when` returns `base` (5 ms), then 10, 20, 40 ms and so on. The exponent
    is checked before computing, so an item that fails forever never overflows a float:
    it simply stays at the cap.
    """

    __slots__ = ("_base", "_failures", "_max_delay", "_max_exponent")

    def __init__(self, *, base: float = 0.005, max_delay: float = 1000.0) -> None:
        """`base`: first delay in seconds (default 0.005); `max_delay`: cap (default 1000)."""
        if base <= 0 or max_delay < 0:
            raise ValueError("base must be > 0 and max_delay >= 0")
        self._base = base
        self._max_delay = max_delay
        self._failures: dict[Hashable, int] = {}
        # Smallest exponent at which base * 2**exp exceeds the cap; beyond it the answer
        # is always the cap, so 2**exp is never evaluated for large exponents.
        # Clamped at 1023 so that 2.0**exp itself cannot raise OverflowError.
        self._max_exponent = min(1023, math.ceil(math.log2(max(max_delay, base) / base)) + 1)

    def when(self, item: Hashable) -> float:
        exponent = self._failures.get(item, 0)
        self._failures[item] = exponent + 1
        if exponent >= self._max_exponent:
            return self._max_delay
        return min(self._base * 2.0**exponent, self._max_delay)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class TokenBucket:
    """A token bucket: `qps` tokens a second, at most `burst` saved up.

    `reserve` takes one token the way golang.org/x/time/rate's `Reserve` does: the
    bucket refills at `qps` tokens per second up to `burst`, a token is always taken
    (the level may go negative) and the answer is the time until that token exists.
    Reservations are never handed back, so a caller told to wait keeps the bucket's
    debt and the next caller waits behind it: a steady `qps` however many callers
    arrive at once. One implementation serves both the requeue limiter
    (`BucketRateLimiter`) and the client's request throttle (client-go's
    ``flowcontrol.NewTokenBucketRateLimiter``).
    """

    __slots__ = ("_burst", "_clock", "_last", "_qps", "_tokens")

    def __init__(self, *, qps: float, burst: int, clock: Clock | None = None) -> None:
        """`qps`: refill rate, > 0; `burst`: bucket size and initial level, >= 1;
        `clock`: time source (default `RealClock()`)."""
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be > 0 and burst >= 1")
        self._qps = qps
        self._burst = float(burst)
        self._clock: Clock = clock if clock is not None else RealClock()
        self._tokens = float(burst)
        self._last = self._clock.now()

    def reserve(self) -> float:
        """Take one token; return the seconds until it exists (0.0 when it already does)."""
        now = self._clock.now()
        elapsed = max(0.0, now - self._last)
        tokens = min(self._burst, self._tokens + elapsed * self._qps) - 1.0
        self._tokens = tokens
        self._last = now
        return -tokens / self._qps if tokens < 0 else 0.0

    async def wait(self) -> None:
        """Take one token and sleep (on the bucket's clock) until it exists."""
        delay = self.reserve()
        if delay > 0:
            await self._clock.sleep(delay)


class BucketRateLimiter:
    """A token bucket shared by all items (client-go's `BucketRateLimiter`).

    Every `when` reserves one token of a `TokenBucket`, whatever the item: a storm of
    failures across many objects is held to `qps` retries a second overall.
    """

    __slots__ = ("_bucket",)

    def __init__(self, *, qps: float = 10.0, burst: int = 100, clock: Clock | None = None) -> None:
        """`qps`: refill rate (default 10/s); `burst`: bucket size and initial level
        (default 100); `clock`: time source (default `RealClock()`)."""
        self._bucket = TokenBucket(qps=qps, burst=burst, clock=clock)

    def when(self, item: Hashable) -> float:
        return self._bucket.reserve()

    def forget(self, item: Hashable) -> None:
        """No-op: the bucket is shared, there is nothing per item to forget."""

    def num_requeues(self, item: Hashable) -> int:
        """Always 0: the bucket keeps no per-item history (as in client-go)."""
        return 0


class MaxOfRateLimiter:
    """Combines limiters: the longest delay wins; every limiter sees every call."""

    __slots__ = ("_limiters",)

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self._limiters = limiters

    def when(self, item: Hashable) -> float:
        # Every limiter must record the failure, so no short-circuiting max().
        return max([limiter.when(item) for limiter in self._limiters])

    def forget(self, item: Hashable) -> None:
        for limiter in self._limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self._limiters)


def default_controller_rate_limiter(*, clock: Clock | None = None) -> RateLimiter:
    """controller-runtime's default: max of exponential (5 ms .. 1000 s) and bucket (10/100).

    `clock` drives the token bucket (default `RealClock()`).
    """
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(base=0.005, max_delay=1000.0),
        BucketRateLimiter(qps=10.0, burst=100, clock=clock),
    )
