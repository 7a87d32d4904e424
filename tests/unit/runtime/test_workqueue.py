"""WorkQueue: the client-go invariants a controller relies on, proven on a FakeClock."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from kaito.runtime.ratelimit import ItemExponentialFailureRateLimiter
from kaito.runtime.testing import FakeClock
from kaito.runtime.workqueue import QueueShutDown, WorkQueue


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> WorkQueue[str]:
    return WorkQueue(clock=clock)


async def settle() -> None:
    """Let every task that is ready to run do so (a few loop iterations, no real time)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def take(queue: WorkQueue[str]) -> str:
    """`get` that fails the test instead of hanging if nothing is handed out."""
    return await asyncio.wait_for(queue.get(), timeout=5)


async def drain(queue: WorkQueue[str]) -> list[str]:
    """Take everything queued right now, marking each item done."""
    items = []
    while len(queue):
        item = await queue.get()
        queue.done(item)
        items.append(item)
    return items


# --- 1. duplicates collapse ------------------------------------------------------------


async def test_duplicate_adds_collapse_while_queued(queue: WorkQueue[str]) -> None:
    for item in ("a", "a", "b", "a"):
        queue.add(item)
    assert len(queue) == 2
    assert await drain(queue) == ["a", "b"]


async def test_len_counts_only_queued_items(queue: WorkQueue[str], clock: FakeClock) -> None:
    queue.add("a")
    queue.add("b")
    queue.add_after("c", 1)
    await queue.get()
    assert len(queue) == 1  # not the processing "a", not the delayed "c"


# --- 2. re-add during processing -------------------------------------------------------


async def test_readd_during_processing_runs_once_more_after_done(queue: WorkQueue[str]) -> None:
    queue.add("a")
    item = await queue.get()
    queue.add("a")
    queue.add("a")
    assert len(queue) == 0, "an item being processed must not be handed out again"
    queue.done(item)
    assert len(queue) == 1
    assert await drain(queue) == ["a"]
    assert len(queue) == 0


async def test_done_without_readd_does_not_requeue(queue: WorkQueue[str]) -> None:
    queue.add("a")
    queue.done(await queue.get())
    assert len(queue) == 0


async def test_done_for_item_not_processing_is_ignored(queue: WorkQueue[str]) -> None:
    queue.add("a")
    queue.done("a")  # never handed out: must not queue "a" twice
    queue.done("b")
    assert await drain(queue) == ["a"]


# --- 3. one getter per key, no lost update ---------------------------------------------


async def test_key_never_handed_to_two_getters_at_once_and_no_update_lost() -> None:
    rng = random.Random(20240601)
    queue: WorkQueue[str] = WorkQueue(clock=FakeClock())
    keys = [f"key-{i}" for i in range(5)]
    clock = itertools.count()  # a logical clock ordering adds and processing starts
    last_add: dict[str, int] = {}
    last_start: dict[str, int] = {}
    active: set[str] = set()
    overlaps: list[str] = []
    runs = 0
    adds = 5000

    async def worker() -> None:
        nonlocal runs
        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            if key in active:
                overlaps.append(key)
            active.add(key)
            last_start[key] = next(clock)
            runs += 1
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            active.discard(key)
            queue.done(key)

    async def producer() -> None:
        for _ in range(adds):
            key = rng.choice(keys)
            queue.add(key)
            last_add[key] = next(clock)
            if rng.random() < 0.5:
                await asyncio.sleep(0)
        await queue.shutdown_with_drain()

    async with asyncio.timeout(60), asyncio.TaskGroup() as group:
        for _ in range(8):
            group.create_task(worker())
        group.create_task(producer())

    assert overlaps == []
    assert set(last_add) == set(keys)
    for key in keys:
        assert last_start[key] > last_add[key], f"the last add of {key} was never processed"
    assert len(keys) < runs < adds  # adds did collapse, and work did happen


# --- 4. backoff ------------------------------------------------------------------------


async def test_add_rate_limited_backs_off_5_10_20_40ms_and_forget_resets(
    clock: FakeClock,
) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock, rate_limiter=ItemExponentialFailureRateLimiter())
    for failures, delay in enumerate((0.005, 0.01, 0.02, 0.04), start=1):
        queue.add_rate_limited("a")
        assert queue.num_requeues("a") == failures
        clock.advance(delay * 0.99)
        assert len(queue) == 0, f"handed out before its {delay} s backoff"
        clock.advance(delay * 0.02)
        assert await drain(queue) == ["a"]
    queue.forget("a")
    assert queue.num_requeues("a") == 0
    queue.add_rate_limited("a")
    clock.advance(0.005 * 1.01)
    assert len(queue) == 1


async def test_add_rate_limited_is_capped_at_1000s(clock: FakeClock) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock, rate_limiter=ItemExponentialFailureRateLimiter())
    for _ in range(40):
        queue.add_rate_limited("a")
        clock.advance(1000)
        assert await drain(queue) == ["a"]
    queue.add_rate_limited("a")
    clock.advance(999.9)
    assert len(queue) == 0
    clock.advance(0.1)
    assert len(queue) == 1


# --- 5. delayed requeue coalescing -----------------------------------------------------


async def test_delayed_requeue_earliest_ready_time_wins(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("a", 10)
    queue.add_after("a", 5)
    assert clock.armed == 1, "one timer for the queue, re-armed for the earlier time"
    clock.advance(5)
    assert await drain(queue) == ["a"]
    clock.advance(10)
    assert len(queue) == 0, "the superseded later entry must not fire"


async def test_later_delay_does_not_postpone_pending_item(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("a", 5)
    queue.add_after("a", 10)
    clock.advance(5)
    assert await drain(queue) == ["a"]
    clock.advance(10)
    assert len(queue) == 0


async def test_immediate_add_while_delay_pending_runs_now_and_delayed_entry_fires_later(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("a", 10)
    queue.add("a")
    assert await drain(queue) == ["a"]
    # Faithful to client-go: the pending delayed entry is kept and fires as a normal add.
    clock.advance(10)
    assert await drain(queue) == ["a"]


async def test_delayed_entry_collapses_into_queued_item(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("a", 1)
    queue.add("a")
    clock.advance(1)
    assert await drain(queue) == ["a"]


async def test_delayed_items_are_added_in_ready_order(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("c", 3)
    queue.add_after("a", 1)
    queue.add_after("b", 2)
    clock.advance(1.5)
    assert await drain(queue) == ["a"]
    clock.advance(10)
    assert await drain(queue) == ["b", "c"]
    assert clock.armed == 0


async def test_add_after_without_delay_adds_now(queue: WorkQueue[str]) -> None:
    queue.add_after("a", 0)
    queue.add_after("b", -1)
    assert await drain(queue) == ["a", "b"]


async def test_advancing_the_clock_wakes_a_getter_waiting_for_a_delayed_item(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("a", 1)
    getter = asyncio.create_task(queue.get())
    await settle()
    clock.advance(0.5)
    await settle()
    assert not getter.done()
    clock.advance(0.5)
    assert await asyncio.wait_for(getter, timeout=5) == "a"


async def test_delayed_item_is_handed_out_on_the_real_clock() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.001)
    assert await take(queue) == "a"
    queue.shutdown()


# --- waiting, shutdown and drain -------------------------------------------------------


async def test_add_wakes_a_blocked_getter(queue: WorkQueue[str]) -> None:
    getter = asyncio.create_task(queue.get())
    await settle()
    assert not getter.done()
    queue.add("a")
    assert await asyncio.wait_for(getter, timeout=5) == "a"


async def test_cancelled_getter_passes_its_wakeup_on(queue: WorkQueue[str]) -> None:
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await settle()
    queue.add("a")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it can take the item
    assert await asyncio.wait_for(second, timeout=5) == "a"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_shutdown_wakes_blocked_getters(queue: WorkQueue[str]) -> None:
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await settle()
    queue.shutdown()
    assert queue.shutting_down
    for getter in getters:
        with pytest.raises(QueueShutDown):
            await asyncio.wait_for(getter, timeout=5)


async def test_get_hands_out_queued_items_after_shutdown_then_raises(
    queue: WorkQueue[str],
) -> None:
    queue.add("a")
    queue.add("b")
    queue.shutdown()
    assert await drain(queue) == ["a", "b"]
    with pytest.raises(QueueShutDown):
        await queue.get()


async def test_add_after_shutdown_is_ignored(queue: WorkQueue[str], clock: FakeClock) -> None:
    queue.shutdown()
    queue.add("a")
    queue.add_after("b", 1)
    queue.add_rate_limited("c")
    clock.advance(1000)
    assert len(queue) == 0
    assert clock.armed == 0


async def test_shutdown_drops_delayed_items_and_disarms_the_timer(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("a", 1)
    assert clock.armed == 1
    queue.shutdown()
    assert clock.armed == 0
    clock.advance(10)
    with pytest.raises(QueueShutDown):
        await queue.get()


async def test_readd_during_processing_still_runs_after_shutdown(queue: WorkQueue[str]) -> None:
    queue.add("a")
    item = await queue.get()
    queue.add("a")
    queue.shutdown()
    queue.done(item)
    assert await drain(queue) == ["a"]


async def test_shutdown_with_drain_waits_for_in_flight_items(queue: WorkQueue[str]) -> None:
    queue.add("a")
    queue.add("b")
    a = await queue.get()
    b = await queue.get()
    draining = asyncio.create_task(queue.shutdown_with_drain())
    await settle()
    queue.done(a)
    await settle()
    assert not draining.done(), "returned while b was still processing"
    queue.done(b)
    await asyncio.wait_for(draining, timeout=5)
    assert queue.shutting_down


async def test_shutdown_with_drain_returns_at_once_when_idle(queue: WorkQueue[str]) -> None:
    draining = asyncio.create_task(queue.shutdown_with_drain())
    await settle()
    assert draining.done(), "an idle queue has nothing to drain"
    assert queue.shutting_down


async def test_shutdown_cancels_a_pending_drain(queue: WorkQueue[str]) -> None:
    queue.add("a")
    await queue.get()
    draining = asyncio.create_task(queue.shutdown_with_drain())
    await settle()
    assert not draining.done(), "a is still processing"
    queue.shutdown()  # as in client-go, ShutDown stops ShutDownWithDrain waiting
    await settle()
    assert draining.done(), "shutdown() released the drain although a is not done"


async def test_no_task_outlives_shutdown() -> None:
    before = asyncio.all_tasks()
    queue: WorkQueue[str] = WorkQueue()  # the real clock: timers on the running loop
    queue.add_after("a", 1000)
    queue.add_rate_limited("b")
    assert asyncio.all_tasks() == before, "delays must not need a background task"
    getter = asyncio.create_task(queue.get())
    await settle()
    queue.shutdown()
    with pytest.raises(QueueShutDown):
        await getter
    assert asyncio.all_tasks() == before


async def test_forget_and_num_requeues_use_the_rate_limiter(queue: WorkQueue[str]) -> None:
    queue.add_rate_limited("a")
    queue.add_rate_limited("a")
    assert queue.num_requeues("a") == 2
    queue.forget("a")
    assert queue.num_requeues("a") == 0
