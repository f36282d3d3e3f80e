"""ScoreCache: LRU size bound, TTL expiry (fake clock), disabled mode, thread safety.
ResponseCache: second-sight admission, byte bound, expiry, version awareness."""

import threading

import pytest

from app.cache import MAX_REPEAT_BODY_BYTES, ResponseCache, ScoreCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hit_after_miss() -> None:
    cache = ScoreCache(10, 60)
    assert cache.get_many(["a"]) == [None]
    cache.put_many(["a"], [0.5])
    assert cache.get_many(["a", "b"]) == [0.5, None]


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
    lookups = [0]

    def worker(seed: int) -> None:
        for i in range(2000):
            key = (seed * 7 + i) % 800
            value = cache.get_many([key])[0]
            lookups[0] += 1
            if value is not None and value != key / 1000:
                errors.append(f"{key} -> {value}")
            cache.put_many([key], [key / 1000])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert 0 < len(cache) <= 500
    assert lookups[0] == 8 * 2000


KEY = ("v1", b"\x01" * 80)
CACHE = ResponseCache(1 << 20, 60)


def _digest(body: bytes) -> bytes:
    digest = CACHE.key(body)
    assert digest is not None
    return digest


def test_response_cache_admits_on_second_sight() -> None:
    responses = ResponseCache(1 << 20, 60)
    digest = _digest(b'{"features":{"c0":"a"}}')
    responses.offer(digest, KEY)
    assert responses.lookup(digest, "v1") is None  # one sighting admits nothing
    responses.offer(digest, KEY)
    assert responses.lookup(digest, "v1") == KEY
    assert responses.lookup(digest, "v2") is None  # another version's row key never serves


def test_response_cache_keys_on_a_digest_and_skips_large_bodies() -> None:
    assert len(_digest(b"{}")) == len(_digest(b"{" + b" " * 8000 + b"}")) == 16
    assert _digest(b"{}") != _digest(b"{ }")
    assert CACHE.key(b"{" + b" " * MAX_REPEAT_BODY_BYTES + b"}") is None  # a batch, not a row


def test_response_cache_is_bounded_in_bytes() -> None:
    budget = 256 * 1024
    responses = ResponseCache(budget, 60)
    for i in range(20_000):
        digest = _digest(str(i).encode())
        responses.offer(digest, ("v1", i.to_bytes(80, "little")))
        responses.offer(digest, ("v1", i.to_bytes(80, "little")))
        assert responses.nbytes <= budget
    admitted = sum(
        responses.lookup(_digest(str(i).encode()), "v1") is not None for i in range(20_000)
    )
    assert 0 < admitted < 20_000  # the newest stay, the oldest were evicted


def test_response_cache_expires() -> None:
    clock = FakeClock()
    responses = ResponseCache(1 << 20, ttl_s=30, timer=clock)
    digest = _digest(b"body")
    responses.offer(digest, KEY)
    clock.now = 31  # a first sight forgotten after the TTL is a first sight again
    responses.offer(digest, KEY)
    assert responses.lookup(digest, "v1") is None
    responses.offer(digest, KEY)
    assert responses.lookup(digest, "v1") == KEY
    clock.now = 62
    assert responses.lookup(digest, "v1") is None


def test_response_cache_off() -> None:
    responses = ResponseCache(0, 60)
    assert responses.key(b"body") is None
    assert not responses.enabled
