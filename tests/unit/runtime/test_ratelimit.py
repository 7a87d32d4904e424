"""Rate limiters: client-go's backoff and token-bucket semantics, on a FakeClock."""

from __future__ import annotations

import asyncio

import pytest

from kaito.runtime.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    TokenBucket,
    default_controller_rate_limiter,
)
from kaito.runtime.testing import FakeClock


def test_backoff_doubles_from_5ms() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    assert [limiter.when("a") for _ in range(5)] == [0.005, 0.01, 0.02, 0.04, 0.08]


def test_backoff_is_capped_at_1000s() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    delays = [limiter.when("a") for _ in range(30)]
    assert max(delays) == 1000.0
    # 0.005 * 2**17 = 655 s is the last delay below the cap.
    assert delays[17] == pytest.approx(655.36)
    assert delays[18:] == [1000.0] * 12


def test_backoff_never_overflows_for_an_item_that_fails_forever() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    for _ in range(5000):  # 2.0**5000 would raise OverflowError
        delay = limiter.when("a")
    assert delay == 1000.0
    assert limiter.num_requeues("a") == 5000


def test_forget_resets_backoff() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    for _ in range(4):
        limiter.when("a")
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == 0.005


def test_num_requeues_counts_failures() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    assert limiter.num_requeues("a") == 0
    for _ in range(3):
        limiter.when("a")
    assert limiter.num_requeues("a") == 3


def test_backoff_is_per_item() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    limiter.when("a")
    limiter.when("a")
    assert limiter.when("b") == 0.005
    assert limiter.when("a") == 0.02


def test_custom_base_and_cap() -> None:
    limiter = ItemExponentialFailureRateLimiter(base=1.0, max_delay=3.0)
    assert [limiter.when("a") for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]


def test_bucket_allows_burst_then_paces_at_qps() -> None:
    clock = FakeClock()
    limiter = BucketRateLimiter(qps=10, burst=100, clock=clock)
    assert [limiter.when(i) for i in range(100)] == [0.0] * 100
    # Each further reservation waits one more token's worth (0.1 s) behind the last.
    assert [limiter.when(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])


def test_bucket_refills_with_time_up_to_burst() -> None:
    clock = FakeClock()
    limiter = BucketRateLimiter(qps=10, burst=5, clock=clock)
    for i in range(5):
        limiter.when(i)
    clock.advance(0.2)  # two tokens back
    assert [limiter.when(i) for i in range(3)] == pytest.approx([0.0, 0.0, 0.1])
    clock.advance(3600)  # refill stops at the burst
    assert [limiter.when(i) for i in range(6)] == pytest.approx([0.0] * 5 + [0.1])


def test_bucket_keeps_no_per_item_state() -> None:
    limiter = BucketRateLimiter(clock=FakeClock())
    limiter.when("a")
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0


async def test_token_bucket_wait_sleeps_until_its_token_exists() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=4, burst=1, clock=clock)
    await bucket.wait()  # the burst: no sleep
    assert clock.armed == 0
    second = asyncio.create_task(bucket.wait())
    await clock.wait_for_sleepers(1)
    clock.advance(0.2)
    await asyncio.sleep(0)
    assert not second.done()  # a token takes 0.25 s at 4 qps
    clock.advance(0.05)
    await asyncio.wait_for(second, 1)


def test_token_bucket_rejects_no_rate_or_no_room() -> None:
    with pytest.raises(ValueError, match="qps must be > 0"):
        TokenBucket(qps=0, burst=1)
    with pytest.raises(ValueError, match="burst >= 1"):
        TokenBucket(qps=1, burst=0)


def test_max_of_takes_longest_delay_and_forgets_everywhere() -> None:
    fast = ItemExponentialFailureRateLimiter(base=0.001, max_delay=10)
    slow = ItemExponentialFailureRateLimiter(base=0.1, max_delay=10)
    limiter = MaxOfRateLimiter(fast, slow)
    assert limiter.when("a") == 0.1
    assert limiter.when("a") == 0.2
    assert fast.num_requeues("a") == slow.num_requeues("a") == limiter.num_requeues("a") == 2
    limiter.forget("a")
    assert fast.num_requeues("a") == slow.num_requeues("a") == 0


def test_default_controller_rate_limiter_is_max_of_backoff_and_bucket() -> None:
    clock = FakeClock()
    limiter = default_controller_rate_limiter(clock=clock)
    # 100 distinct failing items fit in the burst: each waits its own 5 ms backoff.
    assert {limiter.when(i) for i in range(100)} == {0.005}
    # The 101st waits for a token from the 10 qps bucket, longer than its backoff.
    assert limiter.when(100) == pytest.approx(0.1)
    clock.advance(3600)
    # A single item's backoff dominates once the bucket is full again.
    assert [limiter.when("x") for _ in range(4)] == [0.005, 0.01, 0.02, 0.04]
    assert limiter.num_requeues("x") == 4
    limiter.forget("x")
    assert limiter.num_requeues("x") == 0
