"""Several uvicorn workers behind one port serve one version, and /metrics counts them all.

The bug this guards: each worker had its own registry, so a reload reached one worker and
about half of all fresh connections kept the old model indefinitely.
"""

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from support.faults import second_version
from support.prometheus import metric, series
from support.servers import server as start_server

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI


AUTH = {"Authorization": "Bearer fleet-token"}
ROW = {"features": {"c0": "c0_4", "n0": 2.0}}


@pytest.fixture
def fleet(repository: Path, tmp_path: Path) -> Iterator[str]:
    env = {
        "CTR_PUBLISH_ROOT": str(tmp_path),
        "CTR_MODEL_REPOSITORY": str(repository),
        "CTR_WORKERS": "2",
        "CTR_POLL_INTERVAL_S": "0.5",
        "CTR_RELOAD_TOKEN": "fleet-token",
    }
    with start_server([sys.executable, "-m", "app"], env) as base:
        yield base


def _fresh(base: str) -> dict[str, object]:
    """One request on a new connection: the kernel hands it to either worker."""
    response = httpx.post(f"{base}/predict", json=ROW, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_one_reload_reaches_every_worker(fleet: str, repository: Path, tmp_path: Path) -> None:
    sent = 0
    deadline = time.monotonic() + 30
    text = ""
    while len(series(text, "ctr_model_info")) < 2:  # both workers are up
        assert time.monotonic() < deadline, text
        _fresh(fleet)
        sent += 1
        text = httpx.get(f"{fleet}/metrics", timeout=10).text
    old = _fresh(fleet)["model_version"]
    sent += 1

    reload = httpx.post(
        f"{fleet}/admin/reload",
        headers=AUTH,
        json={"model_dir": str(second_version(repository, tmp_path / "v2"))},
        timeout=60,
    )
    assert reload.status_code == 200, reload.text
    new = reload.json()["version"]
    assert new != old
    started = time.monotonic()
    streak = 0
    while streak < 30:  # thirty fresh connections in a row answered by the new version
        assert time.monotonic() - started < 10, "a worker still serves the old version"
        streak = streak + 1 if _fresh(fleet)["model_version"] == new else 0
        sent += 1

    # Each worker flushes its counts every poll interval (0.5 s here), so a scrape is at
    # most that far behind; after it, the totals are exact.
    time.sleep(1.0)
    text = httpx.get(f"{fleet}/metrics", timeout=10).text
    served = [
        labels
        for labels in series(text, "ctr_model_info")
        if metric(text, "ctr_model_info", **labels) == 1.0
    ]
    assert len({labels["pid"] for labels in served}) == 2
    assert {labels["version"] for labels in served} == {new}
    answered = metric(text, "ctr_request_latency_seconds_count", endpoint="/predict", status="2xx")
    assert answered == sent
    assert metric(text, "ctr_cache_hits_total") + metric(text, "ctr_cache_misses_total") == sent
