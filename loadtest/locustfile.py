"""Locust traffic for ctrserve: Zipf-repeating single rows, batches, some unseen values.

Run it headless and bounded (see README, "Load test"), e.g.::

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s \
        --host http://127.0.0.1:8000 --csv loadtest/results/run

Knobs (environment): ``CTR_MODEL_REPOSITORY`` (whose spec.json the rows come from),
``LOADTEST_POOL_SIZE`` (distinct rows), ``LOADTEST_ZIPF`` (repeat skew: higher = more cache
hits), ``LOADTEST_BATCH_SIZE`` and ``LOADTEST_BATCH_SHARE`` (fraction of batch requests),
``LOADTEST_V2_SHARE`` (fraction of requests sent as Open Inference Protocol batches, the
binary tensor form Triton's clients send) and ``CTR_MODEL_NAME`` (the V2 model name;
default: the repository's directory name).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from locust import FastHttpUser, between, events, task
from locust.env import Environment

from app.repository.store import ModelRepository
from support.payloads import load_spec, random_rows, v2_binary_body, zipf_stream

MODEL_DIR = Path(os.environ.get("CTR_MODEL_REPOSITORY", "models/default"))
POOL_SIZE = int(os.environ.get("LOADTEST_POOL_SIZE", "200000"))
ZIPF = float(os.environ.get("LOADTEST_ZIPF", "1.0"))
BATCH_SIZE = int(os.environ.get("LOADTEST_BATCH_SIZE", "50"))
BATCH_SHARE = float(os.environ.get("LOADTEST_BATCH_SHARE", "0.1"))
V2_SHARE = float(os.environ.get("LOADTEST_V2_SHARE", "0.1"))
MODEL_NAME = os.environ.get("CTR_MODEL_NAME") or ModelRepository(MODEL_DIR).name

_SPEC = load_spec(MODEL_DIR)
_POOL = random_rows(_SPEC, POOL_SIZE, seed=11)
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

    @task(max(1, round(100 * V2_SHARE)))
    def infer_v2(self) -> None:
        """A batch over the Open Inference Protocol, binary tensors in and out."""
        rows = [_POOL[next(_ORDER)] for _ in range(BATCH_SIZE)]
        body, header_length = v2_binary_body(_SPEC, rows)
        with self.client.post(
            f"/v2/models/{MODEL_NAME}/infer",
            data=body,  # type: ignore[arg-type]  # bytes go as they are (its docstring)
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(header_length),
            },
            name="/v2/models/[name]/infer [batch, binary]",
            catch_response=True,
        ) as response:
            length = int(response.headers.get("Inference-Header-Content-Length") or 0)
            if (
                response.status_code != 200
                or len(response.content or b"") - length != 4 * BATCH_SIZE
            ):
                response.failure(f"status {response.status_code}: {response.text[:200]}")


@events.quitting.add_listener
def _fail_on_any_error(environment: Environment, **_: object) -> None:
    """Exit non-zero when any request failed, so a load test can gate a release."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
