"""The cache gate as a client meets it: a stream of one-off rows stops paying for the
caches, and a stream that starts to repeat is answered from them again."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.scoring.gate import CacheGate
from support.payloads import load_spec, unique_rows


def test_one_off_rows_stop_asking_and_repeats_bring_the_caches_back(model_dir: Path) -> None:
    rows = unique_rows(load_spec(model_dir), 1020, seed=5)
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        service = client.app.state.service
        for row in rows[:1000]:
            assert client.post("/predict", json={"features": row}).status_code == 200
        # ~300 requests took the share of hits from 1 below 5%; after that one in 8 asked,
        # where every request stored its row before.
        assert service.single_gate.share < 0.05
        assert 250 <= len(service.cache) < 450  # without the gate: ~1,000
        hot = rows[1000:]
        rounds = [[client.post("/predict", json={"features": r}).json() for r in hot]]
        while not all(answer["cached"] for answer in rounds[-1]) and len(rounds) < 100:
            rounds.append([client.post("/predict", json={"features": r}).json() for r in hot])
        assert len(rounds) < 15, "the probes did not bring the caches back"
        first = [answer["prediction"] for answer in rounds[0]]
        assert [answer["prediction"] for answer in rounds[-1]] == first


def test_one_off_batches_stop_asking(model_dir: Path) -> None:
    rows = unique_rows(load_spec(model_dir), 6100, seed=6)
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        service = client.app.state.service
        for start in range(0, 6000, 100):
            batch = rows[start : start + 100]
            assert client.post("/predict", json={"instances": batch}).status_code == 200
        assert service.batch_gate.share < 0.05
        hot = rows[6000:]
        hits = [client.post("/predict", json={"instances": hot}).json()["cache_hits"]]
        while hits[-1] < 100 and len(hits) < 200:
            hits.append(client.post("/predict", json={"instances": hot}).json()["cache_hits"])
        assert len(hits) < 40, "the probes did not bring the score cache back"


def test_the_gate_probes_while_closed() -> None:
    gate = CacheGate(min_share=0.05, weight=0.5, probe_every=4)
    assert gate.asks()  # repeats are assumed at first
    for _ in range(6):
        gate.note(0, 1)
    assert [gate.asks() for _ in range(8)] == [False, False, False, True] * 2
    gate.note(1, 1)  # a probe found a hit
    assert gate.asks()
    assert gate.share == pytest.approx(0.5 + 0.5**7)


def test_probes_that_find_nothing_back_off_and_a_hit_resets_them() -> None:
    gate = CacheGate(min_share=0.05, weight=0.5, probe_every=2, probe_max=8)
    for _ in range(5):  # asked while open: the share falls below 5%
        assert gate.asks()
        gate.note(0, 1)
    gaps = []
    for _ in range(5):  # each probe finds nothing
        passed = 1
        while not gate.asks():
            passed += 1
        gaps.append(passed)
        gate.note(0, 1)
    assert gaps == [2, 4, 8, 8, 8]
    gate.note(1, 1)  # a probe found a hit: the gate opens, and closes again at the quick pace
    assert gate.asks()
    assert gate.stands_for == 1
    for _ in range(4):
        gate.note(0, 1)
    assert gate.share < 0.05
    assert gate.stands_for == 2


def test_bad_gate_settings() -> None:
    with pytest.raises(ValueError, match="weight"):
        CacheGate(0.05, weight=0, probe_every=4)
    with pytest.raises(ValueError, match="probe_every"):
        CacheGate(0.05, weight=0.1, probe_every=0)
    with pytest.raises(ValueError, match="probe_max"):
        CacheGate(0.05, weight=0.1, probe_every=8, probe_max=4)
