"""Backoff: client-go's reflector pacing (0.8 s doubling to 30 s, jitter, reset after 2 min)."""

from __future__ import annotations

import asyncio
import math

import pytest

from kaito.runtime.backoff import Backoff
from kaito.runtime.testing import FakeClock


def test_delays_grow_by_factor_up_to_the_cap() -> None:
    backoff = Backoff(jitter=0.0, clock=FakeClock())
    assert [backoff.next() for _ in range(8)] == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]


def test_jitter_stretches_each_delay_by_at_most_its_fraction() -> None:
    backoff = Backoff(initial=1.0, factor=1.0, jitter=0.5, clock=FakeClock())
    delays = [backoff.next() for _ in range(200)]
    assert all(1.0 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 1


def test_reset_starts_again_from_initial() -> None:
    backoff = Backoff(jitter=0.0, clock=FakeClock())
    backoff.next()
    backoff.next()
    backoff.reset()
    assert backoff.next() == 0.8


def test_a_quiet_period_longer_than_reset_after_starts_again_from_initial() -> None:
    clock = FakeClock()
    backoff = Backoff(jitter=0.0, clock=clock)
    assert [backoff.next(), backoff.next()] == [0.8, 1.6]
    clock.advance(120.0)  # not more than reset_after: keeps growing
    assert backoff.next() == 3.2
    clock.advance(120.1)
    assert backoff.next() == 0.8


def test_infinite_reset_after_never_resets_by_itself() -> None:
    clock = FakeClock()
    backoff = Backoff(initial=1.0, cap=30.0, jitter=0.0, reset_after=math.inf, clock=clock)
    backoff.next()
    clock.advance(1e9)
    assert backoff.next() == 2.0


async def test_wait_sleeps_the_next_delay_on_the_clock() -> None:
    clock = FakeClock()
    backoff = Backoff(initial=0.5, jitter=0.0, clock=clock)
    waiting = asyncio.create_task(backoff.wait())
    await clock.wait_for_sleepers(1)
    clock.advance(0.5)
    assert await asyncio.wait_for(waiting, 1) == 0.5


def test_rejects_shrinking_or_negative_settings() -> None:
    with pytest.raises(ValueError, match="factor >= 1"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="initial >= 0"):
        Backoff(initial=-1.0)
