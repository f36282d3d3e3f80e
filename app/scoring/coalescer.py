"""Concurrent single-row cache misses scored together, in one onnxruntime call.

A production-size model's row costs most in its first dense layer, a matrix-vector product
that reads the whole weight matrix for one row; scored together, N rows read it once. The
event loop gives the batching for free: requests that arrive together are started in the
same turn of the loop, so a miss that opens a batch schedules its scoring for the next turn
(``call_soon``) and every miss of that turn joins it. There is no timer: a busy service
waits at most for the requests already started, and a batch that reaches ``max_rows`` is
scored at once.

A service without concurrent misses does not wait at all: while the calls the loop formed
held fewer than 1.5 rows on average (a moving average, app/scoring/overlap.py), misses are scored
directly (the extra turn and future cost ~15 µs, 5% of a toy model's miss at one
connection), and one in 16 still tries batching, so that batching comes back
as soon as requests overlap again; so is a costly model's while no call of it is in a
scoring thread (a thread hop cost the NFFM a third of its req/s at one connection). An
average, not the last call: with cache hits among the requests, a turn often holds a single
miss, and going direct after every lone batch (the rule before) scored the default model's
misses 2.25 to a call where 3.9 arrived together; 7,193 req/s against 8,078 at 50% hits
(wrk, 16 connections). Batches keep the requests of a turn in step, and a turn's responses
go out together, which costs a request less than answering them one by one.

A model whose row costs more than ``thread_seconds`` (timed when it loads) has its calls of
two rows or more run in a scoring thread (app/scoring/threads.py), where onnxruntime
releases the GIL and uses the second core while the event loop serves HTTP; one call at a
time, and the misses that arrive meanwhile gather into the next one. On the 39-field NFFM
(~84 µs a row) that served 3,820 distinct single rows a second against 3,285 with every call
on the loop (wrk, 16 connections, four 5 s rounds side by side). A cheap call is not worth
the thread hop: with every call in a thread the DeepFM (~12 µs a row) lost 9% and the
10-field default model (~3 µs) 19%. Nor is a batch of one row, which is scored on the loop
like a direct miss: at one connection every probe is one, and their thread hops cost the
NFFM 7% of its req/s (2,365 against 2,511 on the loop and 2,549 with coalescing off; wrk,
three 5 s rounds side by side).

Cache hits keep step with the misses (:meth:`MissCoalescer.in_step`): while misses are being
batched, a hit is answered when its turn's batch is scored, not in the turn it arrived. A
hit answered ahead of the misses beside it sends its connection's next request ahead of
theirs, the requests stop arriving together, and every later turn holds fewer of them. With
half the requests repeats (wrk, 16 connections, 5 s rounds side by side, servers taking
turns) the default model served 8,146 req/s with hits held against 7,075 without (six
rounds), and in three more rounds 8,695 against 7,562, where its cache-disabled service,
whose requests all move together, served 8,460; the DeepFM 6,832 against 5,810 (four
rounds). At 90% repeats, few misses to a turn, holding cost 2-5% in four runs (a future and
a turn more for each hit; within this machine's spread); at 99% it was 6% ahead. A turn of
hits alone counts as a call of no rows in the average, so a stream of repeats, which has no
misses to keep step with, is soon answered at once again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
from numpy.typing import NDArray

from app.scoring.overlap import Overlap
from app.scoring.scorer import Scorer

RunBatch = Callable[[Scorer, NDArray[np.int64]], NDArray[np.float32]]
RunBatchInThread = Callable[[Scorer, NDArray[np.int64]], Awaitable[NDArray[np.float32]]]


class _Batch:
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.rows: list[NDArray[np.int64]] = []
        self.waiting: list[asyncio.Future[float]] = []
        self.hits: list[asyncio.Future[None]] = []  # cache hits answered with this batch


class MissCoalescer:
    """Scores rows that missed the cache in batches formed by the event loop.

    Args:
        run: scores a ``(N, F)`` block with a scorer (raises ``ScoringError``); every
            waiting request gets that error when the call fails.
        run_in_thread: the same, in a scoring thread.
        max_rows: rows in one call at most (``CTR_COALESCE_MAX_ROWS``).
        max_seconds: and, on the event loop, no more than the scorer scores in this long
            (``CTR_COALESCE_MAX_MS``).
        thread_seconds: the calls of a scorer whose row costs more than this run in the
            scoring threads (``CTR_COALESCE_THREAD_MS``).
    """

    def __init__(
        self,
        run: RunBatch,
        run_in_thread: RunBatchInThread,
        max_rows: int,
        max_seconds: float,
        thread_seconds: float,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._run = run
        self._run_in_thread = run_in_thread
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.thread_seconds = thread_seconds
        self._open: _Batch | None = None
        self._rows_per_call = Overlap()  # misses are scored directly while calls are small
        self._in_thread = 0  # calls running in a scoring thread

    async def score(self, scorer: Scorer, row: NDArray[np.int64]) -> float:
        """The score of one encoded row ``(1, F)``, from a call shared with its neighbours."""
        if self._rows_per_call.goes_direct(self._open is None and not self._in_thread):
            return float(self._run(scorer, row)[0])
        loop = asyncio.get_running_loop()
        batch = self._open
        if batch is None or batch.scorer is not scorer:
            if batch is not None:  # a swap: the old version's rows are scored now
                self._start(batch)
            batch = self._open_batch(scorer)
        waiting: asyncio.Future[float] = loop.create_future()
        batch.rows.append(row)
        batch.waiting.append(waiting)
        if len(batch.rows) >= self._capacity(scorer):
            self._start(batch)
        return await waiting

    async def in_step(self, scorer: Scorer) -> None:
        """Return when this turn's batch of misses is scored (or handed to a scoring
        thread), so that a cache hit is answered together with them; at once while misses
        are scored directly (nothing to keep step with) or a call is in a scoring thread
        (the batch then waits for that call, and a hit need not).

        A hit that comes before any miss of its turn opens the turn's batch, which is
        scored (or, empty, only closed) in the next turn all the same.
        """
        if not self._rows_per_call.pooling or self._in_thread:
            return
        batch = self._open
        if batch is None:
            batch = self._open_batch(scorer)
        elif batch.scorer is not scorer:
            return  # a swap: the old version's batch is not this hit's turn
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.hits.append(answered)
        await answered

    def _open_batch(self, scorer: Scorer) -> _Batch:
        """The batch this turn's requests join, scored in the next turn of the loop."""
        batch = self._open = _Batch(scorer)
        asyncio.get_running_loop().call_soon(self._flush, batch)
        return batch

    def _threaded(self, scorer: Scorer) -> bool:
        return scorer.row_seconds > self.thread_seconds

    def _capacity(self, scorer: Scorer) -> int:
        if self._threaded(scorer):
            return self.max_rows
        return min(self.max_rows, scorer.rows_within(self.max_seconds))

    def _flush(self, batch: _Batch) -> None:
        """The turn after a batch opened: score it, unless a call is still in a scoring
        thread; then it goes on gathering and is scored when that call returns."""
        if not (self._in_thread and batch is self._open):
            self._start(batch)

    def _start(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None
        rows, waiting, hits = batch.rows, batch.waiting, batch.hits
        if not rows and not hits:
            return  # already scored when it filled up
        batch.rows, batch.waiting, batch.hits = [], [], []
        # A turn of hits only counts as a call of no rows: hits alone have no misses to keep
        # step with, and a stream of repeats stops being held after a few such turns.
        self._rows_per_call.formed(len(rows))
        for answered in hits:
            if not answered.done():  # a request cancelled by its deadline is skipped
                answered.set_result(None)
        if not rows:
            return
        block = np.concatenate(rows)
        if self._threaded(batch.scorer) and len(rows) > 1:
            self._in_thread += 1
            call = asyncio.ensure_future(self._run_in_thread(batch.scorer, block))
            call.add_done_callback(lambda done: self._returned(done, waiting))
            return
        try:
            scores = self._run(batch.scorer, block)
        except Exception as exc:  # handed to every request of the batch, which answers it
            _fail(waiting, exc)
            return
        _deliver(waiting, scores)

    def _returned(
        self, done: asyncio.Future[NDArray[np.float32]], waiting: list[asyncio.Future[float]]
    ) -> None:
        self._in_thread -= 1
        if done.cancelled():  # the loop is closing: so are the requests that wait for it
            for future in waiting:
                future.cancel()
        elif (error := done.exception()) is not None:
            _fail(waiting, error)
        else:
            _deliver(waiting, done.result())
        if self._open is not None and not self._in_thread:
            self._start(self._open)


def _deliver(waiting: list[asyncio.Future[float]], scores: NDArray[np.float32]) -> None:
    for future, score in zip(waiting, scores.tolist(), strict=True):
        if not future.done():  # a request cancelled by its deadline is skipped
            future.set_result(score)


def _fail(waiting: list[asyncio.Future[float]], error: BaseException) -> None:
    for future in waiting:
        if not future.done():
            future.set_exception(error)
