"""ScoreCache: LRU size bound, TTL expiry (fake clock), disabled mode, thread safety."""

import threading

import pytest

from app.cache import ScoreCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hit_after_miss_and_counts() -> None:
    cache = ScoreCache(10, 60)
    assert cache.get_many(["a"]) == [None]
    cache.put_many(["a"], [0.5])
    assert cache.get_many(["a", "b"]) == [0.5, None]
    assert (cache.hits, cache.misses) == (1, 2)


def test_ttl_expiry() -> None:
    clock = FakeClock()
    cache = ScoreCache(10, ttl_s=30, timer=clock)
    cache.put_many(["a"], [0.1])
    clock.now = 29.9
    assert cache.get_many(["a"]) == [0.1]
    clock.now = 30.1
    assert cache.get_many(["a"]) == [None]
    assert len(cache) == 0


def test_lru_bound() -> None:
    cache = ScoreCache(2, 60)
    cache.put_many(["a", "b"], [1.0, 2.0])
    cache.get_many(["a"])  # a is now the most recently used
    cache.put_many(["c"], [3.0])
    assert cache.get_many(["a", "b", "c"]) == [1.0, None, 3.0]
    assert len(cache) == 2


def test_size_zero_disables() -> None:
    cache = ScoreCache(0, 60)
    cache.put_many(["a"], [1.0])
    assert cache.get_many(["a"]) == [None]
    assert not cache.enabled
    assert len(cache) == 0


@pytest.mark.parametrize(("maxsize", "ttl"), [(-1, 1.0), (1, 0.0)])
def test_bad_arguments(maxsize: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        ScoreCache(maxsize, ttl)


def test_consistent_under_threads() -> None:
    cache = ScoreCache(500, 60)
    errors: list[str] = []

    def worker(seed: int) -> None:
        for i in range(2000):
            key = (seed * 7 + i) % 800
            value = cache.get_many([key])[0]
            if value is not None and value != key / 1000:
                errors.append(f"{key} -> {value}")
            cache.put_many([key], [key / 1000])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 500
    assert cache.hits + cache.misses == 8 * 2000
