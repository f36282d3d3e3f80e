"""The response cache as a client meets it: exact repeats, reloads, expiry, its memory bound."""

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient

from app.cache import ResponseCache, ScoreCache
from app.metrics import ServiceMetrics
from app.scoring.registry import ModelRegistry
from app.scoring.repository import ModelRepository
from app.scoring.scorer import Scorer
from app.scoring.service import PredictionService
from app.scoring.threads import ScoringThreads
from support.faults import second_version

BODY = b'{"features": {"c0": "c0_3", "n1": 0.5}}'
HEADERS = {"content-type": "application/json", "Authorization": "Bearer t0ken"}


def _post(client: TestClient, body: bytes = BODY) -> dict[str, object]:
    response = client.post("/predict", content=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_same_bytes_three_times_then_a_reload(client: TestClient, tmp_path: Path) -> None:
    answers = [_post(client) for _ in range(3)]
    assert [a["cached"] for a in answers] == [False, True, True]
    assert len({a["prediction"] for a in answers}) == 1
    service = client.app.state.service
    old = str(answers[0]["model_version"])
    assert service.responses.lookup(service.responses.key(BODY), old) is not None

    new_dir = second_version(service.registry.repository.root, tmp_path / "v2")
    reload = client.post("/admin/reload", headers=HEADERS, json={"model_dir": str(new_dir)})
    assert reload.status_code == 200, reload.text
    after = _post(client)
    assert after["cached"] is False
    assert after["model_version"] == reload.json()["version"] != old


def test_a_respelling_is_not_admitted_on_first_sight(client: TestClient) -> None:
    _post(client)
    _post(client)  # BODY is now a known repeat
    respelled = b'{"features": {"n1": 0.5, "c0": "c0_3"}}'
    assert _post(client, respelled)["cached"] is True  # the score cache knows the row
    service = client.app.state.service
    version = service.registry.current.version
    assert service.responses.lookup(service.responses.key(respelled), version) is None


def test_a_repeat_is_answered_and_counted_like_any_request(client: TestClient) -> None:
    answers = [_post(client) for _ in range(3)]
    assert answers[1] == answers[2]
    text = client.get("/metrics").text
    counted = 'ctr_request_latency_seconds_count{endpoint="/predict",status="2xx"} 3.0'
    assert counted in text  # the repeats are timed and labelled as /predict too
    assert "ctr_cache_hits_total 2.0" in text
    # Bodies the repeat path does not answer reach the route unchanged, errors included.
    broken = client.post("/predict", content=BODY[:-1], headers=HEADERS)
    assert broken.status_code == 422
    assert client.post("/predict", content=b"", headers=HEADERS).status_code == 422


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _service(repository: Path, clock: FakeClock, ttl_s: float) -> PredictionService:
    registry = ModelRegistry(ModelRepository(repository), Scorer.load)
    return PredictionService(
        registry,
        ScoreCache(1000, ttl_s, timer=clock),
        ResponseCache(1 << 20, ttl_s, timer=clock),
        ServiceMetrics(),
        ScoringThreads(1),
    )


def test_an_answer_never_outlives_its_score(repository: Path) -> None:
    clock = FakeClock()
    service = _service(repository, clock, ttl_s=60)
    row = {"c0": "c0_3", "n1": 0.5}

    def predict() -> list[bool]:
        return asyncio.run(service.predict_row(row, service.cache_use(BODY))).cached

    assert predict() == [False]  # scored at t=0, first sight
    clock.now = 50
    assert service.repeat(service.cache_use(BODY)) is None
    assert predict() == [True]  # second sight at t=50: admitted
    repeat = service.repeat(service.cache_use(BODY))
    assert repeat is not None
    assert repeat.cached == [True]
    clock.now = 61  # the score (from t=0) has expired; the answer admitted at t=50 must too
    assert service.repeat(service.cache_use(BODY)) is None
    assert predict() == [False]
