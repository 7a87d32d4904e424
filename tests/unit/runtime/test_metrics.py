"""Metrics: the exposition must match controller-runtime's and client-go's exactly."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kaito.runtime import metrics
from kaito.runtime.metrics import (
    QUEUE_METRICS,
    REGISTRY,
    QueueMetrics,
    init_controller_metrics,
)
from kaito.runtime.ratelimit import ItemExponentialFailureRateLimiter
from kaito.runtime.testing import FakeClock
from kaito.runtime.workqueue import WorkQueue

_names = itertools.count()


@pytest.fixture(autouse=True)
def _registered() -> None:
    """These tests record families without building a Manager or Controller."""
    metrics.register_runtime_metrics()


def unique(prefix: str) -> str:
    """Label values unique to one test: REGISTRY is process-wide."""
    return f"{prefix}-{next(_names)}"


def scrape() -> dict[str, tuple[str, list[Sample]]]:
    """Sample name -> (family type, samples), parsed from REGISTRY's exposition."""
    text = generate_latest(REGISTRY).decode()
    out: dict[str, tuple[str, list[Sample]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, (family.type, []))[1].append(sample)
    return out


def value(sample_name: str, /, **labels: str) -> float:
    """The one sample of `sample_name` whose labels include `labels`."""
    samples = scrape()[sample_name][1]
    matches = [s.value for s in samples if labels.items() <= s.labels.items()]
    assert len(matches) == 1, (sample_name, labels, matches)
    return matches[0]


# sample name -> (type, label names); histograms are listed by their _count sample.
UPSTREAM = {
    "controller_runtime_reconcile_total": ("counter", {"controller", "result"}),
    "controller_runtime_reconcile_errors_total": ("counter", {"controller"}),
    "controller_runtime_terminal_reconcile_errors_total": ("counter", {"controller"}),
    "controller_runtime_reconcile_panics_total": ("counter", {"controller"}),
    "controller_runtime_reconcile_time_seconds_count": ("histogram", {"controller"}),
    "controller_runtime_max_concurrent_reconciles": ("gauge", {"controller"}),
    "controller_runtime_active_workers": ("gauge", {"controller"}),
    "workqueue_depth": ("gauge", {"name", "controller"}),
    "workqueue_adds_total": ("counter", {"name", "controller"}),
    "workqueue_queue_duration_seconds_count": ("histogram", {"name", "controller"}),
    "workqueue_work_duration_seconds_count": ("histogram", {"name", "controller"}),
    "workqueue_unfinished_work_seconds": ("gauge", {"name", "controller"}),
    "workqueue_longest_running_processor_seconds": ("gauge", {"name", "controller"}),
    "workqueue_retries_total": ("counter", {"name", "controller"}),
    "rest_client_requests_total": ("counter", {"code", "method", "host"}),
    "leader_election_master_status": ("gauge", {"name"}),
}


def test_families_have_upstream_names_types_and_labels() -> None:
    controller = unique("families")
    init_controller_metrics(controller)
    metrics.RECONCILE_TIME.labels(controller=controller).observe(0.1)
    metrics.REST_CLIENT_REQUESTS.labels(code="200", method="GET", host="test").inc(0)
    metrics.LEADER_ELECTION_MASTER_STATUS.labels(name=controller).set(0)
    WorkQueue[str](name=controller, clock=FakeClock(), metrics=QUEUE_METRICS).add("a")

    samples = scrape()
    for name, (kind, labels) in UPSTREAM.items():
        assert name in samples, f"{name} missing"
        family_type, family_samples = samples[name]
        assert family_type == kind, name
        assert {frozenset(s.labels) for s in family_samples} == {frozenset(labels)}, name


def test_reconcile_results_exist_at_zero_after_init() -> None:
    controller = unique("init")
    init_controller_metrics(controller, max_concurrent_reconciles=4)
    results = {
        s.labels["result"]: s.value
        for s in scrape()["controller_runtime_reconcile_total"][1]
        if s.labels["controller"] == controller
    }
    assert results == {"success": 0, "error": 0, "requeue": 0, "requeue_after": 0}
    for name in (
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_terminal_reconcile_errors_total",
        "controller_runtime_reconcile_panics_total",
        "controller_runtime_active_workers",
    ):
        assert value(name, controller=controller) == 0
    assert value("controller_runtime_max_concurrent_reconciles", controller=controller) == 4


def test_no_created_samples() -> None:
    init_controller_metrics(unique("created"))
    WorkQueue[str](name=unique("created"), clock=FakeClock(), metrics=QUEUE_METRICS).add("a")
    assert [name for name in scrape() if name.endswith("_created")] == []


def test_reconcile_time_has_upstream_buckets() -> None:
    controller = unique("buckets")
    metrics.RECONCILE_TIME.labels(controller=controller).observe(0.3)
    bounds = [
        s.labels["le"]
        for s in scrape()["controller_runtime_reconcile_time_seconds_bucket"][1]
        if s.labels["controller"] == controller
    ]
    assert len(bounds) == 41  # 40 upstream buckets and +Inf
    assert [float(b) for b in bounds[:-1]] == list(metrics.RECONCILE_TIME_BUCKETS)
    assert bounds[-1] == "+Inf"


def test_workqueue_histograms_have_exponential_buckets_1e8_to_1e3() -> None:
    name = unique("wq-buckets")
    WorkQueue[str](name=name, clock=FakeClock(), metrics=QUEUE_METRICS).add("a")
    for histogram in ("workqueue_queue_duration_seconds", "workqueue_work_duration_seconds"):
        bounds = [
            float(s.labels["le"])
            for s in scrape()[f"{histogram}_bucket"][1]
            if s.labels["name"] == name
        ]
        expected = [10.0**exponent for exponent in range(-8, 4)] + [float("inf")]
        assert bounds == pytest.approx(expected, rel=1e-12)


async def test_queue_metrics_move_when_a_queue_is_used() -> None:
    name = unique("queue")
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(
        name=name,
        clock=clock,
        rate_limiter=ItemExponentialFailureRateLimiter(),
        metrics=QUEUE_METRICS,
    )
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert value("workqueue_adds_total", name=name, controller=name) == 2
    assert value("workqueue_depth", name=name, controller=name) == 2

    clock.advance(1)
    item = await queue.get()
    assert value("workqueue_depth", name=name) == 1
    assert value("workqueue_queue_duration_seconds_count", name=name) == 1
    assert value("workqueue_queue_duration_seconds_sum", name=name) == 1
    assert value("workqueue_queue_duration_seconds_bucket", name=name, le="1.0") == 1
    assert value("workqueue_queue_duration_seconds_bucket", name=name, le="0.1") == 0

    clock.advance(2)
    assert value("workqueue_unfinished_work_seconds", name=name) == 2
    assert value("workqueue_longest_running_processor_seconds", name=name) == 2

    queue.done(item)
    assert value("workqueue_work_duration_seconds_count", name=name) == 1
    assert value("workqueue_work_duration_seconds_sum", name=name) == 2
    assert value("workqueue_unfinished_work_seconds", name=name) == 0
    assert value("workqueue_longest_running_processor_seconds", name=name) == 0

    queue.add_rate_limited("a")
    queue.add_after("c", 1)
    assert value("workqueue_retries_total", name=name) == 2


async def test_unfinished_work_sums_and_longest_takes_the_oldest() -> None:
    name = unique("unfinished")
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(name=name, clock=clock, metrics=QUEUE_METRICS)
    queue.add("a")
    queue.add("b")
    await queue.get()
    clock.advance(3)
    await queue.get()
    clock.advance(1)
    assert value("workqueue_unfinished_work_seconds", name=name) == 4 + 1
    assert value("workqueue_longest_running_processor_seconds", name=name) == 4


def test_queues_with_one_name_share_their_series() -> None:
    name = unique("shared")
    WorkQueue[str](name=name, clock=FakeClock(), metrics=QUEUE_METRICS).add("a")
    WorkQueue[str](name=name, clock=FakeClock(), metrics=QUEUE_METRICS).add("a")
    assert value("workqueue_adds_total", name=name) == 2


def test_unnamed_queue_records_nothing() -> None:
    before = scrape().get("workqueue_adds_total", ("", []))[1]
    WorkQueue[str](clock=FakeClock(), metrics=QUEUE_METRICS).add("a")
    assert scrape().get("workqueue_adds_total", ("", []))[1] == before


def test_second_provider_in_one_registry_is_refused() -> None:
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        QueueMetrics(registry=REGISTRY)


def test_importing_the_operator_registers_no_metrics() -> None:
    code = (
        "import kaito.runtime, kaito.provisioner.app, kaito.controllers.workspace.app\n"
        "import kaito.controllers.workspace.admission.webhook, kaito.runtime.webhook\n"
        "from kaito.runtime.metrics import REGISTRY\n"
        "print(sorted(m.name for m in REGISTRY.collect()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    registered = ast.literal_eval(out.stdout.strip())
    assert registered == []


def test_register_runtime_metrics_is_idempotent() -> None:
    registry = CollectorRegistry()
    metrics.register_runtime_metrics(registry)
    metrics.register_runtime_metrics(registry)  # prometheus_client alone would raise here
    names = {m.name for m in registry.collect()}
    assert "controller_runtime_reconcile" in names
    assert "workqueue_depth" in names
