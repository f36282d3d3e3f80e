"""The score cache's admission against a well-kept W-TinyLFU library, in process.

    .venv/bin/python -m benchmarks.cache_policy     # -> docs/CACHE_POLICY.md

ctrserve's ``ScoreCache`` admits a batch row on its second sight (a doorkeeper bit table in
front of cachetools' LRU) and a single row at once. theine (W-TinyLFU: a count-min sketch
decides admission, a window LRU and a segmented main LRU hold the entries, written in Rust)
is the library the serving-core issue named. Both see the same streams of encoded rows, keyed
the same way, at the same capacity: the share of rows answered, and the time a request spends
in the cache (its lookups, then storing its misses).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from theine import Cache as TheineCache

from app.cache import ScoreCache
from support.reports import machine, markdown_section, relative
from support.servers import ROOT

FIELDS = 10
Rows = NDArray[np.int64]


def _fresh(rng: np.random.Generator, count: int) -> Rows:
    return rng.integers(2, 10_000, size=(count, FIELDS), dtype=np.int64)


def hot_batches(seed: int = 0) -> Iterator[Rows]:
    """100-row batches, 90% of rows from a hot set of 1,000, the rest never seen before."""
    rng = np.random.default_rng(seed)
    hot = _fresh(rng, 1_000)
    for _ in range(3_000):
        rows = hot[rng.integers(0, len(hot), 100)]
        fresh = rng.uniform(size=100) >= 0.9
        rows[fresh] = _fresh(rng, int(fresh.sum()))
        yield rows


def one_off_batches(seed: int = 1) -> Iterator[Rows]:
    """100-row batches of rows never seen before."""
    rng = np.random.default_rng(seed)
    for _ in range(3_000):
        yield _fresh(rng, 100)


def zipf_singles(seed: int = 2) -> Iterator[Rows]:
    """Single rows, Zipf(1.1) over a million distinct rows."""
    rng = np.random.default_rng(seed)
    pool = _fresh(rng, 1_000_000)
    for i in np.minimum(rng.zipf(1.1, size=100_000), len(pool)) - 1:
        yield pool[i : i + 1]


STREAMS: dict[str, Callable[[], Iterator[Rows]]] = {
    "100-row batches, 90% from a hot set of 1,000": hot_batches,
    "100-row batches, all rows new": one_off_batches,
    "single rows, Zipf(1.1) over 1M rows": zipf_singles,
}


def _ours(capacity: int) -> Callable[[Rows], int]:
    cache = ScoreCache(capacity, ttl_s=3600)
    cache.serve({"v": 10_000})

    def request(rows: Rows) -> int:
        lookup = cache.lookup("v", rows)
        lookup.scores[~lookup.hits] = 0.5
        cache.store(lookup)
        return int(lookup.hits.sum())

    return request


def _theine(capacity: int) -> Callable[[Rows], int]:
    cache: TheineCache[bytes, float] = TheineCache(capacity)
    keys = ScoreCache(capacity, ttl_s=3600)  # the same keys: the version's slot, the rows
    keys.serve({"v": 10_000})
    slot = keys.lookup("v", np.zeros((2, 1), dtype=np.int64)).slot
    assert slot is not None

    def request(rows: Rows) -> int:
        hits = 0
        for key in keys.keys(slot, rows):
            _, found = cache.get(key)
            if found:
                hits += 1
            else:
                cache.set(key, 0.5)
        return hits

    return request


def measure(capacity: int) -> list[list[str]]:
    rows = []
    for stream_name, stream in STREAMS.items():
        requests = list(stream())
        total = sum(len(r) for r in requests)
        for name, make in (
            ("ScoreCache (doorkeeper + LRU)", _ours),
            ("theine (W-TinyLFU)", _theine),
        ):
            request = make(capacity)
            started = time.perf_counter()
            hits = sum(request(r) for r in requests)
            seconds = time.perf_counter() - started
            rows.append(
                [stream_name, name, f"{hits / total:.1%}", f"{seconds / len(requests) * 1e6:.1f}"]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--capacity", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/CACHE_POLICY.md")
    args = parser.parse_args()
    table = markdown_section(
        f"Rows answered and time in the cache, capacity {args.capacity:,} rows",
        "Each stream replayed once into a fresh cache of each kind, in this process; time is "
        "the mean a request spends looking its rows up and storing its misses.",
        ["stream", "cache", "rows answered", "µs a request"],
        measure(args.capacity),
    )
    args.out.write_text(
        f"# Score-cache admission\n\n`benchmarks/cache_policy.py` on {machine()}.\n\n{table}"
    )
    print(f"wrote {relative(args.out)}")


if __name__ == "__main__":
    main()
