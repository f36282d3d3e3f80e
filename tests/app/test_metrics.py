"""Tallies flushed into Prometheus give exactly what one observe per value would."""

import numpy as np
from prometheus_client import generate_latest

from app.metrics import STAGES, HealthTally, ServiceMetrics


def _samples(metrics: ServiceMetrics, prefix: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    lines = text.splitlines()
    return sorted(line for line in lines if line.startswith(prefix) and "_created" not in line)


def test_flushed_scores_equal_observed_scores() -> None:
    scores = np.array([0.0, 0.001, 0.0049, 0.3, 0.3, 0.5, 0.99, 1.0], dtype=np.float32)
    tallied, observed = ServiceMetrics(), ServiceMetrics()
    tally = HealthTally(["a"])
    tally.add_scores(scores[:1])  # the single-row path
    tally.add_scores(scores[1:])  # the batch path
    tally.flush(tallied)
    for value in scores.tolist():
        observed.predictions.observe(value)
    assert _samples(tallied, "ctr_prediction") == _samples(observed, "ctr_prediction")


def test_flushed_stages_equal_observed_stages() -> None:
    tallied, observed = ServiceMetrics(), ServiceMetrics()
    tally = HealthTally(["a"])
    for stage, seconds in [(0, 3e-6), (1, 4e-5), (1, 4e-5), (3, 0.3), (2, 1e-4)]:
        tally.add_stage(stage, seconds)
        observed.stage_latency.labels(stage=STAGES[stage]).observe(seconds)
    tally.flush(tallied)
    assert _samples(tallied, "ctr_stage_seconds") == _samples(observed, "ctr_stage_seconds")


def test_missing_and_unseen_counts_per_field() -> None:
    metrics = ServiceMetrics()
    tally = HealthTally(["a", "b", "c"])
    tally.add_rows(np.array([[0, 1, 5], [1, 1, 0], [7, 8, 9]], dtype=np.int64))
    tally.add_rows(np.array([[9, 9, 9]], dtype=np.int64))  # nothing reserved: the fast path
    tally.flush(metrics)
    text = "\n".join(_samples(metrics, "ctr_"))
    assert "ctr_encoded_rows_total 4.0" in text
    assert 'ctr_field_values_total{encoded_as="missing",field="a"} 1.0' in text
    assert 'ctr_field_values_total{encoded_as="unseen",field="a"} 1.0' in text
    assert 'ctr_field_values_total{encoded_as="unseen",field="b"} 2.0' in text
    assert 'ctr_field_values_total{encoded_as="missing",field="c"} 1.0' in text
    assert 'field="b",encoded_as="missing"' not in text
    tally.flush(metrics)  # a flush moves counts once: nothing is added twice
    assert "ctr_encoded_rows_total 4.0" in "\n".join(_samples(metrics, "ctr_"))
