"""The provisioner's metrics (PROVISIONER.md), in the runtime's registry beside its own.

- ``gpu_provisioner_machines{state}``: managed Machines by lifecycle state, counted from
  the informer cache at scrape time (launching, registering, initializing, ready,
  failed, deleting).
- ``gpu_provisioner_launch_duration_seconds``: Machine creation -> MachineLaunched.
- ``gpu_provisioner_registration_duration_seconds``: MachineLaunched -> MachineRegistered.
- ``gpu_provisioner_azure_requests_total{operation,code}``: every HTTP attempt to ARM
  (retries included), by operation (create, get, list, delete, poll) and status code.

Created unregistered at import; `register_metrics` puts them in the runtime's registry once,
when a provisioner (or anything else recording them) is built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from kaito.runtime.metrics import REGISTRY, register_once

__all__ = [
    "AZURE_REQUESTS",
    "LAUNCH_DURATION",
    "MACHINE_STATES",
    "REGISTRATION_DURATION",
    "STATE_COLLECTOR",
    "MachineStateCollector",
    "observe_azure_response",
    "register_metrics",
]

_DURATION_BUCKETS = (
    0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800,
)  # fmt: skip

AZURE_REQUESTS = Counter(
    "gpu_provisioner_azure_requests_total",
    "HTTP requests to Azure Resource Manager by operation and status code (retries included)",
    ["operation", "code"],
    registry=None,
)
LAUNCH_DURATION = Histogram(
    "gpu_provisioner_launch_duration_seconds",
    "Seconds from a Machine's creation to its agent pool existing (MachineLaunched)",
    buckets=_DURATION_BUCKETS,
    registry=None,
)
REGISTRATION_DURATION = Histogram(
    "gpu_provisioner_registration_duration_seconds",
    "Seconds from MachineLaunched to its Node registering (MachineRegistered)",
    buckets=_DURATION_BUCKETS,
    registry=None,
)

MACHINE_STATES = ("launching", "registering", "initializing", "ready", "failed", "deleting")


class MachineStateCollector:
    """``gpu_provisioner_machines{state}``, computed from the running provisioner's cache.

    One collector per process (registered once); a provisioner sets its source when it
    starts and clears it when it stops, so tests can run several in turn.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: Callable[[], Iterable[str]] | None = None

    def set_source(self, source: Callable[[], Iterable[str]] | None) -> None:
        with self._lock:
            self._source = source

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            source = self._source
        counts = dict.fromkeys(MACHINE_STATES, 0)
        if source is not None:
            for state in source():
                counts[state] = counts.get(state, 0) + 1
        family = self._family()
        for state, n in counts.items():
            family.add_metric([state], n)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "gpu_provisioner_machines", "Managed Machines by lifecycle state", labels=["state"]
        )


STATE_COLLECTOR = MachineStateCollector()


def register_metrics(registry: CollectorRegistry = REGISTRY) -> None:
    """Register the provisioner's families in `registry` (default the runtime's), once."""
    register_once(
        AZURE_REQUESTS, LAUNCH_DURATION, REGISTRATION_DURATION, STATE_COLLECTOR, registry=registry
    )


def observe_azure_response(operation: str, status: int | str) -> None:
    AZURE_REQUESTS.labels(operation, str(status)).inc()
