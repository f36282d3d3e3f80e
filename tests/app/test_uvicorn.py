"""One real uvicorn process on 127.0.0.1, configured through the environment."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from benchmarks.harness import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(model_dir: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "CTR_MODEL_DIR": str(model_dir),
        "CTR_PORT": str(port),
        "CTR_HOST": "127.0.0.1",
        "CTR_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("uvicorn did not become ready in 60 s")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_real_server_predicts_and_caches(server: str) -> None:
    payload = {"features": {"c0": "c0_2", "n0": 4.0}}
    first = httpx.post(f"{server}/predict", json=payload, timeout=5).json()
    second = httpx.post(f"{server}/predict", json=payload, timeout=5).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert (
        httpx.post(f"{server}/predict", json={"features": {"x": 1}}, timeout=5).status_code == 422
    )
    assert "ctr_cache_hits_total 1.0" in httpx.get(f"{server}/metrics", timeout=5).text
