"""The service's two caches; neither imports FastAPI.

- :class:`ScoreCache`: scores keyed on model version + encoded row (the semantic cache:
  key order, ``5`` vs ``"5"`` and different unseen values of a field share an entry).
- :class:`ResponseCache`: in front of it, exact repeats of a single-row request body mapped
  to the score-cache key they encode to, so a repeat skips parsing and encoding.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")
RowKey = tuple[str, bytes]  # (model version, encoded row bytes)

# Bytes one entry costs in a cachetools TTLCache beyond its value's own bytes object: the
# digest key, the value tuple, the cache's dict slots and its expiry links. Measured with
# tracemalloc over 100,000 entries (516 bytes per answer with an 80-byte row, 347 per
# first sight); rounded up so the bound holds.
_ANSWER_OVERHEAD_BYTES = 420
_SEEN_ENTRY_BYTES = 360
# A single row of 40 fields is about 1-2 KiB of JSON. Longer bodies are not digested: a
# hash of every large batch body on every request would cost more than a repeat saves.
MAX_REPEAT_BODY_BYTES = 8192


class ScoreCache(Generic[V]):
    """TTL + LRU cache, one lock per batch.

    cachetools caches are not thread-safe and large requests are scored in the thread
    pool, so every access holds one lock; a lookup or fill of a whole batch takes it once.

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
        self._cache: TTLCache[Hashable, V] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_s, timer=timer) if maxsize > 0 else None
        )
        self._lock = threading.Lock()

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
        if self._cache is None:
            return [None] * len(keys)
        with self._lock:
            get = self._cache.get
            return [get(key) for key in keys]

    def put_many(self, keys: Sequence[Hashable], values: Sequence[V]) -> None:
        if self._cache is None:
            return
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                self._cache[key] = value

    def clear(self) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.clear()


class ResponseCache:
    """Exact repeats of a request body -> the :data:`RowKey` its row encodes to.

    - Keyed on a 16-byte BLAKE2b digest of the body, so a key costs the same for any body.
    - Admitted on the second sight of a digest: a doorkeeper remembers first sights, so
      one-off bodies cost a small digest entry, never an answer.
    - Bounded in bytes (``max_bytes`` for both parts together), not just in entries.
    - It holds no score: a hit is looked up in the score cache, so an answer can never
      outlive the score it came from, nor survive a model swap.

    Args:
        max_bytes: memory bound; ``0`` disables it.
        ttl_s: seconds an entry lives (as the score cache's).
        timer: clock for expiry; tests pass a fake one.
    """

    def __init__(
        self, max_bytes: int, ttl_s: float, timer: Callable[[], float] = time.monotonic
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.max_bytes = max_bytes
        self.enabled = max_bytes > 0
        # A quarter of the budget remembers first sights, the rest holds answers.
        self._seen: TTLCache[bytes, bool] = TTLCache(
            maxsize=max(1, max_bytes // 4),
            ttl=ttl_s,
            timer=timer,
            getsizeof=lambda _: _SEEN_ENTRY_BYTES,
        )
        self._answers: TTLCache[bytes, RowKey] = TTLCache(
            maxsize=max(1, max_bytes - max_bytes // 4),
            ttl=ttl_s,
            timer=timer,
            getsizeof=_answer_bytes,
        )
        self._lock = threading.Lock()

    def key(self, body: bytes) -> bytes | None:
        """The digest this body is cached under, or ``None`` if it is never cached."""
        if not self.enabled or len(body) > MAX_REPEAT_BODY_BYTES:
            return None
        return hashlib.blake2b(body, digest_size=16).digest()

    @property
    def nbytes(self) -> int:
        """Bytes held now, as the bound counts them."""
        with self._lock:
            return int(self._seen.currsize + self._answers.currsize)

    def lookup(self, digest: bytes, version: str) -> RowKey | None:
        """The row key a body encodes to under ``version``, if it is a known repeat."""
        with self._lock:
            key = self._answers.get(digest)
        return key if key is not None and key[0] == version else None

    def offer(self, digest: bytes, key: RowKey) -> None:
        """Remember a body scored as ``key``: the first sight is noted, the second admitted."""
        with self._lock:
            if digest in self._seen:
                del self._seen[digest]
                self._answers[digest] = key
            else:
                self._seen[digest] = True

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._answers.clear()


def _answer_bytes(key: RowKey) -> int:
    return _ANSWER_OVERHEAD_BYTES + sys.getsizeof(key[1])
