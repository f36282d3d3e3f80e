"""Locust: replay one synthetic day's impressions through /predict, and click like its users.

Each row of ``LOOP_DAY_FILE`` (a file ``ctrserve synth`` wrote, with its ``label``) is sent
once, with ``X-Request-ID: <LOOP_DAY>-<row>``; when the row's label is 1, the user "clicks"
some time after the answer, and the click goes to ``LOOP_CLICKS`` (CSV: request_id, time)
as a click tracker would record it. Click delays are exponential with a mean of
``LOOP_CLICK_DELAY_S`` seconds, so some clicks come after the attribution window. The run
stops when every row has been sent.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import time

import gevent
import pyarrow.parquet as pq
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from app.prediction_log.writer import LOG_COLUMNS

DAY = os.environ.get("LOOP_DAY", "d1")
DAY_FILE = os.environ["LOOP_DAY_FILE"]
CLICKS = os.environ["LOOP_CLICKS"]
CLICK_DELAY_S = float(os.environ.get("LOOP_CLICK_DELAY_S", "600"))

_TABLE = pq.read_table(DAY_FILE)
_FEATURES = [c for c in _TABLE.column_names if c not in ("label", "p_true", *LOG_COLUMNS)]
_ROWS = _TABLE.select(_FEATURES).to_pylist()
_LABELS = _TABLE.column("label").to_pylist()
_NEXT = itertools.count()
_RANDOM = random.Random(7)
_clicks = open(CLICKS, "w", newline="")  # noqa: SIM115 -- open for the whole run
_writer = csv.writer(_clicks)
_writer.writerow(["request_id", "time"])


class Impressions(FastHttpUser):
    """A user of the day: one impression at a time, as fast as it is answered."""

    wait_time = constant(0)

    @task
    def impression(self) -> None:
        row = next(_NEXT)
        if row >= len(_ROWS):
            # quit from a greenlet of its own: the runner's stop ends this user's first
            gevent.spawn(self.environment.runner.quit)
            raise StopUser

        # a missing value is left out (a NaN is not JSON)
        features = {k: v for k, v in _ROWS[row].items() if v is not None and v == v}
        request_id = f"{DAY}-{row}"
        with self.client.post(
            "/predict",
            json={"features": features},
            headers={"X-Request-ID": request_id},
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
        if _LABELS[row] == 1:
            _writer.writerow([request_id, time.time() + _RANDOM.expovariate(1 / CLICK_DELAY_S)])


@events.test_stop.add_listener
def _close(environment: Environment, **_: object) -> None:
    _clicks.close()
