"""The cache misses of concurrent batch requests, decoded, encoded and scored together.

A batch that is mostly repeats is answered largely from the response cache, by its rows'
text (app/scoring/service.py), and leaves a few rows to decode, encode, look up in the
score cache and score. Each of those steps costs something a call whatever its rows: a
numpy call or more a field to encode, the doorkeeper's hash and tables, a hop to a scoring
thread. Ten rows do not pay for it: in process, on the 39-field production NFFM, the miss
path took 50 µs of the event loop a row in calls of 10 rows, 33 in calls of 20 and 29 in
calls of 40 (fresh rows each). The event loop is what sets the pace of such batches, so the
requests that reach their misses in the same turn of the loop pool them, as
:class:`~app.scoring.coalescer.MissCoalescer` pools single rows: the first opens a pool and
schedules it for the next turn (``call_soon``), every request of this turn joins it, and
the next turn decodes, encodes, looks up and scores all of its rows in one go, in one task.
No timer: a pool that reaches ``max_rows`` goes at once. On 90%-hit batches of that model
(~10 misses each; wrk, 16 connections, rounds side by side) pools of up to 64 rows served
1,311 req/s against 989 with each batch alone, at 1,159 µs of CPU a request against 1,564;
the 10-field default model 2,421 against 1,777, the DeepFM 1,529 against 820.

Pools are capped at ``max_rows`` because a pool's call runs in one scoring thread: capped
at 256 rows they grew to ~4 requests, every request of a pool waited for its one long call,
and the event loop sat idle a third of the time (1,101 req/s); capped at 20 they held two
requests and saved too little (1,036).

A service whose batches do not overlap does not pool: while pools held fewer than 1.5
requests on average, a request's misses are scored in its own task at once, and one in 16
still tries pooling, so that pooling comes back as soon as requests overlap again
(app/scoring/overlap.py). At one connection every pool held one request, and the
extra turn and task cost 16% of the req/s (389 against 461); scored directly, 546 against
535.

Errors stay each request's own. A pool whose rows do not decode or encode together is
encoded request by request: a request with a bad row gets the error it would have got
alone, naming the row by its place in that request, and the others are scored together
all the same. A failed onnxruntime call fails every request of the pool, as it would have
failed each of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from app.features.errors import EncodeError
from app.scoring.overlap import Overlap
from app.scoring.scorer import Scorer

# Rows' scores, and which of them the score cache held.
Answer = tuple[NDArray[np.float32], NDArray[np.bool_]]
# A pool's rows decoded and encoded in one go; None when they are not the model's row shape
# (or a value does not encode: raises). The rows then go request by request:
EncodeRows = Callable[[Scorer, Sequence[bytes]], NDArray[np.int64] | None]
# one request's rows, its body, and each row's place in it; raises what is wrong, naming
# the row by that place.
EncodeRequest = Callable[[Scorer, Sequence[bytes], bytes, Sequence[int]], NDArray[np.int64]]
# Encoded rows looked up in the score cache and their misses scored. The seconds the
# requests spent in the caches before (their rows' text looked up) are counted with the
# pool's own.
ScoreEncoded = Callable[[Scorer, NDArray[np.int64], float], Awaitable[Answer]]


@dataclass
class _Request:
    rows: Sequence[bytes]
    body: bytes
    places: Sequence[int]
    cache_s: float
    answer: asyncio.Future[Answer]


@dataclass
class _Pool:
    scorer: Scorer
    requests: list[_Request] = field(default_factory=list)
    rows: int = 0


class BatchMissPool:
    """Pools the rows batch requests could not answer from the response cache, a turn of
    the event loop at a time.

    Args:
        encode_rows: decodes and encodes a pool's rows in one call.
        encode_request: decodes and encodes one request's rows, naming a bad one.
        score: looks up encoded rows in the score cache and scores the misses.
        max_rows: a pool that reaches this many rows is scored at once.
    """

    def __init__(
        self,
        encode_rows: EncodeRows,
        encode_request: EncodeRequest,
        score: ScoreEncoded,
        max_rows: int,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._encode_rows = encode_rows
        self._encode_request = encode_request
        self._score = score
        self.max_rows = max_rows
        self._open: _Pool | None = None
        self._requests_per_pool = Overlap()  # scored at once while pools hold one request
        self._running: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    async def score(
        self,
        scorer: Scorer,
        rows: Sequence[bytes],
        body: bytes,
        places: Sequence[int],
        cache_s: float,
    ) -> Answer:
        """The scores of one request's missed ``rows`` (text of ``body``'s rows at
        ``places``) and which of them the score cache held, from a call shared with the
        other requests of this turn (``cache_s``: the request's time in the caches so
        far). Raises what encoding this request's rows raises, or what scoring the pool
        raised."""
        if self._requests_per_pool.goes_direct(self._open is None):
            return await self._score(
                scorer, self._encode_request(scorer, rows, body, places), cache_s
            )
        loop = asyncio.get_running_loop()
        pool = self._open
        if pool is None or pool.scorer is not scorer:
            if pool is not None:  # a swap: the old version's rows are scored now
                self._start(pool)
            pool = self._open = _Pool(scorer)
            loop.call_soon(self._start, pool)
        answer: asyncio.Future[Answer] = loop.create_future()
        pool.requests.append(_Request(rows, body, places, cache_s, answer))
        pool.rows += len(rows)
        if pool.rows >= self.max_rows:
            self._start(pool)
        return await answer

    def _start(self, pool: _Pool) -> None:
        if self._open is pool:
            self._open = None
        if not pool.requests:
            return  # already started when it filled up
        requests, pool.requests = pool.requests, []
        self._requests_per_pool.formed(len(requests))
        task = asyncio.ensure_future(self._answer(pool.scorer, requests))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, scorer: Scorer, requests: list[_Request]) -> None:
        """Encode and score the pool; every request's future is settled, whatever happens."""
        try:
            encoded = self._encoded(scorer, requests)
            if encoded:
                block = np.concatenate([indices for _, indices in encoded])
                cache_s = sum(request.cache_s for request, _ in encoded)
                scores, hits = await self._score(scorer, block, cache_s)
                start = 0
                for request, indices in encoded:
                    end = start + len(indices)
                    _settle(request.answer, result=(scores[start:end], hits[start:end]))
                    start = end
        except asyncio.CancelledError:  # the loop is closing: so are the requests waiting
            for request in requests:
                request.answer.cancel()
            raise
        except Exception as exc:  # scoring failed: every request still waiting hears why
            for request in requests:
                _settle(request.answer, error=exc)

    def _encoded(
        self, scorer: Scorer, requests: list[_Request]
    ) -> list[tuple[_Request, NDArray[np.int64]]]:
        """Each request still waiting with its encoded rows; a request whose rows do not
        encode gets its error here and is left out."""
        waiting = [request for request in requests if not request.answer.done()]
        if len(waiting) > 1:
            rows = [row for request in waiting for row in request.rows]
            try:
                block = self._encode_rows(scorer, rows)
            except EncodeError:  # found again request by request, below
                block = None
            if block is not None:
                bounds = np.cumsum([len(request.rows) for request in waiting])[:-1]
                return list(zip(waiting, np.split(block, bounds), strict=True))
        encoded = []
        for request in waiting:
            try:
                indices = self._encode_request(scorer, request.rows, request.body, request.places)
            except Exception as exc:  # this request's alone: the others go on
                request.answer.set_exception(exc)
            else:
                encoded.append((request, indices))
        return encoded


def _settle(
    answer: asyncio.Future[Answer],
    result: Answer | None = None,
    error: BaseException | None = None,
) -> None:
    if answer.done():  # a request cancelled by its deadline is skipped
        return
    if error is not None:
        answer.set_exception(error)
    elif result is not None:
        answer.set_result(result)
