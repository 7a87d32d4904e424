"""The server's own Prometheus metrics, and rendering them with the engine's.

The server's metrics live in their own registry so that several servers can exist in one
process (tests) and so that they never clash with the engine's `vllm:*` metrics, which
vLLM registers in the process-wide default registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics", "render"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """Requests by route and status code, in-flight requests, latency, rejections."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "kaito_inference_requests",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kaito_inference_request_duration_seconds",
            "Time from receiving a request to the end of its response, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kaito_inference_requests_in_flight",
            "Generation requests admitted and not yet finished.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "kaito_inference_requests_rejected",
            "Generation requests refused before reaching the engine, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.aborted = Counter(
            "kaito_inference_generations_aborted",
            "Generations stopped before finishing because the client went away.",
            registry=self.registry,
        )
        self.ttft = Histogram(
            "kaito_inference_time_to_first_token_seconds",
            "Time from receiving a generation request to writing its first token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )


def render(registries: Iterable[object]) -> bytes:
    """Prometheus text for each distinct registry, concatenated."""
    seen: set[int] = set()
    parts = []
    for registry in registries:
        if id(registry) in seen:
            continue
        seen.add(id(registry))
        parts.append(generate_latest(registry))  # type: ignore[arg-type]
    return b"".join(parts)
