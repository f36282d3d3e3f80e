"""ScoreCache: a thread-safe TTL LRU cache with hit/miss counts.

The service keeps two: scores keyed on model version + encoded row (the semantic cache:
equivalent requests share an entry), and in front of it finished single-row responses keyed
on model version + the exact request bytes (a hit skips parsing, encoding and serialising).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")


class ScoreCache(Generic[V]):
    """TTL + LRU cache with hit/miss counts.

    cachetools caches are not thread-safe and FastAPI runs sync routes in a thread pool, so
    every access holds one lock; a lookup or fill of a whole batch takes it once.

    Args:
        maxsize: entries kept; ``0`` disables caching (every lookup misses, nothing stored).
        ttl_s: seconds an entry lives.
        timer: clock for expiry; tests pass a fake one.
    """

    def __init__(
        self, maxsize: int, ttl_s: float, timer: Callable[[], float] = time.monotonic
    ) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self._cache: TTLCache[Hashable, V] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_s, timer=timer) if maxsize > 0 else None
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._cache is not None

    def __len__(self) -> int:
        if self._cache is None:
            return 0
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def get_many(self, keys: Sequence[Hashable]) -> list[V | None]:
        """Cached value per key, ``None`` where missing or expired."""
        with self._lock:
            if self._cache is None:
                self.misses += len(keys)
                return [None] * len(keys)
            found = [self._cache.get(key) for key in keys]
            hit_count = sum(value is not None for value in found)
            self.hits += hit_count
            self.misses += len(keys) - hit_count
        return found

    def put_many(self, keys: Sequence[Hashable], values: Sequence[V]) -> None:
        if self._cache is None:
            return
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                self._cache[key] = value

    def get(self, key: Hashable) -> V | None:
        return self.get_many((key,))[0]

    def put(self, key: Hashable, value: V) -> None:
        self.put_many((key,), (value,))

    def clear(self) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.clear()
