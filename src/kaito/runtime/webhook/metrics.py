"""controller-runtime's webhook metrics (``pkg/webhook/internal/metrics``), same names.

| name | type | labels |
|---|---|---|
| ``controller_runtime_webhook_requests_total`` | counter | webhook, code |
| ``controller_runtime_webhook_requests_in_flight`` | gauge | webhook |
| ``controller_runtime_webhook_latency_seconds`` | histogram | webhook |

``webhook`` is the path served, ``code`` the HTTP status. The families are registered
when the first webhook server is built, not at import, so a process without a webhook
exports none of them (as a Go operator without one does).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kaito.runtime import metrics

__all__ = ["WebhookMetrics", "webhook_metrics"]


@dataclass(frozen=True)
class WebhookMetrics:
    requests: Counter
    in_flight: Gauge
    latency: Histogram


@functools.cache
def webhook_metrics(registry: CollectorRegistry = metrics.REGISTRY) -> WebhookMetrics:
    """The three families in ``registry`` (default the runtime's), registered once."""
    return WebhookMetrics(
        requests=Counter(
            "controller_runtime_webhook_requests_total",
            "Total number of admission requests by HTTP status code.",
            # Go's exposition sorts label names: code before webhook.
            ["code", "webhook"],
            registry=registry,
        ),
        in_flight=Gauge(
            "controller_runtime_webhook_requests_in_flight",
            "Current number of admission requests being served.",
            ["webhook"],
            registry=registry,
        ),
        latency=Histogram(
            "controller_runtime_webhook_latency_seconds",
            "Histogram of the latency of processing admission requests",
            ["webhook"],
            registry=registry,
        ),
    )
