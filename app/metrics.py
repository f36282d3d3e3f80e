"""Prometheus collectors, summed across every worker of a replica.

``python -m app`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
prometheus_client, so each worker writes its values to memory-mapped files there and
``/metrics``, whichever worker answers it, reads them all (prometheus_client's multiprocess
mode). Without that variable (tests, an app built in-process) each app keeps its own
registry, so several apps can live in one process.

Per-row model-health counts and per-stage timings are tallied in numpy on the request path
and flushed into the collectors off it (by the repository poller, and before each scrape),
so a 1,000-row request costs the same few array operations as a single row.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.features.spec import MISSING_INDEX, UNSEEN_INDEX

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Sub-millisecond buckets: a cache hit takes tens of microseconds, a miss well under 1 ms.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
STAGE_BUCKETS = (
    0.000005,
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.05,
    0.25,
)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
STAGES = ("parse", "encode", "cache", "onnxruntime")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class ServiceMetrics:
    """Every collector the service exports, registered on one registry per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._served: set[tuple[str, str]] = set()
        registry = self.registry
        self.request_latency = Histogram(
            "ctr_request_latency_seconds",
            "Request latency by endpoint and status class.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_latency = Histogram(
            "ctr_stage_seconds",
            "Time per request in each stage of /predict: parse, encode, cache, onnxruntime.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter(
            "ctr_cache_hits", "Rows answered from the score cache.", registry=registry
        )
        self.cache_misses = Counter(
            "ctr_cache_misses", "Rows that had to be scored.", registry=registry
        )
        self.cache_entries = Gauge(
            "ctr_cache_entries",
            "Live entries in the score cache, summed over workers.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.response_cache_bytes = Gauge(
            "ctr_response_cache_bytes",
            "Bytes held by the response cache (exact repeats), summed over workers.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.scored_batch_rows = Histogram(
            "ctr_scored_batch_rows",
            "Rows per onnxruntime call (cache misses of one request).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.scoring_errors = Counter(
            "ctr_scoring_errors", "onnxruntime calls that failed.", registry=registry
        )
        self.model_info = Gauge(
            "ctr_model_info",
            "The model version each worker serves (value 1; one series per worker pid).",
            ["model_type", "version"],
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.reloads = Counter(
            "ctr_model_reloads",
            "Model loads after start-up, by outcome (failed: the old version kept serving).",
            ["outcome"],
            registry=registry,
        )
        self.encoded_rows = Counter(
            "ctr_encoded_rows",
            "Rows encoded for scoring: the denominator of ctr_field_values.",
            registry=registry,
        )
        self.field_values = Counter(
            "ctr_field_values",
            "Encoded values per field that were missing or never seen in training "
            "(a rising unseen rate is a stale vocabulary).",
            ["field", "encoded_as"],
            registry=registry,
        )
        self.predictions = Histogram(
            "ctr_prediction",
            "Distribution of the scores served (probability, or value for regression).",
            buckets=SCORE_BUCKETS,
            registry=registry,
        )

    def set_model(self, model_type: str, version: str) -> None:
        """Mark ``version`` served (1) and every version served before it not (0).

        Zeroed rather than removed: prometheus_client cannot remove a labelled series in
        multiprocess mode.
        """
        for labels in self._served:
            self.model_info.labels(*labels).set(0)
        self._served.add((model_type, version))
        self.model_info.labels(model_type=model_type, version=version).set(1)

    def exposition(self) -> bytes:
        """The text a scrape gets: every worker's values in multiprocess mode."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def mark_worker_gone() -> None:
    """Drop this worker's live gauges from the shared directory (at shutdown)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


class HealthTally:
    """Counts of one model version's traffic, kept in numpy until :meth:`flush`.

    Args:
        fields: the version's field names, in index order.
    """

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        self._lock = threading.Lock()
        self._rows = 0
        self._missing = np.zeros(len(fields), dtype=np.int64)
        self._unseen = np.zeros(len(fields), dtype=np.int64)
        self._scores = np.zeros(len(SCORE_BUCKETS) + 1, dtype=np.int64)
        self._score_sum = 0.0
        self._stages = np.zeros((len(STAGES), len(STAGE_BUCKETS) + 1), dtype=np.int64)
        self._stage_sums = [0.0] * len(STAGES)

    def add_rows(self, indices: NDArray[np.int64]) -> None:
        """Count the missing and unseen values of ``(N, F)`` encoded rows."""
        reserved = indices <= UNSEEN_INDEX  # missing = 0, unseen = 1: one compare for both
        with self._lock:
            self._rows += len(indices)
            if reserved.any():
                self._missing += (indices == MISSING_INDEX).sum(axis=0)
                self._unseen += (indices == UNSEEN_INDEX).sum(axis=0)

    def add_scores(self, scores: NDArray[np.float32]) -> None:
        with self._lock:
            if len(scores) == 1:
                value = float(scores[0])
                self._scores[bisect.bisect_left(SCORE_BUCKETS, value)] += 1
                self._score_sum += value
            else:
                slots = np.searchsorted(SCORE_BUCKETS, scores, side="left")
                self._scores += np.bincount(slots, minlength=len(self._scores))
                self._score_sum += float(scores.sum(dtype=np.float64))

    def add_stage(self, stage: int, seconds: float) -> None:
        """One request's time in ``STAGES[stage]``."""
        with self._lock:
            self._stages[stage, bisect.bisect_left(STAGE_BUCKETS, seconds)] += 1
            self._stage_sums[stage] += seconds

    def flush(self, metrics: ServiceMetrics) -> None:
        """Move the tallies into the Prometheus collectors and start again from zero."""
        with self._lock:
            rows, self._rows = self._rows, 0
            missing, self._missing = self._missing, np.zeros_like(self._missing)
            unseen, self._unseen = self._unseen, np.zeros_like(self._unseen)
            scores, self._scores = self._scores, np.zeros_like(self._scores)
            score_sum, self._score_sum = self._score_sum, 0.0
            stages, self._stages = self._stages, np.zeros_like(self._stages)
            stage_sums, self._stage_sums = self._stage_sums, [0.0] * len(STAGES)
        if rows:
            metrics.encoded_rows.inc(rows)
        for name, count in zip(self.fields, missing.tolist(), strict=True):
            if count:
                metrics.field_values.labels(field=name, encoded_as="missing").inc(count)
        for name, count in zip(self.fields, unseen.tolist(), strict=True):
            if count:
                metrics.field_values.labels(field=name, encoded_as="unseen").inc(count)
        _add_counts(metrics.predictions, scores, score_sum)
        for stage, name in enumerate(STAGES):
            _add_counts(metrics.stage_latency.labels(stage=name), stages[stage], stage_sums[stage])


def _add_counts(histogram: Histogram, counts: NDArray[np.int64], total: float) -> None:
    """Add pre-bucketed observations to a histogram.

    prometheus_client has no batch ``observe``; this adds to the same per-bucket values
    ``observe`` increments (one per upper bound, +Inf last), so the exposition, including
    multiprocess mode, is exactly what that many ``observe`` calls would give.
    """
    if not counts.any():
        return
    for value, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            value.inc(count)
    histogram._sum.inc(total)
