"""The one in-process timer the benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``call`` over ``repeats`` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_medians(
    call: Callable[[], object], other: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median wall times of ``call`` and of ``other``, each ``other`` run timed right after
    a ``call``: whatever the machine does meanwhile falls on both."""
    calls, others = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        between = time.perf_counter()
        other()
        calls.append(between - started)
        others.append(time.perf_counter() - between)
    return statistics.median(calls), statistics.median(others)
