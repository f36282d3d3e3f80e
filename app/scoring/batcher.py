"""Cache misses scored by onnxruntime threads: a bounded queue drained by whichever is free.

```
request ─► put (queue full? → Overloaded: 503 + Retry-After) ─► queue of jobs
                                     free thread: take the head and the jobs queued for its
                                     model version (≤ max_rows), skip the cancelled, score
                                     them in one call, answer each on its event loop
```

An idle service scores a request alone, the moment it arrives; under load, requests queue
while every thread is busy, and the next free thread takes all of them in one call, so
batches form by themselves with no timer (Triton's dynamic batcher with no delay). A request
cancelled while it waits (its deadline passed, its gRPC client gone) is never scored.
onnxruntime releases the GIL while it scores, so K threads use K cores.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from app.model.scorer import Calls, Scorer

logger = logging.getLogger(__name__)

# (rows, seconds, failed) of one onnxruntime call, told on the loop of its first job.
CallObserver = Callable[[int, float, bool], None]


class OverloadedError(RuntimeError):
    """The queue is full: the service is past what it can answer in time (answered 503)."""


@dataclass(eq=False)
class _Job:
    scorer: Scorer
    indices: NDArray[np.int64]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[NDArray[np.float32]]  # cancelled: the threads skip the job


class Batcher:
    """K daemon threads scoring the jobs of one bounded queue.

    Args:
        threads: onnxruntime calls at once (``CTR_SCORING_THREADS``; default: the CPUs of
            the container's quota).
        max_rows: a thread takes queued jobs up to this many rows into one call (a single
            job larger than that is scored alone).
        max_queued_rows: rows waiting at most; a job that would pass it is refused with
            :class:`OverloadedError` at once, never queued to time out later.
        observe: told each call's rows, seconds and whether it failed, on the event loop.
    """

    def __init__(
        self,
        threads: int,
        max_rows: int,
        max_queued_rows: int,
        observe: CallObserver | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_queued_rows < max_rows:
            raise ValueError(f"max_queued_rows must be >= max_rows ({max_rows})")
        self.max_rows = max_rows
        self.max_queued_rows = max_queued_rows
        self._observe = observe
        self._jobs: deque[_Job] = deque()
        self._queued_rows = 0
        self._ready = threading.Condition(threading.Lock())
        # A thread was woken for the queue and has not taken from it yet: it takes what
        # arrives meanwhile too, so no second thread wakes to find nothing (a wake-up takes
        # the GIL from the event loop).
        self._waking = False
        self._calls = Calls()  # stopped by close() when a call outlives its wait
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"ctr-scoring-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def score(self, scorer: Scorer, indices: NDArray[np.int64]) -> NDArray[np.float32]:
        """The scores of ``(N, F)`` encoded rows (raises ``ScoringError``, or
        :class:`OverloadedError` at once when the queue is full). A request cancelled while
        it waits cancels its job's future, and a thread skips a cancelled job."""
        loop = asyncio.get_running_loop()
        job = _Job(scorer, indices, loop, loop.create_future())
        rows = len(indices)
        with self._ready:
            if self._closed:
                raise OverloadedError("the service is shutting down")
            if self._queued_rows and self._queued_rows + rows > self.max_queued_rows:
                raise OverloadedError(
                    f"{self._queued_rows} rows are waiting to be scored "
                    f"(CTR_MAX_QUEUED_ROWS={self.max_queued_rows}); try again shortly"
                )
            self._jobs.append(job)
            self._queued_rows += rows
            if not self._waking:
                self._waking = True
                self._ready.notify()
        return await job.future

    def close(self) -> None:
        """Stop the threads once the jobs already queued are scored; a thread still in a
        call after 5 s has that call stopped (its requests get the ScoringError, a 503)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
            self._calls.stop(thread)

    def _take(self) -> list[_Job] | None:
        """The next call's jobs: the queue's head and the jobs queued after it for the same
        model version while they fit in ``max_rows``, wherever they stand (jobs of several
        models interleave: stopping at the first of another would make calls of one row).
        ``None``: closed and drained."""
        with self._ready:
            while not self._jobs:
                if self._closed:
                    return None
                self._ready.wait()
            first = self._jobs.popleft()
            taken, rows = [first], len(first.indices)
            others: list[_Job] = []
            while self._jobs and rows < self.max_rows:
                following = self._jobs.popleft()
                size = len(following.indices)
                if following.scorer is not first.scorer or rows + size > self.max_rows:
                    others.append(following)
                    if len(others) > self.max_rows:  # far enough: keep the rest's order cheap
                        break
                    continue
                taken.append(following)
                rows += size
            self._jobs.extendleft(reversed(others))
            self._queued_rows -= rows
            self._waking = bool(self._jobs)  # what is left is another free thread's
            if self._waking:
                self._ready.notify()
            return taken

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            live = [job for job in taken if not job.future.cancelled()]
            if live:
                self._run(live)

    def _run(self, jobs: list[_Job]) -> None:
        block = jobs[0].indices if len(jobs) == 1 else np.concatenate([j.indices for j in jobs])
        started = time.perf_counter()
        try:
            answer: NDArray[np.float32] | BaseException = jobs[0].scorer.score_indices(
                block, self._calls
            )
        except BaseException as exc:  # handed to every job of the call, which answers it
            answer = exc
        seconds = time.perf_counter() - started
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, int]]] = {}
        offset = 0
        for job in jobs:
            by_loop.setdefault(job.loop, []).append((job, offset))
            offset += len(job.indices)
        first = True
        for loop, placed in by_loop.items():
            observed = (len(block), seconds, isinstance(answer, BaseException)) if first else None
            first = False
            try:
                loop.call_soon_threadsafe(self._settle, placed, answer, observed)
            except RuntimeError:  # the loop closed while the call ran (shutdown): nobody waits
                logger.debug("a scoring call finished after its event loop closed")

    def _settle(
        self,
        placed: list[tuple[_Job, int]],
        answer: NDArray[np.float32] | BaseException,
        observed: tuple[int, float, bool] | None,
    ) -> None:
        """On the event loop: count the call and answer the jobs still waiting."""
        if observed is not None and self._observe is not None:
            self._observe(*observed)
        for job, offset in placed:
            if job.future.done():  # cancelled after the thread took it
                continue
            if isinstance(answer, BaseException):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer[offset : offset + len(job.indices)])
