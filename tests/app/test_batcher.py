"""The batcher: requests alone when idle, batched under load, a full queue refused at once,
a cancelled request never scored, an onnxruntime failure handed to every request it took;
and overload over HTTP answered 503 with Retry-After."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.cpus import cpu_quota, usable_cpus
from app.main import create_app
from app.model.scorer import Calls, ScoringError
from app.scoring.batcher import Batcher, OverloadedError


class GatedScorer:
    """A stand-in for a loaded model's scoring: each call waits for the gate, records its
    rows and scores a row as its first index / 100."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[list[int]] = []
        self.fail = False

    def score_indices(self, indices: np.ndarray, calls: Calls | None = None) -> np.ndarray:
        self.started.set()
        self.gate.wait(10)
        self.calls.append(indices[:, 0].tolist())
        if self.fail:
            raise ScoringError("onnxruntime failed: simulated")
        return (indices[:, 0] / 100).astype(np.float32)


def _rows(*firsts: int) -> np.ndarray:
    return np.array([[f, 0] for f in firsts], dtype=np.int64)


async def _wait_for(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.001)


def test_an_idle_batcher_scores_a_request_alone_at_once() -> None:
    scorer = GatedScorer()
    scorer.gate.set()
    batcher = Batcher(threads=1, max_rows=64, max_queued_rows=64)
    try:
        scores = asyncio.run(batcher.score(scorer, _rows(7, 9)))  # type: ignore[arg-type]
    finally:
        batcher.close()
    assert scores.tolist() == pytest.approx([0.07, 0.09])
    assert scorer.calls == [[7, 9]]


def test_the_jobs_of_two_models_queued_in_turn_are_scored_in_one_call_per_model() -> None:
    ctr, cvr = GatedScorer(), GatedScorer()
    batcher = Batcher(threads=1, max_rows=8, max_queued_rows=64)

    async def run() -> None:
        busy = asyncio.ensure_future(batcher.score(ctr, _rows(1)))  # type: ignore[arg-type]
        await _wait_for(ctr.started)
        interleaved = [(ctr, 10), (cvr, 20), (ctr, 11), (cvr, 21), (ctr, 12)]
        tasks = [
            asyncio.ensure_future(batcher.score(scorer, _rows(first)))  # type: ignore[arg-type]
            for scorer, first in interleaved
        ]
        await asyncio.sleep(0.01)
        ctr.gate.set()
        cvr.gate.set()
        await asyncio.gather(busy, *tasks)

    try:
        asyncio.run(run())
    finally:
        batcher.close()
    assert (ctr.calls, cvr.calls) == ([[1], [10, 11, 12]], [[20, 21]])


def test_requests_queued_while_the_threads_are_busy_are_scored_in_one_call() -> None:
    scorer = GatedScorer()
    batcher = Batcher(threads=1, max_rows=5, max_queued_rows=64)

    async def run() -> list[list[float]]:
        busy = asyncio.ensure_future(batcher.score(scorer, _rows(1)))  # type: ignore[arg-type]
        await _wait_for(scorer.started)
        queued = [batcher.score(scorer, _rows(10 + i, 20 + i)) for i in range(4)]  # type: ignore[arg-type]
        tasks = [asyncio.ensure_future(q) for q in queued]
        await asyncio.sleep(0.01)
        scorer.gate.set()
        return [s.tolist() for s in await asyncio.gather(busy, *tasks)]

    try:
        answers = asyncio.run(run())
    finally:
        batcher.close()
    assert answers[1:] == [pytest.approx([(10 + i) / 100, (20 + i) / 100]) for i in range(4)]
    # one call alone, then the queue in calls of at most max_rows (two requests of 2 rows)
    assert scorer.calls == [[1], [10, 20, 11, 21], [12, 22, 13, 23]]


def test_a_full_queue_is_refused_at_once_and_a_cancelled_request_is_never_scored() -> None:
    scorer = GatedScorer()
    batcher = Batcher(threads=1, max_rows=4, max_queued_rows=4)

    async def run() -> None:
        busy = asyncio.ensure_future(batcher.score(scorer, _rows(1)))  # type: ignore[arg-type]
        await _wait_for(scorer.started)
        waiting = asyncio.ensure_future(batcher.score(scorer, _rows(2, 3, 4)))  # type: ignore[arg-type]
        kept = asyncio.ensure_future(batcher.score(scorer, _rows(5)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(OverloadedError, match="4 rows are waiting"):
            await batcher.score(scorer, _rows(6))  # type: ignore[arg-type]
        assert time.perf_counter() - started < 0.05
        waiting.cancel()  # its deadline passed, or its client went away
        with pytest.raises(asyncio.CancelledError):
            await waiting
        scorer.gate.set()
        await asyncio.gather(busy, kept)

    try:
        asyncio.run(run())
    finally:
        batcher.close()
    assert scorer.calls == [[1], [5]]  # rows 2, 3, 4 were never scored


def test_a_failed_call_fails_every_request_it_took() -> None:
    scorer = GatedScorer()
    scorer.fail = True
    scorer.gate.set()
    observed: list[tuple[int, float, bool]] = []
    batcher = Batcher(1, 64, 64, lambda rows, s, failed: observed.append((rows, s, failed)))

    async def run() -> list[object]:
        calls = [batcher.score(scorer, _rows(i)) for i in range(3)]  # type: ignore[arg-type]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        answers = asyncio.run(run())
    finally:
        batcher.close()
    assert all(isinstance(answer, ScoringError) for answer in answers)
    assert sum(rows for rows, _, _ in observed) == 3
    assert all(failed for _, _, failed in observed)


def test_overload_over_http_is_503_with_retry_after_and_the_service_recovers(
    model_dir: Path,
) -> None:
    settings = Settings(model_dir=model_dir, scoring_threads=1, batch_max_rows=1, max_queued_rows=1)
    with TestClient(create_app(settings)) as client:
        scorer = client.app.state.service.model().registry.lineup.default
        score = scorer.score_indices
        gate, entered = threading.Event(), threading.Event()

        def blocked(indices: np.ndarray, calls: Calls | None = None) -> np.ndarray:
            entered.set()
            gate.wait(10)
            return score(indices, calls)

        scorer.score_indices = blocked

        def post(i: int) -> tuple[int, str | None, float]:
            started = time.perf_counter()
            response = client.post("/predict", json={"features": {"c0": f"c0_{i}"}})
            return (
                response.status_code,
                response.headers.get("retry-after"),
                (time.perf_counter() - started),
            )

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, 0)]
            assert entered.wait(10)  # one scoring; of the rest, one queued, four refused
            futures += [pool.submit(post, i) for i in range(1, 6)]
            time.sleep(0.5)
            refused = [f.result() for f in futures if f.done()]
            gate.set()
            answered = [f.result() for f in futures]
        assert len(refused) >= 3
        assert all(status == 503 and retry == "1" for status, retry, _ in refused)
        assert sorted(status for status, _, _ in answered).count(200) >= 2
        scorer.score_indices = score
        assert client.post("/predict", json={"features": {"c0": "c0_1"}}).status_code == 200


def test_threads_default_to_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert cpu_quota(cpu_max) is None
    cpu_max.write_text("150000 100000\n")
    assert cpu_quota(cpu_max) == 1.5
    assert usable_cpus(cpu_max) == min(2, usable_cpus(tmp_path / "none"))
    cpu_max.write_text("50000 100000\n")
    assert usable_cpus(cpu_max) == 1


def test_requests_past_the_inflight_bound_are_refused_before_they_are_read(
    model_dir: Path,
) -> None:
    """The event loop, not the scoring queue, can be what a request waits for: past
    CTR_MAX_INFLIGHT_REQUESTS a scoring request gets 503 + Retry-After at once, in its
    protocol's error shape, while health checks still answer."""
    settings = Settings(model_dir=model_dir, max_inflight_requests=2, max_queued_rows=4096)
    with TestClient(create_app(settings)) as client:
        scorer = client.app.state.service.model().registry.lineup.default
        score = scorer.score_indices
        gate = threading.Event()
        scorer.score_indices = lambda indices, calls=None: gate.wait(10) and score(indices, calls)
        with ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(client.post, "/predict", json={"features": {"c0": f"c0_{i}"}})
                for i in range(2)
            ]
            time.sleep(0.3)  # both admitted and waiting for the model
            refused = client.post("/predict", json={"features": {"c0": "c0_9"}})
            v2 = client.post("/v2/models/nffm/infer", json={"inputs": []})
            assert client.get("/healthz").status_code == 200
            gate.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
        assert "CTR_MAX_INFLIGHT_REQUESTS" in refused.json()["detail"]
        assert v2.status_code == 503
        assert "error" in v2.json()
        scorer.score_indices = score
        assert client.post("/predict", json={"features": {"c0": "c0_9"}}).status_code == 200
