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
    tally.served("ctr", "v1", ["a"], 1, scores[:1])  # the single-row path
    tally.served("ctr", "v1", ["a"], 2, scores[1:])  # the batch path
    for value in scores.tolist():
        observed.predictions.labels("ctr", "v1").observe(value)
    tally.served("cvr", "v9", ["b"], 0, scores[:2])  # another model: its own series
    for value in scores[:2].tolist():
        observed.predictions.labels("cvr", "v9").observe(value)
    observed.cache_misses.labels("cvr", "v9").inc(2)
    for stage, seconds in [(0, 3e-6), (1, 4e-5), (1, 4e-5), (3, 0.3), (2, 1e-4)]:
        tally.stage(stage, seconds)
        observed.stage_latency.labels(stage=STAGES[stage]).observe(seconds)
    for rows in (1, 1, 100, 5000, 20000):
        tally.scored(rows)
        observed.scored_batch_rows.observe(rows)
    for endpoint, status, seconds in [("/predict", "2xx", 1e-4), ("/model", "4xx", 0.3)]:
        tally.request(endpoint, status, seconds)
        observed.request_latency.labels(endpoint, status).observe(seconds)
    observed.cache_hits.labels("ctr", "v1").inc(3)
    observed.cache_misses.labels("ctr", "v1").inc(5)
    differences = np.array([-0.3, 0.0, 0.004, 0.2], dtype=np.float32)
    tally.shadowed("ctr", "v1", ["a"], "v2", "scored", differences)
    tally.shadowed("ctr", "v1", ["a"], "v2", "dropped")
    for value in differences.tolist():
        observed.shadow_difference.labels("ctr", "v1", "v2").observe(value)
    observed.shadow_requests.labels("ctr", "v2", "scored").inc()
    observed.shadow_requests.labels("ctr", "v2", "dropped").inc()
    tallied.flush()
    assert _samples(tallied, "ctr_") == _samples(observed, "ctr_")
    tallied.flush()  # a flush moves counts once: nothing is added twice
    assert _samples(tallied, "ctr_") == _samples(observed, "ctr_")


def test_missing_and_unseen_counts_per_field() -> None:
    metrics = ServiceMetrics()
    tally = Tally()
    tally.rows("ctr", "v1", ["a", "b", "c"], np.array([[0, 1, 5], [1, 1, 0], [7, 8, 9]]))
    tally.rows("ctr", "v1", ["a", "b", "c"], np.array([[9, 9, 9]]))  # nothing reserved
    tally.rows("ctr", "v2", ["a", "z"], np.array([[1, 1]]))  # a new version, other fields
    tally.flush(metrics)
    text = "\n".join(_samples(metrics, "ctr_"))
    assert 'ctr_encoded_rows_total{model="ctr",version="v1"} 4.0' in text
    assert 'ctr_encoded_rows_total{model="ctr",version="v2"} 1.0' in text

    def values(version: str, field: str, kind: str) -> str:
        return (
            f'ctr_field_values_total{{encoded_as="{kind}",field="{field}",'
            f'model="ctr",version="{version}"}}'
        )

    assert f"{values('v1', 'a', 'missing')} 1.0" in text
    assert f"{values('v1', 'a', 'unseen')} 1.0" in text
    assert f"{values('v1', 'b', 'unseen')} 2.0" in text
    assert f"{values('v1', 'c', 'missing')} 1.0" in text
    assert f"{values('v2', 'a', 'unseen')} 1.0" in text
    assert f"{values('v2', 'z', 'unseen')} 1.0" in text
    assert values("v1", "b", "missing") not in text
