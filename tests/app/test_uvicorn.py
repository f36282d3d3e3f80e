"""One real uvicorn process on 127.0.0.1, configured through the environment."""

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from support.servers import server as start_server

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(model_dir: Path) -> Iterator[str]:
    """`python -m app` as a user starts it, configured by CTR_* variables only."""
    with start_server([sys.executable, "-m", "app"], {"CTR_MODEL_DIR": str(model_dir)}) as base:
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
    assert "ctr_cache_hits_total 1.0" in httpx.get(f"{server}/metrics", timeout=5).text
