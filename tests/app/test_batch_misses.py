"""Batch misses pooled as a caller meets them: the rows that concurrent batches could not
answer from the response cache share one onnxruntime call, and each batch gets its own
rows' scores; batches one at a time are scored at once, and pooling comes back when they
overlap; a bad row fails only its own batch, named as that batch numbers it; a failed call
reaches every batch of the pool; a full pool is scored at once; a batch cancelled while it
waits breaks none of the others."""

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from app.cache import ResponseCache, ScoreCache
from app.features.errors import EncodeError
from app.metrics import ServiceMetrics
from app.schemas import BodyError, parse_predict
from app.scoring.batch_misses import BatchMissPool
from app.scoring.overlap import PROBE_EVERY
from app.scoring.registry import ModelRegistry
from app.scoring.repository import ModelRepository
from app.scoring.scorer import Scorer, ScoringError
from app.scoring.service import PredictionService, Scored
from app.scoring.threads import ScoringThreads

Row = dict[str, object]


def _batches(count: int, rows: int, start: int = 0) -> list[list[Row]]:
    """``count`` batches of ``rows`` rows, no two alike once encoded (values the model
    knows, from the ``start``-th on: at most 160 rows in all)."""
    return [
        [
            {"c0": f"c0_{start + b * rows + i}", "n1": i / 7, "c3": f"c3_{i % 5}"}
            for i in range(rows)
        ]
        for b in range(count)
    ]


async def _batch(service: PredictionService, rows: list[object]) -> Scored:
    """One /predict batch as the service takes it: the body, its rows kept as text."""
    body = json.dumps({"instances": rows}).encode()
    return await service.predict_batch(parse_predict(body).instances or [], body)


def _together(service: PredictionService, batches: list[list[Row]]) -> list[object]:
    """The batches sent at once; each one's answer or error."""

    async def scenario() -> list[object]:
        return await asyncio.gather(
            *(_batch(service, list(rows)) for rows in batches), return_exceptions=True
        )

    return asyncio.run(scenario())


def _assert_scores_of(service: PredictionService, answer: object, rows: list[Row]) -> None:
    assert isinstance(answer, Scored), answer
    expected = service.registry.current.score_rows(rows)
    np.testing.assert_allclose(answer.scores, expected, rtol=0, atol=1e-6)


def test_concurrent_batches_share_one_call_for_their_misses(
    coalescing_service: Callable[[int], PredictionService],
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    service = coalescing_service(64)
    first = _batches(4, 5)
    for answer, rows in zip(_together(service, first), first, strict=True):
        _assert_scores_of(service, answer, rows)
    assert onnxruntime_calls(service) == (1, 20)
    _together(service, first)  # a row is cached from its second sight on
    assert onnxruntime_calls(service) == (2, 40)

    # Each batch again, with two rows of its own never seen: the repeats are answered by
    # their text, and only the new rows, 8 of them, are scored, in one call.
    fresh = _batches(8, 1, start=20)
    again = [[*rows, fresh[2 * b][0], fresh[2 * b + 1][0]] for b, rows in enumerate(first)]
    answers = _together(service, again)
    for answer, rows in zip(answers, again, strict=True):
        _assert_scores_of(service, answer, rows)
        assert isinstance(answer, Scored)
        assert answer.cached == [True] * 5 + [False] * 2
    assert onnxruntime_calls(service) == (3, 48)


def test_batches_one_at_a_time_are_scored_directly_and_pooling_comes_back(
    repository: Path,
) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    calls: list[tuple[str, int]] = []  # the task each call ran in, and its rows

    def encode(s: Scorer, rows: Sequence[bytes]) -> np.ndarray:
        return s.encoder.encode_rows([json.loads(row) for row in rows])

    async def score(s: Scorer, block: np.ndarray, cache_s: float) -> tuple[np.ndarray, np.ndarray]:
        task = asyncio.current_task()
        assert task is not None
        calls.append((task.get_name(), len(block)))
        return s.score_indices(block), np.zeros(len(block), dtype=np.bool_)

    pool = BatchMissPool(encode, lambda s, rows, body, places: encode(s, rows), score, 64)
    texts = [[json.dumps(row).encode() for row in rows] for rows in _batches(64, 2)]

    async def request(place: int) -> np.ndarray:
        scores, _ = await pool.score(scorer, texts[place], b"", [0, 1], 0.0)
        return scores

    async def scenario() -> list[np.ndarray]:
        for place in range(40):
            await asyncio.create_task(request(place), name=f"request {place}")
        return await asyncio.gather(
            *(asyncio.create_task(request(p), name=f"request {p}") for p in range(40, 64))
        )

    together = asyncio.run(scenario())
    alone = [name.startswith("request") for name, _ in calls[20:40]]
    assert sum(alone) >= len(alone) * (PROBE_EVERY - 1) // PROBE_EVERY  # all but probes
    assert len(calls) - 40 <= PROBE_EVERY  # a few direct ones at most, then one pool
    name, rows = calls[-1]
    assert not name.startswith("request")
    assert rows == 2 * (24 - (len(calls) - 41))
    expected = scorer.score_indices(encode(scorer, [t for ts in texts[40:] for t in ts]))
    np.testing.assert_allclose(np.concatenate(together), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("bad_row", "error"),
    [({"c0": "c0_x", "n1": "ten"}, EncodeError), (5, BodyError)],
    ids=["a value that does not encode", "a row that is not an object"],
)
def test_a_bad_row_fails_only_its_own_batch(
    bad_row: object,
    error: type[Exception],
    coalescing_service: Callable[[int], PredictionService],
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    service = coalescing_service(64)
    batches: list[list[object]] = [list(rows) for rows in _batches(3, 3)]
    batches[1][2] = bad_row
    answers = _together(service, batches)  # type: ignore[arg-type]
    refused = answers[1]
    assert isinstance(refused, error)
    if isinstance(refused, EncodeError):
        assert (refused.row, refused.field) == (2, "n1")  # as its own batch numbers it
    else:
        assert "$.instances[2]" in str(refused)
    for place in (0, 2):
        _assert_scores_of(service, answers[place], batches[place])  # type: ignore[arg-type]
    assert onnxruntime_calls(service) == (1, 6)  # the two good batches, still together


def test_a_failed_call_reaches_every_batch_of_the_pool(
    monkeypatch: pytest.MonkeyPatch, coalescing_service: Callable[[int], PredictionService]
) -> None:
    service = coalescing_service(64)
    session = service.registry.current.session

    def broken_run(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated onnxruntime failure")

    with monkeypatch.context() as patched:
        patched.setattr(session, "run", broken_run)
        answers = _together(service, _batches(3, 4))
    assert all(isinstance(answer, ScoringError) for answer in answers)
    batches = _batches(3, 4, start=12)
    for answer, rows in zip(_together(service, batches), batches, strict=True):
        _assert_scores_of(service, answer, rows)  # the pool recovers


def test_a_full_pool_is_scored_at_once(
    coalescing_service: Callable[[int], PredictionService],
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    service = coalescing_service(8)
    _together(service, _batches(3, 5))
    assert onnxruntime_calls(service) == (2, 15)  # 5 + 5 reach the cap, then 5


def test_off_scores_each_batch_alone(
    coalescing_service: Callable[[int], PredictionService],
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    service = coalescing_service(0)
    _together(service, _batches(3, 5))
    assert onnxruntime_calls(service) == (3, 15)


def test_a_batch_cancelled_while_it_waits_breaks_none_of_the_others(
    repository: Path,
    monkeypatch: pytest.MonkeyPatch,
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    """Cancelled (by its deadline) while its pool is scored in a scoring thread."""
    registry = ModelRegistry(ModelRepository(repository), Scorer.load)
    service = PredictionService(
        registry,
        ScoreCache(1000, 60),
        ResponseCache(1 << 20, 60),
        ServiceMetrics(),
        ScoringThreads(1),
        coalesce_max_rows=64,
        inline_max_s=0.0,
    )
    registry.current.warm((1, 8))  # timed: its calls of 2 rows and more go to the thread
    session = registry.current.session
    run, release, called = session.run, threading.Event(), threading.Event()

    def held_run(*args: object, **kwargs: object) -> object:
        called.set()
        assert release.wait(5)
        return run(*args, **kwargs)

    monkeypatch.setattr(session, "run", held_run)
    batches = _batches(3, 4)

    async def scenario() -> list[object]:
        waiting = [asyncio.ensure_future(_batch(service, list(rows))) for rows in batches]
        while not called.is_set():  # the pool is being scored in the thread, held there
            await asyncio.sleep(0.001)
        waiting[1].cancel()
        release.set()
        return await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)

    answers = asyncio.run(scenario())
    assert isinstance(answers[1], asyncio.CancelledError)
    for place in (0, 2):
        _assert_scores_of(service, answers[place], batches[place])
    assert onnxruntime_calls(service) == (1, 12)
