"""One real uvicorn process on 127.0.0.1, configured through the environment."""

import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest

from support.prometheus import metric
from support.servers import cache_counts
from support.servers import server as start_server

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(model_dir: Path) -> Iterator[str]:
    """`python -m app` as a user starts it, configured by CTR_* variables only."""
    with start_server(
        [sys.executable, "-m", "app"], {"CTR_MODEL_REPOSITORY": str(model_dir)}
    ) as base:
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        yield base


def test_real_server_predicts_and_caches(server: str) -> None:
    payload = {"features": {"c0": "c0_2", "n0": 4.0}}
    first = httpx.post(f"{server}/predict", json=payload, timeout=5).json()
    second = httpx.post(f"{server}/predict", json=payload, timeout=5).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert (
        httpx.post(f"{server}/predict", json={"features": {"x": 1}}, timeout=5).status_code == 422
    )
    text = httpx.get(f"{server}/metrics", timeout=5).text
    assert metric(text, "ctr_cache_hits_total", model="nffm") == 1.0
    assert cache_counts(server) == (1.0, 1.0)  # what the benchmarks read: every label summed


def _post_in_two_parts(base: str, body: bytes) -> tuple[int, dict[str, object]]:
    """POST /predict sending the body's second half 0.2 s after its first, so the server
    reads it in two ASGI messages."""
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)

    def halves() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        time.sleep(0.2)
        yield body[len(body) // 2 :]

    headers = {"content-type": "application/json", "content-length": str(len(body))}
    connection.request("POST", "/predict", body=halves(), headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def test_each_event_loop_serves_the_same_scores(model_dir: Path) -> None:
    """CTR_EVENT_LOOP picks the loop each worker runs; the answers do not depend on it."""
    payload = {"instances": [{"c0": "c0_2", "n0": 4.0}, {"c0": "never-seen"}]}
    answers = []
    for loop in ("asyncio", "uvloop"):
        env = {"CTR_MODEL_REPOSITORY": str(model_dir), "CTR_EVENT_LOOP": loop}
        with start_server([sys.executable, "-m", "app"], env) as base:
            served = httpx.post(f"{base}/predict", json=payload, timeout=5)
        assert served.status_code == 200, served.text
        answers.append(served.json()["predictions"])
    assert answers[0] == answers[1]


def test_a_body_that_arrives_in_parts_is_answered_alike(server: str) -> None:
    rows = [{"c0": f"c0_{i}", "n0": float(i)} for i in range(40)]
    whole = httpx.post(f"{server}/predict", json={"instances": rows}, timeout=5).json()
    status, parts = _post_in_two_parts(server, json.dumps({"instances": rows}).encode())
    assert status == 200
    assert parts["predictions"] == whole["predictions"]
    bad = json.dumps({"instances": [rows[0], 3]}).encode()
    status, problem = _post_in_two_parts(server, bad)
    direct = httpx.post(f"{server}/predict", content=bad, timeout=5)
    assert (status, problem) == (direct.status_code, direct.json())
    assert problem["detail"][0]["msg"].endswith("at `$.instances[1]`")


def test_a_server_stopped_by_sigterm_removes_its_metrics_directory(
    model_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM is how Kubernetes, systemd and `kill` stop a server: the Prometheus
    directory it made for its workers goes with it."""

    def made() -> list[Path]:
        return list(tmp_path.glob("ctrserve-metrics-*"))

    env = {"CTR_MODEL_REPOSITORY": str(model_dir), "TMPDIR": str(tmp_path)}
    with start_server([sys.executable, "-m", "app"], env):  # ended by SIGTERM
        assert len(made()) == 1
    assert made() == []
