"""Request limits: body size, batch size, value length, timeout -- each a setting."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import TimeoutMiddleware, create_app


def _client(model_dir: Path, **overrides: object) -> TestClient:
    return TestClient(create_app(Settings(model_dir=model_dir, **overrides)))


def test_body_over_the_limit_is_413(model_dir: Path) -> None:
    with _client(model_dir, max_body_bytes=2048) as client:
        rows = [{"c0": "c0_1", "n0": 1.5}] * 200
        response = client.post("/predict", json={"instances": rows})
        assert response.status_code == 413
        assert client.post("/predict", json={"features": rows[0]}).status_code == 200


def test_batch_over_the_limit_is_413(model_dir: Path) -> None:
    with _client(model_dir, max_batch_size=3, inline_max_rows=3) as client:
        response = client.post("/predict", json={"instances": [{}] * 4})
        assert response.status_code == 413
        assert "CTR_MAX_BATCH_SIZE" in response.json()["detail"]


def test_long_string_is_422_naming_the_field(model_dir: Path) -> None:
    with _client(model_dir, max_value_chars=16) as client:
        response = client.post("/predict", json={"features": {"c2": "x" * 17}})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][-1] == "c2"
        assert "exceeds 16" in response.text
        numeric = client.post("/predict", json={"features": {"n0": "1" * 17}})
        assert numeric.status_code == 422
        assert client.post("/predict", json={"features": {"c2": "x" * 16}}).status_code == 200


def test_slow_request_gets_504() -> None:
    slow = FastAPI()

    @slow.get("/slow")
    async def sleepy() -> dict[str, str]:
        await asyncio.sleep(1.0)
        return {"status": "late"}

    slow.add_middleware(TimeoutMiddleware, timeout_s=0.05)
    with TestClient(slow) as client:
        response = client.get("/slow")
    assert response.status_code == 504
    assert "0.05s" in response.json()["detail"]


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _where_scored(client: TestClient, rows: list[dict[str, object]]) -> list[bool]:
    """POST ``rows``; whether each onnxruntime call ran on the event loop."""
    scorer = client.app.state.service.registry.current
    score, places = scorer.score_indices, []

    def watched(indices: np.ndarray) -> np.ndarray:
        places.append(_on_event_loop())
        return score(indices)

    scorer.score_indices = watched
    try:
        assert client.post("/predict", json={"instances": rows}).status_code == 200
    finally:
        scorer.score_indices = score
    return places


def test_a_batch_too_costly_for_the_event_loop_is_scored_in_a_thread(model_dir: Path) -> None:
    rows = [{"c0": "c0_1"}, {"c0": "c0_2"}]
    with _client(model_dir) as client:
        assert client.app.state.service.registry.current.row_seconds > 0  # timed at load
        assert _where_scored(client, rows) == [True]  # the small test model: cheap rows
    with _client(model_dir, inline_max_ms=1e-6) as client:
        assert _where_scored(client, rows) == [False]
    with _client(model_dir, inline_max_rows=1) as client:  # too many rows to even encode inline
        assert _where_scored(client, rows) == [False]


def test_only_the_misses_of_a_batch_are_scored(model_dir: Path) -> None:
    rows = [{"c0": f"c0_{i}"} for i in range(8)]
    with _client(model_dir, inline_max_ms=1e-6) as client:
        first = client.post("/predict", json={"instances": rows}).json()
        for _ in range(2):  # a batch row is cached from its second sight on
            client.post("/predict", json={"instances": rows[:4]})
        scorer = client.app.state.service.registry.current
        score, scored = scorer.score_indices, []
        scorer.score_indices = lambda indices: scored.append(len(indices)) or score(indices)
        again = client.post("/predict", json={"instances": rows}).json()
        scorer.score_indices = score
    assert scored == [4]
    assert again["cache_hits"] == 4
    assert again["predictions"] == pytest.approx(first["predictions"])
