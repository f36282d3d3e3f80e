"""Concurrent single-row cache misses scored together, in one onnxruntime call.

A production-size model's row costs most in its first dense layer, a matrix-vector product
that reads the whole weight matrix for one row; scored together, N rows read it once. The
event loop gives the batching for free: requests that arrive together are started in the
same turn of the loop, so a miss that opens a batch schedules its scoring for the next turn
(``call_soon``) and every miss of that turn joins it. There is no timer: a busy service
waits at most for the requests already started, and a batch that reaches ``max_rows`` is
scored at once. A service without concurrent misses does not wait at all: after a batch of
one row, the next ``LONE_SKIP`` misses are scored directly (the extra turn and future cost
~15 µs, 5% of a toy model's miss), and batching is tried again after them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from app.scoring.scorer import Scorer

RunBatch = Callable[[Scorer, NDArray[np.int64]], NDArray[np.float32]]
LONE_SKIP = 16


class _Batch:
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.rows: list[NDArray[np.int64]] = []
        self.waiting: list[asyncio.Future[float]] = []


class MissCoalescer:
    """Scores rows that missed the cache in batches formed by the event loop.

    Args:
        run: scores a ``(N, F)`` block with a scorer (raises ``ScoringError``); every
            waiting request gets that error when the call fails.
        max_rows: rows in one call at most (``CTR_COALESCE_MAX_ROWS``).
        max_seconds: and no more than the scorer scores in this long (the call runs on the
            event loop, so it is held to a budget, ``CTR_COALESCE_MAX_MS``).
    """

    def __init__(self, run: RunBatch, max_rows: int, max_seconds: float) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._run = run
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._open: _Batch | None = None
        self._direct = 0  # misses to score directly before batching is tried again

    async def score(self, scorer: Scorer, row: NDArray[np.int64]) -> float:
        """The score of one encoded row ``(1, F)``, from a call shared with its neighbours."""
        if self._direct > 0 and self._open is None:
            self._direct -= 1
            return float(self._run(scorer, row)[0])
        batch = self._open
        if batch is None or batch.scorer is not scorer:  # a swap starts a batch of its own
            batch = self._open = _Batch(scorer)
            asyncio.get_running_loop().call_soon(self._flush, batch)
        waiting: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        batch.rows.append(row)
        batch.waiting.append(waiting)
        if len(batch.rows) >= min(self.max_rows, scorer.rows_within(self.max_seconds)):
            self._flush(batch)
        return await waiting

    def _flush(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None
        if not batch.rows:
            return  # already flushed when it filled up
        rows, waiting = batch.rows, batch.waiting
        batch.rows, batch.waiting = [], []
        if len(rows) == 1:
            self._direct = LONE_SKIP
        try:
            scores = self._run(batch.scorer, np.concatenate(rows)).tolist()
        except Exception as exc:  # handed to every request of the batch, which answers it
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, score in zip(waiting, scores, strict=True):
            if not future.done():  # a request cancelled by its deadline is skipped
                future.set_result(score)
