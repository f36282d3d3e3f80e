"""Shadow scoring: a sample of a model's requests scored again by another version, off their
path, to compare the two on live traffic.

```
PredictionService.score ─► offer (queue full? dropped, counted) ─► bounded queue of jobs
     one thread, nice +19, PERIOD_S after a job comes: take everything queued; per shadow,
     its jobs' rows at once: the model's cache, the misses in one onnxruntime call, stored
     ─► score differences and outcomes tallied (─► the prediction log, on the request's
     event loop, when the request is logged)
```

The request only appends its job: everything else runs on the shadow's own thread, in a
few numpy calls and one onnxruntime call per shadow version a period whatever the jobs'
count, and at nice +19, so under load it yields the CPU to the requests' threads and event
loop, its queue fills and shadows are dropped and counted, rather than requests slowed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from app.cache import ScoreCache
from app.metrics import Tally
from app.model.scorer import Calls, Scorer

logger = logging.getLogger(__name__)

NICENESS = 19
# A shadow's answer is wanted by nobody waiting: the jobs that come within this long of
# the first are scored together (docs/MANY_MODELS.md).
PERIOD_S = 0.01
# Told the shadow's scores of a job (None: dropped or failed), on the request's event loop.
Done = Callable[[NDArray[np.float32] | None], None]


@dataclass(eq=False)
class ShadowJob:
    """One request to score again: its rows encoded for the shadow version, and what the
    version that answered it scored."""

    model: str
    cache: ScoreCache
    primary: Scorer
    shadow: Scorer
    indices: NDArray[np.int64]
    scores: NDArray[np.float32]
    done: Done | None = None
    loop: asyncio.AbstractEventLoop | None = None
    context: contextvars.Context | None = None  # the request's: its id, for the log
    told: bool = False  # done() was called (once: by the thread, or by close())


class ShadowScorer:
    """One thread scoring the shadow jobs of a bounded queue, a period's worth at a time.

    Args:
        tally: where outcomes and score differences are counted.
        max_queued_rows: rows waiting at most; a job past it is dropped and counted.
    """

    def __init__(self, tally: Tally, max_queued_rows: int) -> None:
        self._tally = tally
        self.max_queued_rows = max_queued_rows
        self._jobs: list[ShadowJob] = []
        self._running: list[ShadowJob] = []  # taken by the thread, not all told yet
        self._closed = False
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Set by a job: the thread sleeps while none comes, rather than waking every period
        # (100 wake-ups a second of an idle worker, each taking the GIL from the event loop).
        self._queued = threading.Event()
        self._calls = Calls()  # stopped by close() when a call outlives its wait
        self._thread = threading.Thread(target=self._work, name="ctr-shadow", daemon=True)
        self._thread.start()

    def offer(self, job: ShadowJob) -> None:
        """Queue ``job``, or drop and count it when the queue is full (never waits)."""
        rows = len(job.indices)
        with self._lock:
            admitted = self._queued_rows + rows <= self.max_queued_rows
            if admitted:
                self._jobs.append(job)
                self._queued_rows += rows
        if admitted:
            self._queued.set()
        else:
            self._count(job, "dropped", 1)
            job.told = True
            if job.done is not None:
                job.done(None)

    def close(self) -> None:
        """Score what is queued, then stop the thread. What it has not taken within 5 s
        (at nice +19 on a busy machine it may not run at all) is dropped and told so, so
        each request is still logged, without a shadow score."""
        self._stop.set()
        self._queued.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._closed = True  # a call still running is told nothing more
            left = [job for job in [*self._running, *self._jobs] if not job.told]
            self._jobs, self._queued_rows = [], 0
        for job in left:
            self._count(job, "dropped", 1)
            self._tell(job, None)
        self._calls.stop(self._thread)

    def _work(self) -> None:
        # Linux schedules threads on their own: this one alone becomes nicer.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
        while self._queued.wait() and not self._stop.wait(PERIOD_S):
            self._queued.clear()  # before taking: a job offered from here on sets it again
            self._drain()
        self._drain()

    def _drain(self) -> None:
        with self._lock:
            jobs, self._jobs, self._queued_rows = self._jobs, [], 0
            self._running = jobs
        groups: dict[tuple[int, int], list[ShadowJob]] = {}
        for job in jobs:  # one model's default version and its shadow, usually one group
            groups.setdefault((id(job.primary), id(job.shadow)), []).append(job)
        for group in groups.values():
            try:
                self._run(group)
            except Exception:  # the thread must outlive any one bad call
                with self._lock:
                    if self._closed:  # close() stopped the call, and told its jobs
                        return
                logger.exception("shadow scoring of model %s failed", group[0].model)
                self._count(group[0], "failed", len(group))
                for job in group:
                    self._tell(job, None)

    def _run(self, jobs: list[ShadowJob]) -> None:
        first = jobs[0]
        indices = np.concatenate([job.indices for job in jobs])
        lookup = first.cache.lookup(first.shadow.version, indices)
        misses = lookup.misses
        if len(misses):
            lookup.scores[misses] = first.shadow.score_indices(indices[misses], self._calls)
            first.cache.store(lookup)
        scores = lookup.scores
        with self._lock:
            if self._closed:  # close() gave up waiting and told these jobs already
                return
        self._count(first, "scored", len(jobs), scores - np.concatenate([j.scores for j in jobs]))
        offset = 0
        for job in jobs:
            rows = len(job.indices)
            self._tell(job, scores[offset : offset + rows])
            offset += rows

    def _tell(self, job: ShadowJob, scores: NDArray[np.float32] | None) -> None:
        with self._lock:
            if job.told:
                return
            job.told = True
        if job.done is not None and job.loop is not None:
            try:
                job.loop.call_soon_threadsafe(job.done, scores, context=job.context)
            except RuntimeError:  # the loop closed meanwhile (shutdown): nobody waits
                logger.debug("a shadow finished after its event loop closed")

    def _count(
        self,
        job: ShadowJob,
        outcome: str,
        requests: int,
        differences: NDArray[np.float32] | None = None,
    ) -> None:
        primary = job.primary
        self._tally.shadowed(
            job.model,
            primary.version,
            primary.encoder.names,
            job.shadow.version,
            outcome,
            differences,
            requests,
        )
