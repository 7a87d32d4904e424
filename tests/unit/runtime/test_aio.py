"""run_unless: the work's result, or Interrupted with the work cancelled; nothing leaks."""

from __future__ import annotations

import asyncio

import pytest

from kaito.runtime.aio import Interrupted, run_unless


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


class Work:
    """A piece of work that records whether it started and how it ended."""

    def __init__(self) -> None:
        self.started = False
        self.cancelled = False
        self.release = asyncio.Event()

    async def __call__(self, result: str = "done") -> str:
        self.started = True
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return result


async def test_result_of_work_that_finishes_first() -> None:
    before = other_tasks()
    work, event = Work(), asyncio.Event()
    work.release.set()
    assert await run_unless(event, work("ok")) == "ok"
    assert other_tasks() == before  # the event's waiter went too


async def test_event_first_cancels_and_awaits_the_work() -> None:
    before = other_tasks()
    work, event = Work(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    with pytest.raises(Interrupted):
        await run_unless(event, work())
    assert work.started
    assert work.cancelled  # unwound before run_unless returned
    assert other_tasks() == before


async def test_event_set_on_entry_never_starts_the_work() -> None:
    work, event = Work(), asyncio.Event()
    event.set()
    with pytest.raises(Interrupted):
        await run_unless(event, work())
    assert not work.started


async def test_exception_of_the_work_propagates() -> None:
    async def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await run_unless(asyncio.Event(), fail())


async def test_finished_work_wins_a_tie_with_the_event() -> None:
    event = asyncio.Event()

    async def finish_and_set() -> str:
        event.set()
        return "kept"

    assert await run_unless(event, finish_and_set()) == "kept"


async def test_cancelling_the_caller_cancels_the_work_and_leaks_nothing() -> None:
    before = other_tasks()
    work = Work()
    caller = asyncio.create_task(run_unless(asyncio.Event(), work()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert work.cancelled
    assert other_tasks() == before


async def test_a_shielded_task_keeps_running_when_the_event_wins() -> None:
    work, event = Work(), asyncio.Event()
    task = asyncio.create_task(work())
    asyncio.get_running_loop().call_later(0.01, event.set)
    with pytest.raises(Interrupted):
        await run_unless(event, asyncio.shield(task))
    assert not task.done()
    work.release.set()
    assert await task == "done"


async def test_a_cancelled_gather_counts_as_interrupted() -> None:
    first, second, event = Work(), Work(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    with pytest.raises(Interrupted):
        await run_unless(event, asyncio.gather(first(), second()))
    assert first.cancelled
    assert second.cancelled
