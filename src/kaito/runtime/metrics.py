"""Prometheus metrics with controller-runtime's and client-go's names, types and labels.

Dashboards and alerts written for Go operators (`controller_runtime_reconcile_total`,
`workqueue_depth`, ...) must work unchanged against this runtime, so every family here
copies its upstream name, type, label names and buckets exactly.

The runtime has its own `REGISTRY` rather than prometheus_client's global one, so the
operator's `/metrics` shows exactly these families (plus whatever the operator registers
on purpose) and tests can parse it. `_created` series are disabled process-wide: Go
exporters have none, and they double the number of counter series.

Importing this module registers nothing: the families are created unregistered and
`register_runtime_metrics` puts them in `REGISTRY` once, when the first component that
records them (a `Manager`, `Controller`, `Client` or `LeaderElector`) is built. A program
or test that merely imports the runtime leaves the registry empty, and operator families
go in the same way, explicitly, with `register_once`.

Work-queue metrics are recorded on the queue's hot path, so they are not
prometheus_client metric objects (a lock and several calls per update): each queue gets
a `QueueRecorder` that bumps plain integers, and `QueueMetrics` turns them into metric
families when scraped. The two "in progress" gauges, `workqueue_unfinished_work_seconds`
and `workqueue_longest_running_processor_seconds`, are computed at scrape time from the
items' start times; client-go refreshes them from a goroutine every 500 ms, which here
would be a background task for no benefit.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kaito.runtime._clock import Clock

__all__ = [
    "ACTIVE_WORKERS",
    "LEADER_ELECTION_MASTER_STATUS",
    "MAX_CONCURRENT_RECONCILES",
    "QUEUE_METRICS",
    "RECONCILE_ERRORS",
    "RECONCILE_PANICS",
    "RECONCILE_RESULTS",
    "RECONCILE_TIME",
    "RECONCILE_TIME_BUCKETS",
    "RECONCILE_TOTAL",
    "REGISTRY",
    "REST_CLIENT_REQUESTS",
    "TERMINAL_RECONCILE_ERRORS",
    "WORKQUEUE_BUCKETS",
    "QueueMetrics",
    "QueueRecorder",
    "init_controller_metrics",
    "register_once",
    "register_runtime_metrics",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

REGISTRY = CollectorRegistry()
"""The runtime's registry; the manager serves it on `/metrics`."""

# --- controller-runtime: pkg/internal/controller/metrics --------------------------------

RECONCILE_RESULTS = ("error", "requeue", "requeue_after", "success")
"""Values of the `result` label of `controller_runtime_reconcile_total`."""

# fmt: off
RECONCILE_TIME_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8,
    0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30,
    40, 50, 60,
)
"""controller-runtime's buckets for `controller_runtime_reconcile_time_seconds` (40)."""
# fmt: on

RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile_total",
    "Total number of reconciliations per controller",
    ["controller", "result"],
    registry=None,
)
RECONCILE_ERRORS = Counter(
    "controller_runtime_reconcile_errors_total",
    "Total number of reconciliation errors per controller",
    ["controller"],
    registry=None,
)
TERMINAL_RECONCILE_ERRORS = Counter(
    "controller_runtime_terminal_reconcile_errors_total",
    "Total number of terminal reconciliation errors per controller",
    ["controller"],
    registry=None,
)
RECONCILE_PANICS = Counter(
    "controller_runtime_reconcile_panics_total",
    "Total number of reconciliation panics per controller",
    ["controller"],
    registry=None,
)
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Length of time per reconciliation per controller",
    ["controller"],
    buckets=RECONCILE_TIME_BUCKETS,
    registry=None,
)
MAX_CONCURRENT_RECONCILES = Gauge(
    "controller_runtime_max_concurrent_reconciles",
    "Maximum number of concurrent reconciles per controller",
    ["controller"],
    registry=None,
)
ACTIVE_WORKERS = Gauge(
    "controller_runtime_active_workers",
    "Number of currently used workers per controller",
    ["controller"],
    registry=None,
)

# --- client-go: rest client and leader election ------------------------------------------

REST_CLIENT_REQUESTS = Counter(
    "rest_client_requests_total",
    "Number of HTTP requests, partitioned by status code, method, and host.",
    ["code", "method", "host"],
    registry=None,
)
LEADER_ELECTION_MASTER_STATUS = Gauge(
    "leader_election_master_status",
    "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, "
    "1 indicates master. 'name' is the string used to identify the lease. "
    "Please make sure to group by name.",
    ["name"],
    registry=None,
)


_registered: set[tuple[int, int]] = set()
_registered_lock = threading.Lock()


def register_once(*collectors: Collector, registry: CollectorRegistry = REGISTRY) -> None:
    """Register each collector in `registry` (default `REGISTRY`) unless it already is.

    Idempotent, so every component that records a family may call it when it is built;
    prometheus_client's own `register` raises on the second call.
    """
    with _registered_lock:
        for collector in collectors:
            key = (id(registry), id(collector))
            if key not in _registered:
                registry.register(collector)
                _registered.add(key)


def register_runtime_metrics(registry: CollectorRegistry = REGISTRY) -> None:
    """Register the runtime's families (controller, work queue, REST client, leader
    election) in `registry` (default `REGISTRY`), once."""
    register_once(
        RECONCILE_TOTAL,
        RECONCILE_ERRORS,
        TERMINAL_RECONCILE_ERRORS,
        RECONCILE_PANICS,
        RECONCILE_TIME,
        MAX_CONCURRENT_RECONCILES,
        ACTIVE_WORKERS,
        REST_CLIENT_REQUESTS,
        LEADER_ELECTION_MASTER_STATUS,
        QUEUE_METRICS,
        registry=registry,
    )


def init_controller_metrics(controller_name: str, *, max_concurrent_reconciles: int = 1) -> None:
    """Create a controller's series up front, as controller-runtime's `initMetrics` does.

    Counters that only appear on the first error make `rate()` and alerts blind to that
    first error, so every result label and the error counters start at 0.
    `max_concurrent_reconciles` (default 1) is published as-is; active workers start at 0.
    """
    for result in RECONCILE_RESULTS:
        RECONCILE_TOTAL.labels(controller=controller_name, result=result).inc(0)
    RECONCILE_ERRORS.labels(controller=controller_name).inc(0)
    TERMINAL_RECONCILE_ERRORS.labels(controller=controller_name).inc(0)
    RECONCILE_PANICS.labels(controller=controller_name).inc(0)
    MAX_CONCURRENT_RECONCILES.labels(controller=controller_name).set(max_concurrent_reconciles)
    ACTIVE_WORKERS.labels(controller=controller_name).set(0)


# --- client-go: workqueue (controller-runtime's provider labels name and controller) ----

WORKQUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(12))
"""client-go's `prometheus.ExponentialBuckets(10e-9, 10, 12)`: 1e-8 s .. 1000 s."""

_BUCKET_LABELS = (*(repr(bound) for bound in WORKQUEUE_BUCKETS), "+Inf")
_QUEUE_LABELS = ("name", "controller")


class _Histogram:
    """Plain bucket counts (non-cumulative; the last slot is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(WORKQUEUE_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # `le` is inclusive: bisect_left finds the first bound >= value.
        self.counts[bisect_left(WORKQUEUE_BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        counts = list(self.counts)  # one C-level copy: consistent against a writer thread
        total = self.total
        buckets: list[tuple[str, float]] = []
        running = 0
        for label, count in zip(_BUCKET_LABELS, counts, strict=True):
            running += count
            buckets.append((label, float(running)))
        return buckets, total


class _QueueSeries:
    """The counters of one queue name, shared by every queue that carries it.

    Two queues with the same name share their series, as two Go queues registered under
    one name share a Prometheus child; counters therefore never go backwards when a
    controller is rebuilt.
    """

    __slots__ = ("adds", "depth", "queue_latency", "recorders", "retries", "work_duration")

    def __init__(self) -> None:
        self.adds = 0
        self.depth = 0
        self.retries = 0
        self.queue_latency = _Histogram()
        self.work_duration = _Histogram()
        self.recorders: weakref.WeakSet[QueueRecorder] = weakref.WeakSet()


class QueueRecorder:
    """One queue's metrics hooks (client-go's `queueMetrics`), called by `WorkQueue`.

    Each hook is a few attribute updates and at most one clock reading; add times and
    processing start times are kept per item so latency and work duration can be
    observed, and so scrapes can compute the unfinished-work gauges.
    """

    __slots__ = ("__weakref__", "_added_at", "_now", "_series", "_started_at")

    def __init__(self, series: _QueueSeries, now: Callable[[], float]) -> None:
        self._series = series
        self._now = now
        self._added_at: dict[Hashable, float] = {}
        self._started_at: dict[Hashable, float] = {}

    def add(self, item: Hashable) -> None:
        """An item became dirty (queued, or waiting for its in-flight run to finish)."""
        series = self._series
        series.adds += 1
        series.depth += 1
        if item not in self._added_at:
            self._added_at[item] = self._now()

    def get(self, item: Hashable) -> None:
        """An item was handed to a worker."""
        self._series.depth -= 1
        now = self._now()
        self._started_at[item] = now
        added = self._added_at.pop(item, None)
        if added is not None:
            self._series.queue_latency.observe(now - added)

    def done(self, item: Hashable) -> None:
        """A worker finished an item."""
        started = self._started_at.pop(item, None)
        if started is not None:
            self._series.work_duration.observe(self._now() - started)

    def retry(self) -> None:
        """An item was scheduled with a delay (`add_after`, so `add_rate_limited` too)."""
        self._series.retries += 1

    def unfinished(self) -> tuple[float, float]:
        """(total, longest) seconds that items currently being processed have run."""
        now = self._now()
        starts = list(self._started_at.values())  # C-level copy, safe against the loop
        if not starts:
            return 0.0, 0.0
        return sum(now - start for start in starts), now - min(starts)


class QueueMetrics:
    """Provides `QueueRecorder`s to work queues and exports them as `workqueue_*` families.

    One instance is one Prometheus collector; `QUEUE_METRICS` is the one
    `register_runtime_metrics` puts in `REGISTRY`, and the one controllers should pass to
    their queues.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        """`registry`: where to register the families at once (default None: nowhere)."""
        self._lock = threading.Lock()  # scrapes may come from another thread
        self._series: dict[str, _QueueSeries] = {}
        if registry is not None:
            registry.register(self)

    def for_queue(self, name: str, *, clock: Clock) -> QueueRecorder:
        """A recorder for the queue called `name`, timing with that queue's `clock`."""
        with self._lock:
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = _QueueSeries()
            recorder = QueueRecorder(series, clock.now)
            series.recorders.add(recorder)
        return recorder

    def describe(self) -> Iterable[Metric]:
        """The family names, so the registry can refuse duplicates at registration."""
        return _QueueFamilies().all()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = [(name, s, list(s.recorders)) for name, s in self._series.items()]
        if not snapshot:
            return []
        families = _QueueFamilies()
        for name, series, recorders in snapshot:
            labels = [name, name]
            families.depth.add_metric(labels, series.depth)
            families.adds.add_metric(labels, series.adds)
            families.retries.add_metric(labels, series.retries)
            families.queue_latency.add_metric(labels, *series.queue_latency.cumulative())
            families.work_duration.add_metric(labels, *series.work_duration.cumulative())
            total = oldest = 0.0
            for recorder in recorders:
                recorder_total, recorder_oldest = recorder.unfinished()
                total += recorder_total
                oldest = max(oldest, recorder_oldest)
            families.unfinished.add_metric(labels, total)
            families.longest.add_metric(labels, oldest)
        return families.all()


class _QueueFamilies:
    """Empty `workqueue_*` families, filled in by one scrape."""

    __slots__ = (
        "adds",
        "depth",
        "longest",
        "queue_latency",
        "retries",
        "unfinished",
        "work_duration",
    )

    def __init__(self) -> None:
        labels = _QUEUE_LABELS
        self.depth = GaugeMetricFamily(
            "workqueue_depth", "Current depth of workqueue", labels=labels
        )
        self.adds = CounterMetricFamily(
            "workqueue_adds", "Total number of adds handled by workqueue", labels=labels
        )
        self.queue_latency = HistogramMetricFamily(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            labels=labels,
        )
        self.work_duration = HistogramMetricFamily(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            labels=labels,
        )
        self.unfinished = GaugeMetricFamily(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration. Large values indicate stuck threads. One can deduce "
            "the number of stuck threads by observing the rate at which this increases.",
            labels=labels,
        )
        self.longest = GaugeMetricFamily(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            labels=labels,
        )
        self.retries = CounterMetricFamily(
            "workqueue_retries", "Total number of retries handled by workqueue", labels=labels
        )

    def all(self) -> list[Metric]:
        return [
            self.depth,
            self.adds,
            self.queue_latency,
            self.work_duration,
            self.unfinished,
            self.longest,
            self.retries,
        ]


QUEUE_METRICS = QueueMetrics()
"""The work-queue metrics provider; `register_runtime_metrics` registers it in `REGISTRY`."""
