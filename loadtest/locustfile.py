"""Locust traffic for ctrserve: Zipf-repeating single rows, batches, some unseen values.

Run it headless and bounded (see README, "Load test"), e.g.::

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s \
        --host http://127.0.0.1:8000 --csv loadtest/results/run

Knobs (environment): ``CTR_MODEL_DIR`` (whose spec.json the rows come from),
``LOADTEST_POOL_SIZE`` (distinct rows), ``LOADTEST_ZIPF`` (repeat skew: higher = more cache
hits), ``LOADTEST_BATCH_SIZE`` and ``LOADTEST_BATCH_SHARE`` (fraction of batch requests).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from locust import FastHttpUser, between, events, task
from locust.env import Environment

from loadtest.payloads import load_spec, random_rows, zipf_stream

MODEL_DIR = Path(os.environ.get("CTR_MODEL_DIR", "models/default"))
POOL_SIZE = int(os.environ.get("LOADTEST_POOL_SIZE", "200000"))
ZIPF = float(os.environ.get("LOADTEST_ZIPF", "1.0"))
BATCH_SIZE = int(os.environ.get("LOADTEST_BATCH_SIZE", "50"))
BATCH_SHARE = float(os.environ.get("LOADTEST_BATCH_SHARE", "0.1"))

_POOL = random_rows(load_spec(MODEL_DIR), POOL_SIZE, seed=11)
_ORDER = itertools.cycle(zipf_stream(POOL_SIZE, 200_000, ZIPF, seed=12).tolist())


class ScoringUser(FastHttpUser):
    """One client: mostly single-row predictions, sometimes a batch."""

    wait_time = between(0.0, 0.01)

    @task(max(1, round(100 * (1 - BATCH_SHARE))))
    def predict_one(self) -> None:
        row = _POOL[next(_ORDER)]
        with self.client.post("/predict", json={"features": row}, catch_response=True) as response:
            if response.status_code != 200 or "prediction" not in (response.json() or {}):
                response.failure(f"status {response.status_code}: {response.text[:200]}")

    @task(max(1, round(100 * BATCH_SHARE)))
    def predict_batch(self) -> None:
        rows = [_POOL[next(_ORDER)] for _ in range(BATCH_SIZE)]
        with self.client.post(
            "/predict", json={"instances": rows}, name="/predict [batch]", catch_response=True
        ) as response:
            body = response.json() if response.status_code == 200 else {}
            if len(body.get("predictions", ())) != BATCH_SIZE:
                response.failure(f"status {response.status_code}: {response.text[:200]}")


@events.quitting.add_listener
def _fail_on_any_error(environment: Environment, **_: object) -> None:
    """Exit non-zero when any request failed, so a load test can gate a release."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
