"""onnxruntime calls run in threads of their own and answered on the event loop.

onnxruntime releases the GIL while it scores, so a call in another thread leaves the event
loop the CPU to parse and encode the next requests. The hop there and back is what costs:
while a pool thread runs Python, the event loop waits for the GIL. ``asyncio.to_thread``
goes through concurrent.futures, whose submit, work queue, future and idle semaphore each
take a lock both threads contend for, and through a second, asyncio future chained to the
first. Here a call is one put on a thread's own ``queue.SimpleQueue`` (C, one lock) and one
``call_soon_threadsafe`` back; the asyncio future, and the count of each thread's calls, are
touched by the event loop alone.

Measured side by side (wrk, 16 connections, three 5 s rounds), 100-row all-miss batches of
the default model: 1,529 req/s here against 1,277 through ``asyncio.to_thread`` and 1,214
through ``anyio.to_thread.run_sync``. With these threads the event loop ran 85% of the
time, against 78% (the rest: waiting for the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_Result = TypeVar("_Result")
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset, not the host's count)."""
    return len(os.sched_getaffinity(0))


class ScoringThreads:
    """A fixed set of daemon threads running blocking calls for the event loop.

    Each thread has a queue of its own, and a call goes to the first thread with the fewest
    calls handed to it and not yet answered: the first thread while it is free, a second
    only while the first is busy. With one queue shared by two threads, whichever thread
    woke took the call, and the 39-field NFFM's single rows, whose coalesced calls go to a
    thread one at a time, were served faster with one thread than with two (3,731 req/s
    against 3,173; wrk, 16 connections, four rounds side by side), while its 100-row
    batches, where onnxruntime is the bottleneck, needed the second (212 against 152).
    Dispatched this way, two threads served those single rows at 4,910 against 3,927 req/s
    (four rounds; 4,221 against 3,908 in six more), 6,077 against 4,406 at 64 connections,
    the batches at 227 against 225 and 90%-hit batches at 1,096 against 925. Why the shared
    queue lost is not pinned down: in process, calls handed to two threads in turn, never
    at once, took as long as calls on one.

    Args:
        threads: how many; calls beyond that wait in a thread's queue, first come first
            served.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._queues: list[queue.SimpleQueue[_Call | None]] = [
            queue.SimpleQueue() for _ in range(threads)
        ]
        # Calls handed to each thread and not yet answered; read and written on the event
        # loop only (a call is counted off when its answer is back there, even for a caller
        # that stopped waiting), so no lock.
        self._pending = [0] * threads
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"ctr-scoring-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, call: Callable[[], _Result]) -> _Result:
        """``call()``'s result (or its exception), computed in one of the threads."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        pending = self._pending
        chosen = pending.index(min(pending))  # the first of the least busy
        pending[chosen] += 1
        self._queues[chosen].put((loop, future, call))
        return await future

    def close(self) -> None:
        """Stop the threads once the calls already queued are done."""
        for calls in self._queues:
            calls.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _work(self, thread: int) -> None:
        calls = self._queues[thread]
        while (item := calls.get()) is not None:
            loop, future, call = item
            try:
                answer: tuple[bool, Any] = (True, call())
            except BaseException as exc:  # handed to the awaiting request, which answers it
                answer = (False, exc)
            try:
                loop.call_soon_threadsafe(self._settle, thread, future, answer)
            except RuntimeError:  # the loop closed while the call ran (shutdown): nobody waits
                logger.debug("a scoring call finished after its event loop closed")

    def _settle(self, thread: int, future: asyncio.Future[Any], answer: tuple[bool, Any]) -> None:
        """On the event loop: count the call off its thread and answer its caller."""
        self._pending[thread] -= 1
        if future.done():  # a request cancelled by its deadline is skipped
            return
        succeeded, value = answer
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)
