"""Miss coalescing as a caller meets it: concurrent single-row misses share one onnxruntime
call and each gets its own row's score; cache hits are answered with the misses of their
turn; a full batch is scored at once; a failed call reaches every waiting request; a
request cancelled while it waits does not break the rest."""

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from app.scoring.coalescer import MissCoalescer
from app.scoring.overlap import PROBE_EVERY
from app.scoring.scorer import Scorer, ScoringError
from app.scoring.service import PredictionService, Scored


def _rows(count: int) -> list[dict[str, object]]:
    return [{"c0": f"c0_{i}", "n1": i / 7, "c3": f"c3_{i % 5}"} for i in range(count)]


async def _concurrently(service: PredictionService, rows: list[dict[str, object]]) -> list[Scored]:
    return await asyncio.gather(
        *(
            service.predict_row(row, service.cache_use(json.dumps({"features": row}).encode()))
            for row in rows
        )
    )


def test_concurrent_misses_share_one_call(
    coalescing_service: Callable[[int], PredictionService],
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    service = coalescing_service(64)
    rows = _rows(20)
    answers = asyncio.run(_concurrently(service, rows))
    assert onnxruntime_calls(service) == (1, 20)
    expected = service.registry.current.score_rows(rows)
    np.testing.assert_allclose([a.scores[0] for a in answers], expected, rtol=0, atol=1e-6)
    assert [a.cached for a in answers] == [[False]] * 20
    again = asyncio.run(_concurrently(service, rows))  # now every row is a cache hit
    assert [a.cached for a in again] == [[True]] * 20
    assert onnxruntime_calls(service) == (1, 20)


def _recording(scorer: Scorer) -> tuple[MissCoalescer, list[tuple[bool, int]]]:
    """A coalescer on the event loop whose calls say whether they ran inside a request's
    own task (scored directly) or in a later turn of the loop (a batch), and their rows."""
    calls: list[tuple[bool, int]] = []

    def run(s: Scorer, rows: np.ndarray) -> np.ndarray:
        calls.append((asyncio.current_task() is not None, len(rows)))
        return s.score_indices(rows)

    return MissCoalescer(run, _score_in_thread, 64, 1.0, thread_seconds=1.0), calls


def _encoded(scorer: Scorer, count: int) -> list[np.ndarray]:
    width = len(scorer.encoder.names)
    return [np.full((1, width), i % 7, dtype=np.int64) for i in range(count)]


def test_misses_one_at_a_time_are_scored_directly_and_batching_comes_back(
    repository: Path,
) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    coalescer, calls = _recording(scorer)
    rows = _encoded(scorer, 100)

    async def one_at_a_time() -> None:
        for row in rows[:60]:
            await coalescer.score(scorer, row)

    asyncio.run(one_at_a_time())
    assert all(size == 1 for _, size in calls)
    direct = [in_task for in_task, _ in calls[20:]]
    assert sum(direct) >= len(direct) * (PROBE_EVERY - 1) // PROBE_EVERY  # all but probes
    calls.clear()

    async def together() -> list[float]:
        return await asyncio.gather(*(coalescer.score(scorer, row) for row in rows[60:]))

    scores = asyncio.run(together())
    assert len(calls) <= PROBE_EVERY  # a few direct ones at most, then one batch
    assert calls[-1] == (False, 40 - (len(calls) - 1))
    np.testing.assert_allclose(scores, scorer.score_indices(np.concatenate(rows[60:])), atol=1e-6)


def test_misses_spread_thin_among_other_requests_still_share_calls(repository: Path) -> None:
    """A turn with a single miss (the others were cache hits) does not stop the next turns'
    misses from sharing a call."""
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    coalescer, calls = _recording(scorer)
    rows = iter(_encoded(scorer, 200))
    turns = [1, 4, 4, 4, 4] * 4

    async def scenario() -> None:
        for misses in turns:
            await asyncio.gather(*(coalescer.score(scorer, next(rows)) for _ in range(misses)))

    asyncio.run(scenario())
    assert [size for _, size in calls] == turns
    assert not any(in_task for in_task, _ in calls)


def _sequenced(scorer: Scorer) -> tuple[MissCoalescer, list[str]]:
    """A coalescer whose onnxruntime calls, and the requests it answers, log themselves in
    the order they happen."""
    events: list[str] = []

    def run(s: Scorer, rows: np.ndarray) -> np.ndarray:
        events.append(f"call of {len(rows)}")
        return s.score_indices(rows)

    return MissCoalescer(run, _score_in_thread, 64, 1.0, thread_seconds=1.0), events


def _requests(
    coalescer: MissCoalescer, scorer: Scorer, events: list[str]
) -> tuple[Callable[[np.ndarray], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """A cache miss and a cache hit as the service makes them, each logged when answered."""

    async def miss(row: np.ndarray) -> None:
        await coalescer.score(scorer, row)
        events.append("miss")

    async def hit() -> None:
        await coalescer.in_step(scorer)
        events.append("hit")

    return miss, hit


def test_a_cache_hit_is_answered_with_the_misses_of_its_turn(repository: Path) -> None:
    """Requests that arrive together are answered together, hits too, so that their
    connections' next requests arrive together again; a hit first in its turn included."""
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    coalescer, events = _sequenced(scorer)
    miss, hit = _requests(coalescer, scorer, events)
    rows = _encoded(scorer, 4)

    async def scenario() -> None:
        await asyncio.gather(hit(), miss(rows[0]), miss(rows[1]), hit())
        await asyncio.gather(miss(rows[2]), hit(), miss(rows[3]))

    asyncio.run(scenario())
    turn = ["call of 2", "hit", "miss", "miss"]
    assert events == [turn[0], "hit", *turn[1:], *turn]


async def _hit_beside_another_request(
    hit: Callable[[], Awaitable[None]], events: list[str]
) -> None:
    """A hit and a request started after it, in one turn, logged afresh."""

    async def other() -> None:
        events.append("a request started after the hit")

    events.clear()
    await asyncio.gather(hit(), other())


ANSWERED_AT_ONCE = ["hit", "a request started after the hit"]  # the hit waited for no turn


def test_turns_of_hits_only_call_nothing_and_soon_stop_waiting(repository: Path) -> None:
    """A stream of repeats has no misses to keep step with: after a few turns of hits
    alone, a hit is answered in its own turn again."""
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    coalescer, events = _sequenced(scorer)
    _, hit = _requests(coalescer, scorer, events)
    logged: list[str] = []

    async def scenario() -> None:
        for _ in range(10):
            await asyncio.gather(hit(), hit())
        logged.extend(events)
        await _hit_beside_another_request(hit, events)

    asyncio.run(scenario())
    assert logged == ["hit"] * 20  # and no onnxruntime call
    assert events == ANSWERED_AT_ONCE


def test_a_hit_is_answered_at_once_while_misses_come_one_at_a_time(repository: Path) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    coalescer, events = _sequenced(scorer)
    miss, hit = _requests(coalescer, scorer, events)

    async def scenario() -> None:
        for row in _encoded(scorer, 30):  # the misses are being scored directly
            await miss(row)
        await _hit_beside_another_request(hit, events)

    asyncio.run(scenario())
    assert events == ANSWERED_AT_ONCE


def test_a_full_batch_is_scored_at_once(
    coalescing_service: Callable[[int], PredictionService],
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    service = coalescing_service(8)
    asyncio.run(_concurrently(service, _rows(20)))
    assert onnxruntime_calls(service) == (3, 20)  # 8 + 8 + 4


def test_off_scores_each_row_alone(
    coalescing_service: Callable[[int], PredictionService],
    onnxruntime_calls: Callable[[PredictionService], tuple[int, int]],
) -> None:
    service = coalescing_service(0)
    asyncio.run(_concurrently(service, _rows(5)))
    assert onnxruntime_calls(service) == (5, 5)


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
    """Two rows or more of a costly model: one row alone is scored on the loop."""
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
    rows = [np.full((1, len(scorer.encoder.names)), i, dtype=np.int64) for i in range(7)]

    async def scenario() -> list[float]:
        first = [asyncio.ensure_future(coalescer.score(scorer, row)) for row in rows[:2]]
        while not calls:  # the first call is running in the thread pool
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(coalescer.score(scorer, row)) for row in rows[2:]]
        for _ in range(5):
            await asyncio.sleep(0)  # turns of the loop pass; the five only gather
        assert len(calls) == 1
        release.set()
        return await asyncio.gather(*first, *rest)

    scores = asyncio.run(scenario())
    assert calls == [(False, 2), (False, 5)]  # both in the pool, the five in one call
    expected = scorer.score_indices(np.concatenate(rows))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_a_hit_does_not_wait_for_a_call_in_a_scoring_thread(repository: Path) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    scorer.warm((1, 8))  # timed: a costly model by thread_seconds=0
    release, calls = threading.Event(), []

    def run(s: Scorer, rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        assert release.wait(5)
        return s.score_indices(rows)

    coalescer = MissCoalescer(
        run, lambda s, rows: asyncio.to_thread(run, s, rows), 64, 0.002, thread_seconds=0.0
    )
    rows = _encoded(scorer, 2)

    async def scenario() -> None:
        misses = [asyncio.ensure_future(coalescer.score(scorer, row)) for row in rows]
        while not calls:  # the two misses are being scored in a thread, held there
            await asyncio.sleep(0.001)
        await asyncio.wait_for(coalescer.in_step(scorer), 1)
        assert not any(m.done() for m in misses)
        release.set()
        await asyncio.gather(*misses)

    asyncio.run(scenario())
    assert calls == [2]


def test_a_costly_models_lone_row_is_scored_on_the_loop(repository: Path) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    scorer.warm((1, 8))
    threads: list[bool] = []

    def run(s: Scorer, rows: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread() is threading.main_thread())
        return s.score_indices(rows)

    coalescer = MissCoalescer(
        run, lambda s, rows: asyncio.to_thread(run, s, rows), 64, 0.002, thread_seconds=0.0
    )
    row = np.zeros((1, len(scorer.encoder.names)), dtype=np.int64)
    for _ in range(20):  # batches of one (the first ones, then the probes) and direct calls
        asyncio.run(_alone(coalescer, scorer, row))
    assert threads == [True] * 20


async def _alone(coalescer: MissCoalescer, scorer: Scorer, row: np.ndarray) -> float:
    return await coalescer.score(scorer, row)


def test_a_cancelled_request_leaves_the_others_their_scores(
    coalescing_service: Callable[[int], PredictionService],
) -> None:
    service = coalescing_service(64)
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


def test_a_call_cancelled_at_shutdown_cancels_its_requests(repository: Path) -> None:
    scorer = Scorer.load(repository / (repository / "CURRENT").read_text().strip())
    scorer.warm((1, 8))

    async def never(s: Scorer, rows: np.ndarray) -> np.ndarray:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    coalescer = MissCoalescer(_score, never, 64, 0.002, thread_seconds=0.0)
    problems: list[dict[str, object]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: problems.append(context))
        row = np.zeros((1, len(scorer.encoder.names)), dtype=np.int64)
        requests = {asyncio.ensure_future(coalescer.score(scorer, row)) for _ in range(2)}
        for _ in range(3):
            await asyncio.sleep(0)  # the batch is scored: its call is waiting in "never"
        others = asyncio.all_tasks() - requests - {asyncio.current_task()}
        assert len(others) == 1
        others.pop().cancel()
        for request in requests:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(request, 5)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert problems == []


def test_bad_max_rows() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        MissCoalescer(_score, _score_in_thread, max_rows=0, max_seconds=0.002, thread_seconds=0.0)
