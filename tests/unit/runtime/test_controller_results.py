"""The Result contract and its metrics (RUNTIME.md semantics 6), with a fake clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog

from kaito.runtime import metrics
from kaito.runtime.controller import Controller
from kaito.runtime.reconcile import Request, Result, TerminalError
from kaito.runtime.testing import FakeClock

REQ = Request("ns", "obj")


def total(controller: str, result: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "controller_runtime_reconcile_total", {"controller": controller, "result": result}
        )
        or 0.0
    )


def counter(name: str, controller: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"controller": controller}) or 0.0


class Harness:
    def __init__(self, name: str, outcome: Callable[[int], Any]) -> None:
        self.calls = 0
        self.clock = FakeClock()

        async def reconcile(req: Request) -> Result | None:
            self.calls += 1
            out = outcome(self.calls)
            if isinstance(out, BaseException):
                raise out
            return out

        self.ctrl = Controller(name, reconcile, clock=self.clock)
        self.task: asyncio.Task[None] | None = None

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[[str, Callable[[int], Any]], Harness]]:
    made: list[Harness] = []

    def make(name: str, outcome: Callable[[int], Any]) -> Harness:
        h = Harness(name, outcome)
        h.task = asyncio.create_task(h.ctrl.run())
        made.append(h)
        return h

    yield make
    for h in made:
        await h.ctrl.shutdown(grace=1)
        assert h.task is not None
        await h.task


def test_all_result_labels_exist_at_zero_from_the_start() -> None:
    Controller("fresh", lambda r: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    for result in ("success", "error", "requeue", "requeue_after"):
        assert (
            metrics.REGISTRY.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": "fresh", "result": result}
            )
            == 0.0
        )
    assert counter("controller_runtime_reconcile_errors_total", "fresh") == 0.0
    assert counter("controller_runtime_terminal_reconcile_errors_total", "fresh") == 0.0


async def test_success_forgets_and_counts_success(harness_factory: Any) -> None:
    h = harness_factory("c-success", lambda n: None)
    h.ctrl.queue.add_rate_limited(REQ)  # give it some backoff history first
    assert h.ctrl.queue.num_requeues(REQ) == 1
    h.clock.advance(1)
    await h.settle()
    assert h.calls == 1
    assert h.ctrl.queue.num_requeues(REQ) == 0
    assert total("c-success", "success") == 1


async def test_exception_requeues_rate_limited_and_counts_error(harness_factory: Any) -> None:
    h = harness_factory("c-error", lambda n: RuntimeError("boom") if n == 1 else None)
    h.ctrl.queue.add(REQ)
    await h.settle()
    assert h.calls == 1
    assert h.ctrl.queue.num_requeues(REQ) == 1
    assert total("c-error", "error") == 1
    assert counter("controller_runtime_reconcile_errors_total", "c-error") == 1
    h.clock.advance(0.005)  # first backoff step is 5 ms
    await h.settle()
    assert h.calls == 2
    assert total("c-error", "success") == 1


async def test_programming_error_counts_as_panic_and_error(harness_factory: Any) -> None:
    h = harness_factory("c-panic", lambda n: KeyError("spec") if n == 1 else None)
    h.ctrl.queue.add(REQ)
    await h.settle()
    assert counter("controller_runtime_reconcile_panics_total", "c-panic") == 1
    assert counter("controller_runtime_reconcile_errors_total", "c-panic") == 1


async def test_terminal_error_is_not_requeued(harness_factory: Any) -> None:
    h = harness_factory("c-terminal", lambda n: TerminalError("invalid spec"))
    h.ctrl.queue.add(REQ)
    await h.settle()
    h.clock.advance(2000)
    await h.settle()
    assert h.calls == 1
    assert counter("controller_runtime_terminal_reconcile_errors_total", "c-terminal") == 1
    assert total("c-terminal", "error") == 1
    assert h.ctrl.queue.num_requeues(REQ) == 0


async def test_requeue_after_forgets_then_adds_after(harness_factory: Any) -> None:
    h = harness_factory("c-after", lambda n: Result(requeue_after=30) if n == 1 else None)
    h.ctrl.queue.add_rate_limited(REQ)
    h.clock.advance(1)
    await h.settle()
    assert h.calls == 1
    assert total("c-after", "requeue_after") == 1
    assert h.ctrl.queue.num_requeues(REQ) == 0, "requeue_after forgets the backoff"
    h.clock.advance(29.9)
    await h.settle()
    assert h.calls == 1
    h.clock.advance(0.1)
    await h.settle()
    assert h.calls == 2


async def test_requeue_uses_rate_limited_backoff(harness_factory: Any) -> None:
    h = harness_factory("c-requeue", lambda n: Result(requeue=True) if n < 3 else None)
    h.ctrl.queue.add(REQ)
    await h.settle()
    assert h.calls == 1
    assert total("c-requeue", "requeue") == 1
    h.clock.advance(0.005)
    await h.settle()
    assert h.calls == 2
    h.clock.advance(0.009)  # second step is 10 ms
    await h.settle()
    assert h.calls == 2
    h.clock.advance(0.001)
    await h.settle()
    assert h.calls == 3
    assert total("c-requeue", "requeue") == 2


async def test_error_with_requeue_after_ignores_the_requeue_after(harness_factory: Any) -> None:
    # A reconciler cannot return a Result while raising; the closest Python analogue is
    # that an exception always wins: the requeue is rate-limited, never "after".
    h = harness_factory("c-err-after", lambda n: ValueError("x") if n == 1 else None)
    h.ctrl.queue.add(REQ)
    await h.settle()
    assert total("c-err-after", "requeue_after") == 0
    assert total("c-err-after", "error") == 1


async def test_each_reconcile_logs_with_its_own_reconcile_id(
    harness_factory: Callable[[str, Callable[[int], Any]], Harness],
) -> None:
    seen: list[dict[str, Any]] = []
    logs = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, logs])
    try:

        def outcome(n: int) -> Result | None:
            seen.append(structlog.contextvars.get_contextvars())
            structlog.get_logger("test").info("reconciling", call=n)
            return Result(requeue=True) if n == 1 else None

        h = harness_factory("reconcile-id", outcome)
        h.ctrl.queue.add(REQ)
        await h.settle()
        h.clock.advance(1.0)  # past the requeue's backoff
        await h.settle()
    finally:
        structlog.configure(**saved)
    assert h.calls == 2
    ids = [ctx.pop("reconcile_id") for ctx in seen]
    assert seen == [{"controller": "reconcile-id", "namespace": "ns", "name": "obj"}] * 2
    assert ids[0] != ids[1]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    lines = [e for e in logs.entries if e["event"] == "reconciling"]
    assert [e["reconcile_id"] for e in lines] == ids
