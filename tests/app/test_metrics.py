"""Tallies flushed into Prometheus give exactly what one collector update per value would."""

import numpy as np
from prometheus_client import generate_latest

from app.metrics import STAGES, ServiceMetrics, Tally


def _samples(metrics: ServiceMetrics, prefix: str) -> list[str]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    return sorted(line for line in lines if line.startswith(prefix) and "_created" not in line)


def test_flushed_histograms_equal_observed_ones() -> None:
    scores = np.array([0.0, 0.001, 0.0049, 0.3, 0.3, 0.5, 0.99, 1.0], dtype=np.float32)
    tallied, observed = ServiceMetrics(), ServiceMetrics()
    tally = tallied.tally
    tally.scores(scores[:1])  # the single-row path
    tally.scores(scores[1:])  # the batch path
    for value in scores.tolist():
        observed.predictions.observe(value)
    for stage, seconds in [(0, 3e-6), (1, 4e-5), (1, 4e-5), (3, 0.3), (2, 1e-4)]:
        tally.stage(stage, seconds)
        observed.stage_latency.labels(stage=STAGES[stage]).observe(seconds)
    for rows in (1, 1, 100, 5000, 20000):
        tally.scored(rows)
        observed.scored_batch_rows.observe(rows)
    for endpoint, status, seconds in [("/predict", "2xx", 1e-4), ("/model", "4xx", 0.3)]:
        tally.request(endpoint, status, seconds)
        observed.request_latency.labels(endpoint, status).observe(seconds)
    tally.lookups(3, 2)
    observed.cache_hits.inc(3)
    observed.cache_misses.inc(2)
    tallied.flush()
    assert _samples(tallied, "ctr_") == _samples(observed, "ctr_")
    tallied.flush()  # a flush moves counts once: nothing is added twice
    assert _samples(tallied, "ctr_") == _samples(observed, "ctr_")


def test_missing_and_unseen_counts_per_field() -> None:
    metrics = ServiceMetrics()
    tally = Tally()
    tally.rows("v1", ["a", "b", "c"], np.array([[0, 1, 5], [1, 1, 0], [7, 8, 9]]))
    tally.rows("v1", ["a", "b", "c"], np.array([[9, 9, 9]]))  # nothing reserved: fast path
    tally.rows("v2", ["a", "z"], np.array([[1, 1]]))  # a new version with other fields
    tally.flush(metrics)
    text = "\n".join(_samples(metrics, "ctr_"))
    assert "ctr_encoded_rows_total 5.0" in text
    assert 'ctr_field_values_total{encoded_as="missing",field="a"} 1.0' in text
    assert 'ctr_field_values_total{encoded_as="unseen",field="a"} 2.0' in text
    assert 'ctr_field_values_total{encoded_as="unseen",field="b"} 2.0' in text
    assert 'ctr_field_values_total{encoded_as="missing",field="c"} 1.0' in text
    assert 'ctr_field_values_total{encoded_as="unseen",field="z"} 1.0' in text
    assert 'encoded_as="missing",field="b"' not in text
