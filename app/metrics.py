"""Prometheus collectors, summed across every worker of a replica.

``python -m app`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
prometheus_client, so each worker writes its values to memory-mapped files there and
``/metrics``, whichever worker answers it, reads them all (prometheus_client's multiprocess
mode). Without that variable (tests, an app built in-process) each app keeps its own
registry, so several apps can live in one process.

Every per-request count (latency, stages, cache hits, rows per call, scores, per-field
missing and unseen values) is tallied in plain Python and numpy on the request path and
flushed into the collectors off it (by the repository poller, and before each scrape): a
multiprocess-mode collector update writes a memory-mapped file, a tally update adds to a
number, and a 1,000-row request costs the same few array operations as a single row.
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
_SMALL_DIFFERENCES = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
DIFFERENCE_BUCKETS = (*(-d for d in reversed(_SMALL_DIFFERENCES)), 0.0, *_SMALL_DIFFERENCES, 1.0)
STAGES = ("parse", "encode", "cache", "onnxruntime")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class ServiceMetrics:
    """Every collector the service exports, registered on one registry per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tally = Tally()
        self._served: set[tuple[str, str, str, str]] = set()
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
            "Time in each stage of scoring: parse, encode, cache per request; onnxruntime "
            "per call (one call scores the misses of every request it took).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter(
            "ctr_cache_hits",
            "Rows answered from the score cache.",
            ["model", "version"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "ctr_cache_misses",
            "Rows that had to be scored.",
            ["model", "version"],
            registry=registry,
        )
        self.cache_entries = Gauge(
            "ctr_cache_entries",
            "Entries in each model's score cache, summed over workers.",
            ["model"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.cache_budget = Gauge(
            "ctr_cache_budget_entries",
            "Entries each model's score cache may hold, summed over workers.",
            ["model"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.model_bytes = Gauge(
            "ctr_model_loaded_bytes",
            "Bytes of the ONNX files of each model's loaded versions (one worker's: the largest).",
            ["model"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_ready = Gauge(
            "ctr_model_ready",
            "1 while every worker has a version of the model loaded; 0 if one has none.",
            ["model"],
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.queued_rows = Gauge(
            "ctr_queued_rows",
            "Cache misses waiting for a scoring thread, summed over workers.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.scored_batch_rows = Histogram(
            "ctr_scored_batch_rows",
            "Rows per onnxruntime call (the cache misses of the requests it took).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.scoring_errors = Counter(
            "ctr_scoring_errors", "onnxruntime calls that failed.", registry=registry
        )
        self.model_info = Gauge(
            "ctr_model_info",
            "The versions each worker has loaded (value 1; one series per worker pid); "
            "serves: default, the labels, split, shadow.",
            ["model", "version", "model_type", "serves"],
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.reloads = Counter(
            "ctr_model_reloads",
            "Model changes after start-up, by outcome (failed: the old version kept serving).",
            ["model", "outcome"],
            registry=registry,
        )
        self.encoded_rows = Counter(
            "ctr_encoded_rows",
            "Rows encoded for scoring: the denominator of ctr_field_values.",
            ["model", "version"],
            registry=registry,
        )
        self.field_values = Counter(
            "ctr_field_values",
            "Encoded values per field that were missing or never seen in training "
            "(a rising unseen rate is a stale vocabulary).",
            ["model", "version", "field", "encoded_as"],
            registry=registry,
        )
        self.predictions = Histogram(
            "ctr_prediction",
            "Distribution of the scores served (probability, or value for regression).",
            ["model", "version"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.shadow_requests = Counter(
            "ctr_shadow_requests",
            "Requests a shadow version was asked to score again, by outcome (scored; "
            "dropped: its queue was full; failed).",
            ["model", "shadow", "outcome"],
            registry=registry,
        )
        self.shadow_difference = Histogram(
            "ctr_shadow_score_difference",
            "Shadow score minus served score, per row, by model and version pair.",
            ["model", "version", "shadow"],
            buckets=DIFFERENCE_BUCKETS,
            registry=registry,
        )

        self.log_records = Counter(
            "ctr_prediction_log_records",
            "Records of scored rows written to the prediction log, in published files.",
            registry=registry,
        )
        self.log_files = Counter(
            "ctr_prediction_log_files", "Prediction log files published.", registry=registry
        )
        self.log_dropped = Counter(
            "ctr_prediction_log_dropped",
            "Prediction log records dropped: the writer's queue was full, or a write failed.",
            registry=registry,
        )

    def log_written(self, rows: int, files: int) -> None:
        """Count a published prediction log file (on the log's reader thread, as the writer
        process reports it)."""
        self.log_records.inc(rows)
        self.log_files.inc(files)

    def observe_call(self, rows: int, seconds: float, failed: bool) -> None:
        """Count one onnxruntime call of the batcher (on the event loop)."""
        self.tally.stage(STAGES.index("onnxruntime"), seconds)
        self.tally.scored(rows)
        if failed:
            self.scoring_errors.inc()

    def set_model(self, model: str, loaded: Sequence[tuple[str, str, str]]) -> None:
        """Mark ``model``'s loaded ``(version, model_type, serves)`` 1 and every series of
        it before them 0.

        Zeroed rather than removed: prometheus_client cannot remove a labelled series in
        multiprocess mode.
        """
        for labels in self._served:
            if labels[0] == model:
                self.model_info.labels(*labels).set(0)
        for version, model_type, serves in loaded:
            self._served.add((model, version, model_type, serves))
            self.model_info.labels(model, version, model_type, serves).set(1)

    def flush(self) -> None:
        """Move this worker's tallied counts into the collectors."""
        self.tally.flush(self)

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


class _Histogram:
    """Bucket counts and a sum, as a Prometheus histogram keeps them, in plain Python."""

    __slots__ = ("bounds", "counts", "edges", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        # searchsorted on a tuple converts it to an array on every call: ~4.6% of the event
        # loop's time on 90%-hit batches of the production NFFM (py-spy, two calls a batch).
        self.edges = np.asarray(bounds, dtype=np.float64)
        self.counts = [0] * (len(bounds) + 1)  # one per upper bound, then +Inf
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_many(self, values: NDArray[np.float32]) -> None:
        slots = np.searchsorted(self.edges, values, side="left")
        for slot, count in enumerate(np.bincount(slots, minlength=len(self.counts)).tolist()):
            self.counts[slot] += count
        self.total += float(values.sum(dtype=np.float64))

    def flush_into(self, histogram: Histogram) -> None:
        """Add these observations to ``histogram`` exactly as that many ``observe`` calls would.

        prometheus_client has no batch ``observe``; this increments the same per-bucket values
        ``observe`` does (one per upper bound, +Inf last), which multiprocess mode also reads.
        """
        if not any(self.counts):
            return
        for value, count in zip(histogram._buckets, self.counts, strict=True):
            if count:
                value.inc(count)
        histogram._sum.inc(self.total)


class _VersionCounts:
    """One model version's counts: cache hits and misses, scores, missing and unseen values
    per field, and its shadow's outcomes and score differences."""

    __slots__ = (
        "differences",
        "fields",
        "hits",
        "misses",
        "missing",
        "rows",
        "scores",
        "shadow",
        "shadowed",
        "unseen",
    )

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        self.hits = self.misses = self.rows = 0
        self.missing = np.zeros(len(fields), dtype=np.int64)
        self.unseen = np.zeros(len(fields), dtype=np.int64)
        self.scores = _Histogram(SCORE_BUCKETS)
        self.shadow = ""  # the shadow version the differences are against
        self.shadowed: dict[tuple[str, str], int] = {}  # (shadow version, outcome) -> requests
        self.differences = _Histogram(DIFFERENCE_BUCKETS)


class Tally:
    """This worker's per-request counts since the last :meth:`flush`.

    The request path adds to plain ints and lists under one uncontended lock (about a
    microsecond a call); :meth:`flush`, run by the repository poller and before each scrape,
    moves them into the Prometheus collectors, whose updates cost several microseconds each
    in multiprocess mode.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fresh()

    def _fresh(self) -> None:
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self._stages = [_Histogram(STAGE_BUCKETS) for _ in STAGES]
        self._batch_rows = _Histogram(BATCH_BUCKETS)
        self._versions: dict[tuple[str, str], _VersionCounts] = {}

    def request(self, endpoint: str, status: str, seconds: float) -> None:
        with self._lock:
            histogram = self._latency.get((endpoint, status))
            if histogram is None:
                histogram = self._latency[endpoint, status] = _Histogram(LATENCY_BUCKETS)
            histogram.add(seconds)

    def stage(self, stage: int, seconds: float) -> None:
        """One request's time in ``STAGES[stage]``, or one onnxruntime call's."""
        with self._lock:
            self._stages[stage].add(seconds)

    def scored(self, rows: int) -> None:
        """One onnxruntime call of ``rows`` rows."""
        with self._lock:
            self._batch_rows.add(rows)

    def _counts(self, model: str, version: str, fields: Sequence[str]) -> _VersionCounts:
        """Called under the lock."""
        counts = self._versions.get((model, version))
        if counts is None:
            counts = self._versions[model, version] = _VersionCounts(fields)
        return counts

    def rows(
        self, model: str, version: str, fields: Sequence[str], indices: NDArray[np.int64]
    ) -> None:
        """Count the missing and unseen values of ``(N, F)`` rows encoded by ``version``."""
        # missing = 0, unseen = 1: one compare for both; ufunc calls, not ndarray.any() and
        # .sum(), whose Python wrappers cost a single row more than the counting
        reserved = np.count_nonzero(indices <= UNSEEN_INDEX)
        with self._lock:
            counts = self._counts(model, version, fields)
            counts.rows += len(indices)
            if reserved:
                counts.missing += np.add.reduce(indices == MISSING_INDEX, axis=0)
                counts.unseen += np.add.reduce(indices == UNSEEN_INDEX, axis=0)

    def served(
        self,
        model: str,
        version: str,
        fields: Sequence[str],
        hits: int,
        scores: NDArray[np.float32],
    ) -> None:
        """A request's scores, ``hits`` of them from the cache."""
        with self._lock:
            counts = self._counts(model, version, fields)
            counts.hits += hits
            counts.misses += len(scores) - hits
            if len(scores) == 1:
                counts.scores.add(float(scores[0]))
            else:
                counts.scores.add_many(scores)

    def shadowed(
        self,
        model: str,
        version: str,
        fields: Sequence[str],
        shadow: str,
        outcome: str,
        differences: NDArray[np.float32] | None = None,
        requests: int = 1,
    ) -> None:
        """``requests`` requests shadowed by version ``shadow``: their outcome, and their
        rows' score differences (shadow minus served) when they were scored."""
        with self._lock:
            counts = self._counts(model, version, fields)
            key = (shadow, outcome)
            counts.shadowed[key] = counts.shadowed.get(key, 0) + requests
            if differences is not None:
                if counts.shadow != shadow:  # a new shadow: its differences stand apart
                    counts.shadow, counts.differences = shadow, _Histogram(DIFFERENCE_BUCKETS)
                counts.differences.add_many(differences)

    def flush(self, metrics: ServiceMetrics) -> None:
        """Move the counts into the collectors and start again from zero."""
        with self._lock:
            latency, stages, batch_rows = self._latency, self._stages, self._batch_rows
            versions = self._versions
            self._fresh()
        for (endpoint, status), histogram in latency.items():
            histogram.flush_into(metrics.request_latency.labels(endpoint, status))
        for name, histogram in zip(STAGES, stages, strict=True):
            histogram.flush_into(metrics.stage_latency.labels(stage=name))
        batch_rows.flush_into(metrics.scored_batch_rows)
        for (model, version), counts in versions.items():
            if counts.hits:
                metrics.cache_hits.labels(model, version).inc(counts.hits)
            if counts.misses:
                metrics.cache_misses.labels(model, version).inc(counts.misses)
            counts.scores.flush_into(metrics.predictions.labels(model, version))
            if counts.rows:
                metrics.encoded_rows.labels(model, version).inc(counts.rows)
            for kind, per_field in (("missing", counts.missing), ("unseen", counts.unseen)):
                for name, count in zip(counts.fields, per_field.tolist(), strict=True):
                    if count:
                        metrics.field_values.labels(model, version, name, kind).inc(count)
            for (shadow, outcome), requests in counts.shadowed.items():
                metrics.shadow_requests.labels(model, shadow, outcome).inc(requests)
            if counts.shadow:
                counts.differences.flush_into(
                    metrics.shadow_difference.labels(model, version, counts.shadow)
                )
