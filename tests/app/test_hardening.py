"""Bounded caches under a flood of distinct rows, graceful SIGTERM, and what logs never hold."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from benchmarks.harness import free_port
from tests.app.test_uvicorn import ROOT

pytest.importorskip("numpy")


def test_caches_stay_within_their_bound_under_a_flood(model_dir: Path) -> None:
    budget = 64 * 1024
    settings = Settings(model_dir=model_dir, cache_maxsize=200, response_cache_max_bytes=budget)
    with TestClient(create_app(settings)) as client:
        for start in range(0, 3000, 500):
            rows = [{"c0": f"c0_{i % 300}", "n0": float(i)} for i in range(start, start + 500)]
            assert client.post("/predict", json={"instances": rows}).status_code == 200
        for i in range(600):  # single rows, each twice: fills the response cache too
            for _ in range(2):
                client.post("/predict", json={"features": {"c1": f"c1_{i}", "n1": i / 600}})
        service = client.app.state.service
        assert len(service.cache) == 200
        assert 0.5 * budget < service.responses.nbytes <= budget
        text = client.get("/metrics").text
        assert "ctr_cache_entries 200.0" in text
        assert f"ctr_response_cache_bytes {float(service.responses.nbytes)}" in text


def test_secrets_and_payloads_stay_out_of_logs(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-4f9a1c77e0"
    marker = "payload-value-93d1"
    settings = Settings(model_dir=model_dir, reload_token=token, log_level="DEBUG")
    with TestClient(create_app(settings)) as client, caplog.at_level(logging.DEBUG):
        client.post("/predict", json={"features": {"c0": marker}})
        client.post("/predict", json={"features": {"nope": marker}})
        client.post("/predict", json={"features": {"n0": marker}})
        client.post("/explain", json={"features": {"c0": marker}})
        client.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
        client.post("/admin/reload", headers={"Authorization": f"Bearer {marker}"})
    assert caplog.records, "expected the service to log something"
    assert token not in caplog.text
    assert marker not in caplog.text


def test_sigterm_lets_the_request_in_flight_finish(model_dir: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CTR_MODEL_DIR": str(model_dir),
        "CTR_PORT": str(port),
        "CTR_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                probe = socket.create_connection(("127.0.0.1", port), timeout=1)
                probe.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("server did not start")
                time.sleep(0.2)
        time.sleep(0.5)  # lifespan: let the model finish loading
        body = b'{"features": {"c0": "c0_1", "n0": 2.5}}'
        head = (
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head + body[:10])  # the request is now in flight
            time.sleep(0.3)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            conn.sendall(body[10:])
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'"prediction"' in answer
        # uvicorn re-raises the signal once shutdown is complete, so the exit says SIGTERM
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
