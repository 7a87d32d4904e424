"""The work queue between event handlers and reconcile workers.

One class with client-go's three layers (base, delaying, rate-limiting queue). The base
queue is what makes a controller level-based and safe with many workers:

* ``dirty`` holds every key that needs a reconcile, ``processing`` every key a worker
  holds, ``queue`` the order in which dirty keys are handed out.
* Adding a key that is already dirty does nothing: ten events for one object while it
  waits cost one reconcile, which then reads the latest state.
* A key is never in ``queue`` while it is in ``processing``, so two workers never
  reconcile the same object at once. Adding it during processing only marks it dirty;
  `done` queues it again, so the change that arrived mid-reconcile gets exactly one
  more run and is never lost.

Delayed items (`add_after`, `add_rate_limited`) wait in a heap keyed by ready time.
Instead of client-go's waiting goroutine there is one timer, armed through the injected
`Clock` for the earliest ready time; when it fires it moves every ready item to the
queue with a normal `add` and re-arms itself for the next one. `shutdown` cancels it,
so nothing outlives the queue, and with `FakeClock` the timer fires inside
`FakeClock.advance`.

All methods must be called from the event loop's thread. `get` is the only one that
waits; the others never yield, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from kaito.runtime._clock import Clock, RealClock, TimerHandle
from kaito.runtime.metrics import QueueMetrics, QueueRecorder
from kaito.runtime.ratelimit import RateLimiter, default_controller_rate_limiter

__all__ = ["QueueShutDown", "WorkQueue"]

T = TypeVar("T", bound=Hashable)


class QueueShutDown(Exception):
    """`WorkQueue.get` found the queue shut down with nothing left to hand out.

    Workers treat it as "stop": it is the equivalent of client-go's ``shutdown == true``.
    """


class WorkQueue(Generic[T]):
    """A de-duplicating, delaying, rate-limited FIFO of keys (client-go's workqueue).

    Usage by a worker::

        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            try:
                ...  # reconcile key
            finally:
                queue.done(key)

    Items must be hashable and should be small immutable keys (a namespace/name pair),
    not objects: equality decides de-duplication.
    """

    __slots__ = (
        "_clock",
        "_dirty",
        "_drainers",
        "_getters",
        "_processing",
        "_queue",
        "_rate_limiter",
        "_recorder",
        "_seq",
        "_shutting_down",
        "_timer",
        "_timer_at",
        "_waiting",
        "_waiting_by_item",
        "name",
    )

    def __init__(
        self,
        *,
        name: str = "",
        clock: Clock | None = None,
        rate_limiter: RateLimiter | None = None,
        metrics: QueueMetrics | None = None,
    ) -> None:
        """Options, all keyword-only:

        name: the queue's name, the ``name``/``controller`` label of its metrics
            (default ``""``; as in client-go an unnamed queue records no metrics).
        clock: time source for delays, rate limiting and metrics (default `RealClock()`).
        rate_limiter: decides `add_rate_limited` delays (default
            `default_controller_rate_limiter` on this queue's clock).
        metrics: provider of the ``workqueue_*`` metrics, usually
            `kaito.runtime.metrics.QUEUE_METRICS` (default None: record nothing).
        """
        self.name = name
        self._clock: Clock = clock if clock is not None else RealClock()
        self._rate_limiter: RateLimiter = (
            rate_limiter
            if rate_limiter is not None
            else default_controller_rate_limiter(clock=self._clock)
        )
        self._recorder: QueueRecorder | None = (
            metrics.for_queue(name, clock=self._clock) if metrics is not None and name else None
        )
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()
        self._processing: set[T] = set()
        self._shutting_down = False
        self._getters: deque[asyncio.Future[None]] = deque()
        self._drainers: list[asyncio.Future[None]] = []
        # Delayed items: a heap of (ready_at, seq, item) entries plus the live entry per
        # item. An entry replaced by an earlier one stays in the heap, stale, and is
        # skipped when it surfaces (heapq has no decrease-key). `seq` keeps items, which
        # need not be orderable, out of comparisons.
        self._waiting: list[tuple[float, int, T]] = []
        self._waiting_by_item: dict[T, tuple[float, int, T]] = {}
        self._seq = itertools.count()
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0

    # --- base queue -------------------------------------------------------------------

    def add(self, item: T) -> None:
        """Mark `item` as needing processing; a no-op if it already does or on shutdown."""
        if self._shutting_down:
            return
        dirty = self._dirty
        if item in dirty:
            return
        dirty.add(item)
        if self._recorder is not None:
            self._recorder.add(item)
        if item in self._processing:
            return  # `done` will queue it
        self._queue.append(item)
        if self._getters:
            self._wake_one_getter()

    async def get(self) -> T:
        """Wait for the next item and take it into processing; call `done` with it after.

        Items still queued at shutdown are handed out; then `QueueShutDown` is raised.
        """
        queue = self._queue
        if not queue:
            await self._wait_for_item()
        item = queue.popleft()
        self._processing.add(item)
        self._dirty.discard(item)
        if self._recorder is not None:
            self._recorder.get(item)
        return item

    def done(self, item: T) -> None:
        """Release `item` from processing, queueing it again if it was re-added meanwhile.

        Ignored for an item that is not being processed (client-go would queue it twice).
        """
        processing = self._processing
        try:
            processing.remove(item)
        except KeyError:
            return
        if self._recorder is not None:
            self._recorder.done(item)
        if item in self._dirty:
            self._queue.append(item)
            if self._getters:
                self._wake_one_getter()
        if not processing and self._drainers:
            self._wake_all(self._drainers)

    def __len__(self) -> int:
        """Items waiting to be handed out (not those processing or delayed)."""
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        """Whether `shutdown` or `shutdown_with_drain` was called."""
        return self._shutting_down

    def shutdown(self) -> None:
        """Stop accepting items; wake every waiting `get`.

        Delayed items are dropped. Items already queued are still handed out before
        `get` raises `QueueShutDown`. A pending `shutdown_with_drain` returns at once,
        as in client-go, where `ShutDown` cancels the drain.
        """
        self._stop()
        self._wake_all(self._drainers)

    async def shutdown_with_drain(self) -> None:
        """`shutdown`, then wait until no item is processing (every `get` got its `done`).

        It waits as long as that takes; bound it with ``asyncio.timeout`` (the manager's
        graceful-shutdown period).
        """
        self._stop()
        if not self._processing:
            return
        drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drainers.append(drained)
        try:
            await drained
        finally:
            if drained in self._drainers:
                self._drainers.remove(drained)

    # --- delaying queue ---------------------------------------------------------------

    def add_after(self, item: T, delay: float) -> None:
        """`add` the item once `delay` seconds have passed (at once if `delay` <= 0).

        If the item is already waiting, the earlier ready time wins. A plain `add`
        while it waits hands it out now and leaves the delayed entry in place: like
        client-go, that entry still fires later as a normal `add` (a no-op if the item
        is still queued, one more run otherwise; harmless for level-based reconciles).
        Counts in ``workqueue_retries_total``, as client-go's `AddAfter` does.
        """
        if self._shutting_down:
            return
        if self._recorder is not None:
            self._recorder.retry()
        if delay <= 0:
            self.add(item)
            return
        ready_at = self._clock.now() + delay
        pending = self._waiting_by_item.get(item)
        if pending is not None and pending[0] <= ready_at:
            return
        entry = (ready_at, next(self._seq), item)
        self._waiting_by_item[item] = entry
        heapq.heappush(self._waiting, entry)
        if self._timer is None or ready_at < self._timer_at:
            self._arm_timer(ready_at)

    # --- rate-limiting queue ----------------------------------------------------------

    def add_rate_limited(self, item: T) -> None:
        """`add_after` the item with the delay the rate limiter decides (one more failure)."""
        self.add_after(item, self._rate_limiter.when(item))

    def forget(self, item: T) -> None:
        """Tell the rate limiter the item succeeded: its backoff starts over."""
        self._rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        """How many rate-limited requeues of the item the rate limiter has on record."""
        return self._rate_limiter.num_requeues(item)

    # --- internals --------------------------------------------------------------------

    async def _wait_for_item(self) -> None:
        """Wait until the queue has an item, or raise `QueueShutDown`."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDown
            getter: asyncio.Future[None] = loop.create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                # Woken for an item but cancelled before taking it: pass the wake-up on,
                # or that item would sit in the queue while another getter sleeps.
                if self._queue and not getter.cancelled():
                    self._wake_one_getter()
                raise

    def _wake_one_getter(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    @staticmethod
    def _wake_all(futures: deque[asyncio.Future[None]] | list[asyncio.Future[None]]) -> None:
        while futures:
            future = futures.pop()
            if not future.done():
                future.set_result(None)

    def _stop(self) -> None:
        self._shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
        self._waiting_by_item.clear()
        self._wake_all(self._getters)

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._clock.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        """Move every delayed item whose time has come to the queue; re-arm for the rest."""
        self._timer = None
        now = self._clock.now()
        waiting = self._waiting
        by_item = self._waiting_by_item
        while waiting:
            entry = waiting[0]
            ready_at, _, item = entry
            if by_item.get(item) is not entry:
                heapq.heappop(waiting)  # stale: superseded by an earlier ready time
                continue
            if ready_at > now:
                self._arm_timer(ready_at)
                return
            heapq.heappop(waiting)
            del by_item[item]
            self.add(item)
