"""ScoreCache: LRU size bound, TTL expiry (fake clock), one version at a time, second-sight
admission of batch rows, disabled mode, thread safety.
ResponseCache: second-sight admission, byte bound, expiry, version awareness, batch rows
answered with their score."""

import math
import threading

import numpy as np
import pytest

from app.cache import (
    MAX_REPEAT_BODY_BYTES,
    Doorkeeper,
    ResponseCache,
    ScoreCache,
    row_text_keys,
)


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
    cache.reset("v1", largest_index=1000)
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


def test_keys_are_the_row_in_the_smallest_type() -> None:
    cache = ScoreCache(10, 60)
    cache.reset("v1", largest_index=200)
    assert cache.keys(_rows(7)) == [bytes([7, 8, 2])]
    cache.reset("v1", largest_index=70_000)
    assert cache.keys(_rows(7)) == [np.array([7, 8, 2], dtype=np.uint32).tobytes()]


def test_ttl_expiry() -> None:
    clock = FakeClock()
    cache = _cache(ttl_s=30, timer=clock)
    _score(cache, _rows(1))
    clock.now = 29.9
    assert cache.lookup("v1", _rows(1)).hits.tolist() == [True]
    assert cache.get("v1", cache.keys(_rows(1))[0]) == pytest.approx(0.01)
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


def test_one_version_at_a_time() -> None:
    cache = _cache()
    _score(cache, _rows(1))
    in_flight = cache.lookup("v1", _rows(2))  # a request scored by v1 ...
    cache.reset("v2", largest_index=1000)  # ... while v2 takes over
    in_flight.scores[:] = 0.5
    cache.store(in_flight)
    assert len(cache) == 0
    assert cache.lookup("v1", _rows(1)).hits.tolist() == [False]  # nothing of v1 is served
    assert _score(cache, _rows(1), "v2") == [False]
    assert cache.get("v1", cache.keys(_rows(1))[0]) is None
    assert cache.get("v2", cache.keys(_rows(1))[0]) == pytest.approx(0.01)


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


def test_a_probe_counts_for_the_batches_it_stands_for() -> None:
    # The cache gate's probe stands for 8 batches: its rows age out as if the 7 batches it
    # passed by had been marked too, so a row back after that much traffic is a first sight.
    probed, plain = Doorkeeper(capacity=100), Doorkeeper(capacity=100)
    old, others = _rows(*range(10)), [_rows(*range(i, i + 10)) for i in range(500, 600, 10)]
    for doorkeeper, stands_for in ((probed, 8), (plain, 1)):
        doorkeeper.seen(old, stands_for)
        for rows in others[:3]:  # 30 rows: 240 marks when they stand for 8 batches each
            doorkeeper.seen(rows, stands_for)
    assert not probed.seen(old).any()  # two generations on: forgotten
    assert plain.seen(old).all()  # 40 marks: still this generation


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


def test_response_cache_answers_expire() -> None:
    clock = FakeClock()
    responses = ResponseCache(1 << 20, ttl_s=30, timer=clock)
    digest = _digest(b"body")
    responses.offer(digest, KEY)
    responses.offer(digest, KEY)
    clock.now = 29
    assert responses.lookup(digest, "v1") == KEY
    clock.now = 31
    assert responses.lookup(digest, "v1") is None


def test_response_cache_forgets_first_sights_two_generations_on() -> None:
    budget = 64 * 1024  # first sights: a quarter of it, in two generations
    responses = ResponseCache(budget, ttl_s=30)
    per_generation = budget // 4 // (2 * 100)
    digest = _digest(b"body")
    responses.offer(digest, KEY)
    for i in range(per_generation):  # one full generation later it is still known
        responses.offer(_digest(str(i).encode()), KEY)
    responses.offer(digest, KEY)
    assert responses.lookup(digest, "v1") == KEY
    other = _digest(b"other")
    responses.offer(other, KEY)
    for i in range(2 * per_generation):  # two generations later it is forgotten
        responses.offer(_digest(f"x{i}".encode()), KEY)
    responses.offer(other, KEY)
    assert responses.lookup(other, "v1") is None
    assert responses.nbytes <= budget


def test_response_cache_off() -> None:
    responses = ResponseCache(0, 60)
    assert responses.key(b"body") is None
    assert not responses.enabled


def _known(responses: ResponseCache, texts: list[int], version: str) -> list[float | None]:
    """The scores the response cache knows for ``texts`` (None where it knows none)."""
    return [
        None if math.isnan(score) else score
        for score in responses.lookup_rows(texts, version).tolist()
    ]


def test_batch_row_texts_answer_with_their_score_from_the_second_sight() -> None:
    clock = FakeClock()
    responses = ResponseCache(1 << 20, ttl_s=30, timer=clock)
    texts = row_text_keys([b'{"c0":"a"}', b'{"c0":"b"}'])
    responses.offer_rows(texts, "v1", [0.25, 0.5])
    assert _known(responses, texts, "v1") == [None, None]  # first sights
    responses.offer_rows(texts[:1], "v1", [0.25])
    assert _known(responses, texts, "v1") == [0.25, None]
    assert _known(responses, texts, "v2") == [None, None]  # another version's score
    clock.now = 31
    assert _known(responses, texts, "v1") == [None, None]  # expired
    assert row_text_keys([b'{"c0":"a"}']) != row_text_keys([b'{"c0": "a"}'])  # the exact text


def test_batch_rows_are_answered_least_recently_used_first_out() -> None:
    def admit(responses: ResponseCache, texts: list[int]) -> None:
        for text in texts:  # a text is admitted on its second sight
            responses.offer_rows([text, text], "v1", [0.5, 0.5])

    probe = ResponseCache(1 << 20, ttl_s=30)
    admit(probe, row_text_keys([b"{}"]))
    answer_bytes = probe.nbytes  # one answer, as the bound counts it
    responses = ResponseCache(4 * 4 * answer_bytes // 3 + 3, ttl_s=30)  # answers: 3/4 of it
    texts = row_text_keys([f'{{"c0":"{i}"}}'.encode() for i in range(6)])
    admit(responses, texts[:4])
    assert _known(responses, texts[:1], "v1") == [0.5]  # the first is now the most recent
    admit(responses, texts[4:])  # two more push the two least recently used out
    assert _known(responses, texts, "v1") == [0.5, None, None, 0.5, 0.5, 0.5]
    assert responses.nbytes <= responses.max_bytes


def test_a_batch_row_answer_is_never_a_single_body_answer() -> None:
    responses = ResponseCache(1 << 20, ttl_s=30)
    digest = _digest(b'{"features":{"c0":"a"}}')
    responses.offer(digest, KEY)
    responses.offer(digest, KEY)
    text = row_text_keys([b'{"c0":"a"}'])
    responses.offer_rows(text, "v1", [0.25])
    responses.offer_rows(text, "v1", [0.25])
    assert responses.lookup(digest, "v1") == KEY
    assert _known(responses, text, "v1") == [0.25]
