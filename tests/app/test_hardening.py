"""Bounded caches under a flood of distinct rows, graceful SIGTERM, and what logs never hold."""

import logging
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from support.prometheus import metric
from support.shutdown import sigterm_during_a_request


def test_the_cache_stays_within_its_bound_under_a_flood(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, cache_maxsize=200)
    with TestClient(create_app(settings)) as client:
        for start in range(0, 3000, 500):
            rows = [{"c0": f"c0_{i % 300}", "n0": float(i)} for i in range(start, start + 500)]
            for _ in range(2):  # a batch row is stored from its second sight
                assert client.post("/predict", json={"instances": rows}).status_code == 200
        for i in range(600):  # single rows, stored at first sight
            client.post("/predict", json={"features": {"c1": f"c1_{i}", "n1": i / 600}})
        assert len(client.app.state.service.model().cache) == 200
        text = client.get("/metrics").text
        assert metric(text, "ctr_cache_entries", model="nffm") == 200.0


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
    outcome = sigterm_during_a_request(model_dir)
    assert outcome.answer.startswith(b"HTTP/1.1 200"), outcome.answer[:200]
    assert b'"prediction"' in outcome.answer
    # uvicorn re-raises the signal once shutdown is complete, so the exit says SIGTERM
    assert outcome.exit_code in (0, -signal.SIGTERM)
