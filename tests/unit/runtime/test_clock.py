"""FakeClock: time that moves only when a test says so, deterministically."""

from __future__ import annotations

import asyncio

import pytest

from kaito.runtime import RealClock
from kaito.runtime.testing import FakeClock


def test_advance_fires_due_timers_in_deadline_order_at_their_deadline() -> None:
    clock = FakeClock(start=100.0)
    fired: list[tuple[str, float]] = []
    clock.call_at(103, lambda: fired.append(("c", clock.now())))
    clock.call_at(101, lambda: fired.append(("a", clock.now())))
    clock.call_at(102, lambda: fired.append(("b", clock.now())))
    clock.advance(2.5)
    assert fired == [("a", 101.0), ("b", 102.0)]
    assert clock.now() == 102.5
    assert clock.armed == 1


def test_timer_armed_by_a_callback_fires_within_the_same_step() -> None:
    clock = FakeClock()
    fired: list[float] = []
    clock.call_at(1, lambda: clock.call_at(2, lambda: fired.append(clock.now())))
    clock.advance(5)
    assert fired == [2.0]


def test_cancelled_timer_does_not_fire() -> None:
    clock = FakeClock()
    fired: list[str] = []
    timer = clock.call_at(1, lambda: fired.append("x"))
    timer.cancel()
    timer.cancel()
    assert clock.armed == 0
    clock.advance(2)
    assert fired == []


def test_clock_cannot_go_back() -> None:
    with pytest.raises(ValueError, match="cannot go back"):
        FakeClock().advance(-1)


async def test_sleep_resumes_only_after_advance() -> None:
    clock = FakeClock()
    sleeper = asyncio.create_task(clock.sleep(10))
    await clock.wait_for_sleepers(1)
    clock.advance(9)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(1)
    await asyncio.wait_for(sleeper, timeout=5)
    assert clock.armed == 0


async def test_cancelled_sleep_disarms_its_timer() -> None:
    clock = FakeClock()
    sleeper = asyncio.create_task(clock.sleep(10))
    await clock.wait_for_sleepers(1)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock.armed == 0


async def test_real_clock_call_at_runs_on_the_loop() -> None:
    clock = RealClock()
    fired = asyncio.get_running_loop().create_future()
    clock.call_at(clock.now() + 0.001, lambda: fired.set_result(clock.now()))
    start = clock.now()
    assert await asyncio.wait_for(fired, timeout=5) >= start
