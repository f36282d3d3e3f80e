"""Request limits: body size, batch size, value length, timeout -- each a setting."""

import asyncio
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.middleware import RequestGuard
from app.core.config import Settings
from app.main import create_app
from app.metrics import ServiceMetrics


def _client(model_dir: Path, **overrides: object) -> TestClient:
    return TestClient(create_app(Settings(model_dir=model_dir, **overrides)))


def test_body_over_the_limit_is_413(model_dir: Path) -> None:
    with _client(model_dir, max_body_bytes=2048) as client:
        rows = [{"c0": "c0_1", "n0": 1.5}] * 200
        response = client.post("/predict", json={"instances": rows})
        assert response.status_code == 413
        assert client.post("/predict", json={"features": rows[0]}).status_code == 200


def test_a_body_over_the_limit_gets_each_protocols_error_body(model_dir: Path) -> None:
    with _client(model_dir, max_body_bytes=2048) as client:
        big = b"x" * 4096
        v2 = client.post("/v2/models/nffm/infer", content=big)
        assert v2.status_code == 413
        assert "CTR_MAX_BODY_BYTES" in v2.json()["error"]  # the Open Inference Protocol's shape

        def chunks():  # no Content-Length: the limit is found while the body streams in
            for _ in range(4):
                yield b"x" * 1024

        streamed = client.post("/v2/models/nffm/infer", content=chunks())
        assert streamed.status_code == 413
        assert "error" in streamed.json()
        predict = client.post("/predict", content=chunks())
        assert predict.status_code == 413
        assert "CTR_MAX_BODY_BYTES" in predict.json()["detail"]
        assert client.get("/v2/health/ready").status_code == 200


def test_batch_over_the_limit_is_413(model_dir: Path) -> None:
    with _client(model_dir, max_batch_size=3) as client:
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

    slow.add_middleware(
        RequestGuard, metrics=ServiceMetrics(), max_inflight=8, max_bytes=1024, timeout_s=0.05
    )
    with TestClient(slow) as client:
        response = client.get("/slow")
    assert response.status_code == 504
    assert "0.05s" in response.json()["detail"]


def test_only_the_misses_of_a_batch_are_scored(model_dir: Path) -> None:
    rows = [{"c0": f"c0_{i}"} for i in range(8)]
    with _client(model_dir) as client:
        first = client.post("/predict", json={"instances": rows}).json()
        for _ in range(2):  # a batch row is cached from its second sight on
            client.post("/predict", json={"instances": rows[:4]})
        scorer = client.app.state.service.model().registry.lineup.default
        score, scored = scorer.score_indices, []
        scorer.score_indices = lambda indices, calls=None: (
            scored.append(len(indices)) or score(indices, calls)
        )
        again = client.post("/predict", json={"instances": rows}).json()
        scorer.score_indices = score
    assert scored == [4]
    assert again["cache_hits"] == 4
    assert again["predictions"] == pytest.approx(first["predictions"])
