"""Miss coalescing as a caller meets it: concurrent single-row misses share one onnxruntime
call and each gets its own row's score; a full batch is scored at once; a failed call
reaches every waiting request; a request cancelled while it waits does not break the rest."""

import asyncio
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from app.cache import ResponseCache, ScoreCache
from app.metrics import ServiceMetrics
from app.scoring.coalescer import LONE_SKIP, MissCoalescer
from app.scoring.registry import ModelRegistry
from app.scoring.repository import ModelRepository
from app.scoring.scorer import Scorer, ScoringError
from app.scoring.service import PredictionService, Scored
from app.scoring.threads import ScoringThreads


def _service(repository: Path, max_rows: int) -> PredictionService:
    registry = ModelRegistry(ModelRepository(repository), Scorer.load)
    return PredictionService(
        registry,
        ScoreCache(1000, 60),
        ResponseCache(1 << 20, 60),
        ServiceMetrics(),
        ScoringThreads(1),
        max_rows,
    )


def _rows(count: int) -> list[dict[str, object]]:
    return [{"c0": f"c0_{i}", "n1": i / 7, "c3": f"c3_{i % 5}"} for i in range(count)]


async def _concurrently(service: PredictionService, rows: list[dict[str, object]]) -> list[Scored]:
    return await asyncio.gather(
        *(
            service.predict_row(row, service.cache_use(json.dumps({"features": row}).encode()))
            for row in rows
        )
    )


def _onnxruntime_calls(service: PredictionService) -> tuple[int, int]:
    """(calls, rows) from the service's own ``ctr_scored_batch_rows`` histogram."""
    service.flush_metrics()
    text = service.metrics.exposition().decode()
    calls = re.search(r"^ctr_scored_batch_rows_count (\S+)$", text, re.M)
    rows = re.search(r"^ctr_scored_batch_rows_sum (\S+)$", text, re.M)
    assert calls is not None
    assert rows is not None
    return int(float(calls.group(1))), int(float(rows.group(1)))


def test_concurrent_misses_share_one_call(repository: Path) -> None:
    service = _service(repository, max_rows=64)
    rows = _rows(20)
    answers = asyncio.run(_concurrently(service, rows))
    assert _onnxruntime_calls(service) == (1, 20)
    expected = service.registry.current.score_rows(rows)
    np.testing.assert_allclose([a.scores[0] for a in answers], expected, rtol=0, atol=1e-6)
    assert [a.cached for a in answers] == [[False]] * 20
    again = asyncio.run(_concurrently(service, rows))  # now every row is a cache hit
    assert [a.cached for a in again] == [[True]] * 20
    assert _onnxruntime_calls(service) == (1, 20)


def test_misses_one_at_a_time_are_scored_directly_and_batching_comes_back(
    repository: Path,
) -> None:
    service = _service(repository, max_rows=64)
    alone = 1 + LONE_SKIP  # a lone batch, then LONE_SKIP direct calls
    rows = _rows(alone + 20)
    for row in rows[:alone]:  # one request at a time
        asyncio.run(_concurrently(service, [row]))
    assert _onnxruntime_calls(service) == (alone, alone)
    asyncio.run(_concurrently(service, rows[alone:]))
    assert _onnxruntime_calls(service) == (alone + 1, alone + 20)


def test_a_full_batch_is_scored_at_once(repository: Path) -> None:
    service = _service(repository, max_rows=8)
    asyncio.run(_concurrently(service, _rows(20)))
    assert _onnxruntime_calls(service) == (3, 20)  # 8 + 8 + 4


def test_off_scores_each_row_alone(repository: Path) -> None:
    service = _service(repository, max_rows=0)
    asyncio.run(_concurrently(service, _rows(5)))
    assert _onnxruntime_calls(service) == (5, 5)


def _score(scorer: Scorer, rows: np.ndarray) -> np.ndarray:
    return scorer.score_indices(rows)


async def _score_in_thread(scorer: Scorer, rows: np.ndarray) -> np.ndarray:
    return await asyncio.to_thread(scorer.score_indices, rows)


def test_a_failed_call_reaches_every_waiting_request(repository: Path) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    scorer.warm((1, 8))  # times a row, which decides where a call runs
    good = np.zeros((1, len(scorer.encoder.names)), dtype=np.int64)
    bad = np.full_like(good, 10**9)  # an index past every table: onnxruntime refuses it
    for thread_seconds in (1.0, 0.0):  # on the event loop, then in the thread pool
        coalescer = MissCoalescer(
            _score, _score_in_thread, 64, 0.002, thread_seconds=thread_seconds
        )

        async def score_both(coalescer: MissCoalescer = coalescer) -> list[object]:
            return await asyncio.gather(
                coalescer.score(scorer, good),
                coalescer.score(scorer, bad),
                return_exceptions=True,
            )

        results = asyncio.run(score_both())
        assert all(isinstance(r, ScoringError) for r in results)
        assert isinstance(asyncio.run(_alone(coalescer, scorer, good)), float)  # it recovers


def test_a_costly_call_runs_in_a_thread_while_the_next_misses_gather(repository: Path) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    scorer.warm((1, 8))
    release, calls = threading.Event(), []

    def run(s: Scorer, rows: np.ndarray) -> np.ndarray:
        calls.append((threading.current_thread() is threading.main_thread(), len(rows)))
        if len(calls) == 1:
            assert release.wait(5)  # the first call holds its thread until told
        return s.score_indices(rows)

    coalescer = MissCoalescer(
        run,
        lambda s, rows: asyncio.to_thread(run, s, rows),
        max_rows=64,
        max_seconds=0.002,
        thread_seconds=0.0,
    )
    rows = [np.full((1, len(scorer.encoder.names)), i, dtype=np.int64) for i in range(6)]

    async def scenario() -> list[float]:
        first = asyncio.ensure_future(coalescer.score(scorer, rows[0]))
        while not calls:  # the first call is running in the thread pool
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(coalescer.score(scorer, row)) for row in rows[1:]]
        for _ in range(5):
            await asyncio.sleep(0)  # turns of the loop pass; the five only gather
        assert len(calls) == 1
        release.set()
        return await asyncio.gather(first, *rest)

    scores = asyncio.run(scenario())
    assert calls == [(False, 1), (False, 5)]  # both in the pool, the five in one call
    expected = scorer.score_indices(np.concatenate(rows))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


async def _alone(coalescer: MissCoalescer, scorer: Scorer, row: np.ndarray) -> float:
    return await coalescer.score(scorer, row)


def test_a_cancelled_request_leaves_the_others_their_scores(repository: Path) -> None:
    service = _service(repository, max_rows=64)
    rows = _rows(3)

    async def cancel_one() -> list[object]:
        tasks = [
            asyncio.ensure_future(service.predict_row(row, service.cache_use(b""))) for row in rows
        ]
        await asyncio.sleep(0)  # all three are waiting for the batch now
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(cancel_one())
    assert isinstance(results[1], asyncio.CancelledError)
    assert all(isinstance(results[i], Scored) for i in (0, 2))


def test_bad_max_rows() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        MissCoalescer(_score, _score_in_thread, max_rows=0, max_seconds=0.002, thread_seconds=0.0)
