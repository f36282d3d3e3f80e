"""Prometheus collectors, one registry per app so several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond buckets: a cache hit takes tens of microseconds, a miss well under 1 ms.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class ServiceMetrics:
    def __init__(self, cache_size: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "ctr_request_latency_seconds",
            "Request latency by endpoint and status class.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "ctr_cache_hits", "Rows answered from the score cache.", registry=self.registry
        )
        self.cache_misses = Counter(
            "ctr_cache_misses", "Rows that had to be scored.", registry=self.registry
        )
        self.cache_entries = Gauge(
            "ctr_cache_entries", "Live entries in the score cache.", registry=self.registry
        )
        self.cache_entries.set_function(lambda: float(cache_size()))
        self.scored_batch_rows = Histogram(
            "ctr_scored_batch_rows",
            "Rows per onnxruntime call (cache misses of one request).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.scoring_errors = Counter(
            "ctr_scoring_errors", "onnxruntime calls that failed.", registry=self.registry
        )
        self.model_info = Gauge(
            "ctr_model_info",
            "The model version being served (value 1).",
            ["model_type", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "ctr_model_reloads",
            "Model reload attempts by outcome.",
            ["outcome"],
            registry=self.registry,
        )

    def set_model(self, model_type: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model_type=model_type, version=version).set(1)
