"""ScoreCache: LRU size bound, TTL expiry (fake clock), the versions loaded sharing one
budget and never each other's entries, second-sight admission of batch rows, disabled mode,
thread safety."""

import threading

import numpy as np
import pytest

from app.cache import Doorkeeper, ScoreCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rows(*values: int) -> np.ndarray:
    """One 3-field row per value."""
    return np.array([[v, v + 1, 2] for v in values], dtype=np.int64)


def _cache(maxsize: int = 10, ttl_s: float = 60, **kwargs: object) -> ScoreCache:
    cache = ScoreCache(maxsize, ttl_s, **kwargs)  # type: ignore[arg-type]
    cache.serve({"v1": 1000})
    return cache


def _score(cache: ScoreCache, rows: np.ndarray, version: str = "v1") -> list[bool]:
    """Look rows up, 'score' the misses as value / 100, store; which rows were hits."""
    lookup = cache.lookup(version, rows)
    lookup.scores[~lookup.hits] = rows[~lookup.hits, 0] / 100
    cache.store(lookup)
    return lookup.hits.tolist()


def test_single_row_hit_after_miss() -> None:
    cache = _cache()
    assert _score(cache, _rows(1)) == [False]
    lookup = cache.lookup("v1", _rows(1))
    assert lookup.hits.tolist() == [True]
    assert lookup.scores[0] == pytest.approx(0.01)


def test_batch_rows_are_cached_from_their_second_sight() -> None:
    cache = _cache()
    assert _score(cache, _rows(1, 2)) == [False, False]  # first sight: not even looked up
    assert len(cache) == 0
    assert _score(cache, _rows(1, 2, 3)) == [False, False, False]  # seen: stored now
    assert len(cache) == 2
    assert _score(cache, _rows(1, 2, 3)) == [True, True, False]
    assert _score(cache, _rows(4)) == [False]  # a single row is stored at first sight
    assert _score(cache, _rows(4, 5)) == [True, False]


def test_keys_are_the_version_slot_then_the_row_in_the_smallest_type() -> None:
    cache = ScoreCache(10, 60)
    cache.serve({"v1": 200})
    slot = cache.lookup("v1", _rows(7)).slot
    assert slot is not None
    assert cache.keys(slot, _rows(7)) == [bytes([1, 0, 0, 0, 7, 8, 2])]
    cache.serve({"v2": 70_000})  # v1 unloaded: v2 gets a number never used before
    slot = cache.lookup("v2", _rows(7)).slot
    assert slot is not None
    expected = np.array([2, 7, 8, 2], dtype=np.uint32).tobytes()
    assert cache.keys(slot, _rows(7)) == [expected]
    single = cache.lookup("v2", _rows(7))
    assert single.keys == [expected]  # the single-row path makes the same key


def test_ttl_expiry() -> None:
    clock = FakeClock()
    cache = _cache(ttl_s=30, timer=clock)
    _score(cache, _rows(1))
    clock.now = 29.9
    assert cache.lookup("v1", _rows(1)).hits.tolist() == [True]
    clock.now = 30.1
    assert cache.lookup("v1", _rows(1)).hits.tolist() == [False]
    assert len(cache) == 0  # the expired entry left when it was looked up


def test_lru_bound() -> None:
    cache = _cache(maxsize=2)
    _score(cache, _rows(1))
    _score(cache, _rows(2))
    _score(cache, _rows(1))  # 1 is now the most recently used
    _score(cache, _rows(3))
    assert [cache.lookup("v1", _rows(v)).hits[0] for v in (1, 2, 3)] == [True, False, True]
    assert len(cache) == 2


def test_versions_loaded_together_keep_their_own_scores() -> None:
    cache = _cache()
    cache.serve({"v1": 1000, "canary": 1000})
    _score(cache, _rows(1))
    assert cache.lookup("canary", _rows(1)).hits.tolist() == [False]  # not v1's score
    lookup = cache.lookup("canary", _rows(1))
    lookup.scores[:] = 0.7
    cache.store(lookup)
    assert cache.lookup("v1", _rows(1)).scores[0] == pytest.approx(0.01)
    assert cache.lookup("canary", _rows(1)).scores[0] == pytest.approx(0.7)
    assert len(cache) == 2  # one budget for both


def test_a_version_unloaded_is_never_read_or_written_again() -> None:
    cache = _cache()
    _score(cache, _rows(1))
    in_flight = cache.lookup("v1", _rows(2))  # a request scored by v1 ...
    cache.serve({"v2": 1000})  # ... while v2 takes over
    in_flight.scores[:] = 0.5
    cache.store(in_flight)
    assert len(cache) == 1  # only v1's first entry, which nothing reads again
    assert cache.lookup("v1", _rows(1)).hits.tolist() == [False]  # nothing of v1 is served
    assert _score(cache, _rows(1), "v2") == [False]
    cache.serve({"v2": 1000, "v1": 1000})  # v1 loaded again: a new slot, nothing stale
    assert cache.lookup("v1", _rows(1)).hits.tolist() == [False]
    lookup = cache.lookup("v2", _rows(1))
    assert lookup.hits.tolist() == [True]
    assert lookup.scores[0] == pytest.approx(0.01)


def test_size_zero_disables() -> None:
    cache = _cache(maxsize=0)
    assert _score(cache, _rows(1)) == [False]
    assert _score(cache, _rows(1)) == [False]
    assert not cache.enabled
    assert len(cache) == 0


@pytest.mark.parametrize(("maxsize", "ttl"), [(-1, 1.0), (1, 0.0)])
def test_bad_arguments(maxsize: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        ScoreCache(maxsize, ttl)


def test_doorkeeper_remembers_one_generation_back() -> None:
    doorkeeper = Doorkeeper(capacity=100)  # a new generation after every 100 marks
    old, new = _rows(*range(10)), _rows(*range(500, 510))
    assert not doorkeeper.seen(old).any()
    for _ in range(10):  # 110 marks: generation 2 starts
        assert doorkeeper.seen(old).all()
    assert not doorkeeper.seen(new).any()
    assert doorkeeper.seen(old).all()  # known from the previous generation
    for _ in range(20):  # two more generations of new rows only
        doorkeeper.seen(new)
    assert not doorkeeper.seen(old).any()  # aged out


def test_doorkeeper_rarely_takes_a_new_row_for_a_seen_one() -> None:
    """A false positive costs a one-off row a cache lookup and a store: at a full
    generation and a half of distinct rows, few new rows may pass as seen."""
    capacity = 4096
    doorkeeper = Doorkeeper(capacity)
    rows = np.random.default_rng(1).integers(0, 2**31, size=(capacity * 5 // 2, 10))
    doorkeeper.seen(rows[: capacity * 3 // 2])  # the previous generation full, the current half
    false_positive = doorkeeper.seen(rows[capacity * 3 // 2 :]).mean()
    assert false_positive < 0.06


def test_consistent_under_threads() -> None:
    cache = _cache(maxsize=500)
    errors: list[str] = []
    lookups = [0]

    def worker(seed: int) -> None:
        for i in range(2000):
            value = (seed * 7 + i) % 800
            lookup = cache.lookup("v1", _rows(value))
            lookups[0] += 1
            if lookup.hits[0] and lookup.scores[0] != np.float32(value / 100):
                errors.append(f"{value} -> {lookup.scores[0]}")
            lookup.scores[:] = value / 100
            cache.store(lookup)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert 0 < len(cache) <= 500
    assert lookups[0] == 8 * 2000


KEY = ("v1", b"\x01" * 80)
