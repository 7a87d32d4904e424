"""A controller: a work queue of `Request`s, N workers, and the Result contract.

Events from informers pass predicates and handlers into the queue; workers take one
request at a time (the queue guarantees a key is never processed by two workers at
once) and call the reconciler. What happens next follows controller-runtime exactly
(see `kaito.runtime.reconcile` and RUNTIME.md, semantics 6):

| reconciler outcome            | queue                      | reconcile_total result |
|-------------------------------|----------------------------|------------------------|
| raised `TerminalError`        | forget (no retry)          | error (+ terminal)     |
| raised another exception      | add_rate_limited           | error                  |
| ``Result(requeue_after=d)``   | forget, add_after(d)       | requeue_after          |
| ``Result(requeue=True)``      | add_rate_limited           | requeue                |
| ``None`` / ``Result()``       | forget                     | success                |

Python has no panics; the closest thing is a programming error (AttributeError on
None, KeyError, TypeError, ...). Those count in ``reconcile_panics_total`` as well as
errors, and are retried like errors (controller-runtime's RecoverPanic behaviour).

Each reconcile runs with ``controller``, ``namespace``, ``name`` and a fresh
``reconcile_id`` (a uuid4, upstream's ``reconcileID``) bound in structlog's contextvars,
so every line logged during it, by the reconciler or by anything it awaits, can be
grouped by reconcile: two runs for the same key are told apart, interleaved runs of
different workers too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import structlog

from kaito.runtime import metrics
from kaito.runtime._clock import Clock, RealClock
from kaito.runtime.handler import Handler
from kaito.runtime.informer import Informer
from kaito.runtime.meta import Obj
from kaito.runtime.predicate import Predicate
from kaito.runtime.ratelimit import RateLimiter, default_controller_rate_limiter
from kaito.runtime.reconcile import Request, Result, TerminalError
from kaito.runtime.workqueue import QueueShutDown, WorkQueue

log = structlog.get_logger("kaito.runtime.controller")

Reconciler = Callable[[Request], Awaitable[Result | None]]

PANIC_TYPES: tuple[type[BaseException], ...] = (
    AssertionError,
    AttributeError,
    IndexError,
    KeyError,
    NameError,
    TypeError,
    ZeroDivisionError,
)


class _Source:
    """Adapts one (informer, handler, predicates) triple to the informer's EventHandler."""

    __slots__ = ("add", "handler", "predicates")

    def __init__(
        self, handler: Handler, predicates: Sequence[Predicate], add: Callable[[Request], None]
    ) -> None:
        self.handler = handler
        self.predicates = tuple(predicates)
        self.add = add

    def on_add(self, obj: Obj) -> None:
        if all(p.create(obj) for p in self.predicates):
            self.handler.create(obj, self.add)

    def on_update(self, old: Obj, new: Obj) -> None:
        if all(p.update(old, new) for p in self.predicates):
            self.handler.update(old, new, self.add)

    def on_delete(self, obj: Obj) -> None:
        if all(p.delete(obj) for p in self.predicates):
            self.handler.delete(obj, self.add)


class Controller:
    """Reconciles `Request`s from its watches with ``max_concurrent_reconciles`` workers.

    Args:
        name: unique per process; the ``controller`` label of every metric.
        reconciler: ``async (Request) -> Result | None``.
        max_concurrent_reconciles: workers; default 1.
        rate_limiter: per-item backoff for errors and ``requeue``; default max-of
            (exponential 5 ms .. 1000 s, token bucket 10 qps / burst 100).
        clock: default the real monotonic clock (tests inject a fake one).
    """

    def __init__(
        self,
        name: str,
        reconciler: Reconciler,
        *,
        max_concurrent_reconciles: int = 1,
        rate_limiter: RateLimiter | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_concurrent_reconciles < 1:
            raise ValueError("max_concurrent_reconciles must be >= 1")
        self.name = name
        self.reconciler = reconciler
        self.max_concurrent_reconciles = max_concurrent_reconciles
        self._clock = clock or RealClock()
        self.queue: WorkQueue[Request] = WorkQueue(
            name=name,
            rate_limiter=rate_limiter or default_controller_rate_limiter(clock=self._clock),
            clock=self._clock,
            metrics=metrics.QUEUE_METRICS,
        )
        self.informers: list[Informer] = []
        self._started = False
        self._stopping = False
        metrics.register_runtime_metrics()
        metrics.init_controller_metrics(name, max_concurrent_reconciles=max_concurrent_reconciles)
        # Bind label children once: the hot path then costs one inc() each.
        total = metrics.RECONCILE_TOTAL
        self._m_success = total.labels(name, "success")
        self._m_error = total.labels(name, "error")
        self._m_requeue = total.labels(name, "requeue")
        self._m_requeue_after = total.labels(name, "requeue_after")
        self._m_errors = metrics.RECONCILE_ERRORS.labels(name)
        self._m_terminal = metrics.TERMINAL_RECONCILE_ERRORS.labels(name)
        self._m_panics = metrics.RECONCILE_PANICS.labels(name)
        self._m_time = metrics.RECONCILE_TIME.labels(name)
        self._m_active = metrics.ACTIVE_WORKERS.labels(name)
        self._log = log.bind(controller=name)

    def watch(
        self, informer: Informer, handler: Handler, predicates: Sequence[Predicate] = ()
    ) -> None:
        """Feed ``informer``'s events through ``predicates`` and ``handler`` into the queue."""
        if informer not in self.informers:
            self.informers.append(informer)
        informer.add_handler(_Source(handler, predicates, self.queue.add))

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the workers until the queue is shut down (see `shutdown`)."""
        if self._started:
            raise RuntimeError(f"controller {self.name} already started")
        self._started = True
        self._log.info("starting workers", workers=self.max_concurrent_reconciles)
        async with asyncio.TaskGroup() as tg:
            for i in range(self.max_concurrent_reconciles):
                tg.create_task(self._worker(), name=f"{self.name}-worker-{i}")
        self._log.info("all workers finished")

    async def shutdown(self, *, grace: float = 30.0) -> None:
        """Take no new work; let in-flight reconciles finish within ``grace`` seconds.

        Items still queued are not started (the queue would hand them out; workers
        drop them): a stopping controller must not begin work it may not finish.
        """
        self._stopping = True
        try:
            async with asyncio.timeout(grace):
                await self.queue.shutdown_with_drain()
        except TimeoutError:
            self._log.warning(
                "in-flight reconciles did not finish within the grace period", grace=grace
            )

    async def _worker(self) -> None:
        queue = self.queue
        while True:
            try:
                req = await queue.get()
            except QueueShutDown:
                return
            if self._stopping:
                queue.done(req)
                return
            try:
                with structlog.contextvars.bound_contextvars(
                    controller=self.name,
                    namespace=req.namespace,
                    name=req.name,
                    reconcile_id=str(uuid.uuid4()),
                ):
                    await self._reconcile_one(req)
            finally:
                queue.done(req)

    async def _reconcile_one(self, req: Request) -> None:
        queue = self.queue
        self._m_active.inc()
        start = time.perf_counter()
        try:
            result = await self.reconciler(req)
        except asyncio.CancelledError:
            raise
        except TerminalError as e:
            self._m_terminal.inc()
            self._m_errors.inc()
            self._m_error.inc()
            queue.forget(req)
            self._log.error("reconcile failed terminally", request=req.key, error=str(e))
            return
        except Exception as e:
            if isinstance(e, PANIC_TYPES):
                self._m_panics.inc()
            self._m_errors.inc()
            self._m_error.inc()
            queue.add_rate_limited(req)
            self._log.error(
                "reconcile failed",
                request=req.key,
                error=str(e) or type(e).__name__,
                error_type=type(e).__name__,
                exc_info=isinstance(e, PANIC_TYPES),
            )
            return
        finally:
            self._m_time.observe(time.perf_counter() - start)
            self._m_active.dec()
        if result is None or result.is_zero:
            queue.forget(req)
            self._m_success.inc()
        elif result.requeue_after > 0:
            queue.forget(req)
            queue.add_after(req, result.requeue_after)
            self._m_requeue_after.inc()
        else:
            queue.add_rate_limited(req)
            self._m_requeue.inc()
