"""The service's two caches; neither imports FastAPI.

- :class:`ScoreCache`: scores keyed on the encoded row, for one model version at a time
  (the semantic cache: key order, ``5`` vs ``"5"`` and different unseen values of a field
  share an entry).
- :class:`ResponseCache`: in front of it, exact repeats of a single-row request body mapped
  to the score-cache key they encode to, so a repeat skips parsing and encoding.
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

RowKey = tuple[str, bytes]  # (model version, encoded row bytes)
TextKey = bytes | int  # a single-row body's digest, or a batch row's text hash
_Answer = tuple[str, bytes | float, float]  # (version, row key or score, expires at)

# Bytes one response-cache entry costs beyond its row key's own bytes object (the digest,
# the value tuple, the LRU's dict slots and its size record), and one first sight (a digest
# in a set). Measured with tracemalloc over 100,000 entries: 427 bytes an answer with a
# 72-byte row key, 91 a first sight; rounded up so the bound holds.
_ANSWER_OVERHEAD_BYTES = 380
_SEEN_ENTRY_BYTES = 100
# A single row of 40 fields is about 1-2 KiB of JSON. Longer bodies are not digested: a
# hash of every large batch body on every request would cost more than a repeat saves.
MAX_REPEAT_BODY_BYTES = 8192
_FIRST_ROW = np.zeros(1, dtype=np.intp)
_NONE_LOOKED_UP = np.empty(0, dtype=np.intp)
_SINGLES_PENDING = 1024  # single rows marked in the doorkeeper together, at most this many
DOORKEEPER_MIN_ROWS = 4096  # so that a small cache still sees a large batch come back
_BITS_PER_ENTRY = 64  # the doorkeeper's sparsity (see Doorkeeper)


@dataclass
class Lookup:
    """What the cache knew about a batch: which rows it had, a score per row (NaN until the
    caller fills in the misses), and the keys of the rows it looked up, for
    :meth:`ScoreCache.store`."""

    hits: NDArray[np.bool_]
    scores: NDArray[np.float32]
    keys: list[bytes]  # the key of every row looked up, in ``looked_up`` order
    looked_up: NDArray[np.intp]
    version: str

    @classmethod
    def missed(cls, rows: int, version: str) -> Lookup:
        """Nothing known and nothing to store: every row to be scored."""
        scores = np.full(rows, np.nan, dtype=np.float32)
        return cls(np.zeros(rows, dtype=np.bool_), scores, [], _NONE_LOOKED_UP, version)


class Doorkeeper:
    """Which rows were probably seen lately: TinyLFU's doorkeeper, as numpy bit tables.

    A batch row is cached from its second sight on, so a stream of one-off rows costs one
    vectorised hash and a few array operations a batch instead of a cache lookup and a
    cache write per row. A false positive admits a one-off row (a lookup and a store
    wasted), so the tables are sparse: ``_BITS_PER_ENTRY`` bits per entry of capacity keep
    at most 1 bit in 32 set, a false-positive rate of about 3%. (At 4 flags an entry it
    was 30%, and those wasted stores cost an all-miss 100-row batch 58 µs in process
    against 2 with the cache off.) Two generations: after ``capacity`` marks the older one
    is dropped, so sightings age out, while rows seen in the last generation are still
    known (a single table wiped at once made every hot row a first sight again). Memory:
    16 bytes an entry of capacity (two generations of 64 bits).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 1)
        bits = 1 << (_BITS_PER_ENTRY * self._capacity - 1).bit_length()  # a power of two
        self._shift = np.uint64(64 - (bits.bit_length() - 1))
        self._current = np.zeros(bits // 8, dtype=np.uint8)
        self._previous = np.zeros(bits // 8, dtype=np.uint8)
        self._marked = 0
        self._weights = np.empty(0, dtype=np.uint64)  # one odd multiplier per field

    def _row_hash(self, indices: NDArray[np.int64]) -> NDArray[np.uint64]:
        width = indices.shape[1]
        if len(self._weights) != width:
            rng = np.random.default_rng(0x5EED)
            odd = rng.integers(1, 2**63, size=width, dtype=np.uint64) | np.uint64(1)
            self._weights = np.asarray(odd, dtype=np.uint64)
        mixed = indices.astype(np.uint64) @ self._weights  # wraps mod 2**64 on purpose
        return (mixed * np.uint64(0x9E3779B97F4A7C15)) >> self._shift

    def seen(self, indices: NDArray[np.int64], stands_for: int = 1) -> NDArray[np.bool_]:
        """Whether each row was marked in this generation or the last; marks them all.

        ``stands_for``: how many requests' rows these are a sample of. A probe of the cache
        gate (app/scoring/gate.py) stands for ``probe_every`` batches, and its rows count as
        many marks, so that a generation spans as much traffic with the gate closed as with
        it open. Counted once per batch, a row came back as "seen" ``probe_every`` times
        further back: 100-row batches replayed in a cycle of 40,000 rows, probed one in 8,
        were looked up and stored at 72 rows a probe (evicted before their next turn by a
        2,000-entry cache), and the cache-on service served 0.92x the cache-disabled one.
        """
        slots = self._row_hash(indices)
        cells = (slots >> np.uint64(3)).astype(np.intp)
        bits = np.left_shift(np.uint8(1), (slots & np.uint64(7)).astype(np.uint8))
        seen: NDArray[np.bool_] = ((self._current[cells] | self._previous[cells]) & bits) != 0
        np.bitwise_or.at(self._current, cells, bits)  # .at: two rows may share a cell
        self._marked += len(slots) * stands_for
        if self._marked > self._capacity:
            self._previous, self._current = self._current, self._previous
            self._current[:] = 0
            self._marked = 0
        return seen


class ScoreCache:
    """Scores of one model version, LRU-bounded, with a TTL; one lock per batch.

    Built for the miss path, where a batch of new rows used to spend more in the cache than
    in onnxruntime (profiled: writes 16.5% and lookups ~6% of an all-miss 100-row request):

    - Keys are the row's indices as bytes, in the smallest unsigned type that holds the
      model's largest index, made for a whole batch by one numpy call (the ``tolist`` of a
      void view), not a tuple and a ``tobytes`` per row.
    - cachetools' ``LRUCache`` holds ``(score, expires_at)``: the clock is read once a batch
      and an expired entry leaves when it is next looked up or falls off the LRU end.
      ``TTLCache`` keeps a second linked list and reads the clock on every access:
      measured on 100-row all-miss batches of a 39-field model, 2.8 µs a row against 1.1.
    - Batch rows go through a :class:`Doorkeeper`: a row is looked up and stored from its
      second sight. Single rows are always looked up and stored (a repeat of a request is
      answered from the cache the second time); the doorkeeper marks them in bulk, with the
      next batch, as a dozen numpy calls cost a single row ~15 µs.
    - It belongs to one version at a time (:meth:`reset` on a swap): a request that was
      scored by the old version across a swap neither reads nor writes the new entries.

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
        self.ttl_s = ttl_s
        self._timer = timer
        self._entries: LRUCache[bytes, tuple[float, float]] | None = (
            LRUCache(maxsize=maxsize) if maxsize > 0 else None
        )
        # It remembers about as many rows as the cache holds: a row that comes back later
        # than that would have been evicted before its next use, so storing it is waste.
        self._doorkeeper = Doorkeeper(max(maxsize, DOORKEEPER_MIN_ROWS))
        self._singles: list[NDArray[np.int64]] = []
        self._lock = threading.Lock()
        self._version = ""
        self._key_type: np.dtype[np.unsignedinteger] = np.dtype(np.uint32)

    @property
    def enabled(self) -> bool:
        return self._entries is not None

    def reset(self, version: str, largest_index: int) -> None:
        """Serve ``version`` from now on: every entry of the previous one is dropped."""
        with self._lock:
            self._version = version
            self._singles.clear()
            self._key_type = np.min_scalar_type(max(largest_index, 0))
            if self._key_type.kind != "u":
                self._key_type = np.dtype(np.uint64)
            if self._entries is not None:
                self._entries.clear()

    def __len__(self) -> int:
        """Entries held (expired ones included until they are looked up or evicted)."""
        if self._entries is None:
            return 0
        with self._lock:
            return len(self._entries)

    def row_key(self, row: NDArray[np.int64]) -> bytes:
        """The key of one ``(1, F)`` row: the bytes :meth:`keys` gives it in a batch, by one
        ``astype`` (300 ns, against 500 for ``ascontiguousarray``)."""
        return row.astype(self._key_type, order="C").tobytes()

    def keys(self, indices: NDArray[np.int64]) -> list[bytes]:
        """The key of each row: its indices' bytes (one numpy call for the batch)."""
        rows = np.ascontiguousarray(indices, dtype=self._key_type)
        whole_rows = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
        return cast("list[bytes]", whole_rows.tolist())  # a void item's tolist() is bytes

    def lookup(self, version: str, indices: NDArray[np.int64], stands_for: int = 1) -> Lookup:
        """The cached score of each row of ``indices`` (NaN where it has to be scored).
        ``stands_for``: the requests a probe stands for (:meth:`Doorkeeper.seen`)."""
        nothing = Lookup.missed(len(indices), version)
        hits, scores = nothing.hits, nothing.scores
        if len(indices) == 1:
            key, score = self.lookup_row(version, indices)
            if key is None:
                return nothing
            if score is not None:
                scores[0], hits[0] = score, True
            return Lookup(hits, scores, [key], _FIRST_ROW, version)
        if self._entries is None:
            return nothing
        with self._lock:
            if version != self._version:
                return nothing
            self._mark_singles()
            looked_up = np.flatnonzero(self._doorkeeper.seen(indices, stands_for))
            keys = self.keys(indices[looked_up])
            now = self._timer()
            found = []
            for position, key in enumerate(keys):
                score = self._live(key, now)
                if score is not None:
                    found.append((position, score))
        if found:
            positions, values = zip(*found, strict=True)
            rows = looked_up[list(positions)]
            scores[rows] = values
            hits[rows] = True
        return Lookup(hits, scores, keys, looked_up, version)

    def lookup_row(self, version: str, row: NDArray[np.int64]) -> tuple[bytes | None, float | None]:
        """One ``(1, F)`` row's key and live score, without a numpy array made: a single
        row is always looked up and stored (a repeat of a request is answered from the cache
        the second time), and its cache work is most of what the cache costs a miss.
        The key is ``None`` when there is nothing to store (no cache, another version)."""
        if self._entries is None:
            return None, None
        key = self.row_key(row)
        with self._lock:
            if version != self._version:
                return None, None
            self._singles.append(row)  # the doorkeeper hears of it with the next batch
            if len(self._singles) >= _SINGLES_PENDING:
                self._mark_singles()
            return key, self._live(key, self._timer())

    def store_row(self, version: str, key: bytes, score: float) -> None:
        """Keep one row's score under the key :meth:`lookup_row` gave it."""
        if self._entries is None:
            return
        with self._lock:
            if version == self._version:
                self._entries[key] = (score, self._timer() + self.ttl_s)

    def store(self, lookup: Lookup) -> None:
        """Keep the scores (filled in by now) of the rows ``lookup`` looked up and missed."""
        if self._entries is None or not lookup.keys:
            return
        missed = ~lookup.hits[lookup.looked_up]
        if not missed.any():
            return
        values = lookup.scores[lookup.looked_up[missed]].tolist()
        keys = [key for key, miss in zip(lookup.keys, missed.tolist(), strict=True) if miss]
        with self._lock:
            if lookup.version != self._version:
                return
            expires = self._timer() + self.ttl_s
            entries = self._entries
            for key, value in zip(keys, values, strict=True):
                entries[key] = (value, expires)

    def get(self, version: str, key: bytes) -> float | None:
        """One row's live score by its key (the response cache's second step)."""
        if self._entries is None:
            return None
        with self._lock:
            if version != self._version:
                return None
            return self._live(key, self._timer())

    def _live(self, key: bytes, now: float) -> float | None:
        """``key``'s score if it has not expired by ``now`` (an expired entry is dropped:
        the clock is read once a request, and nothing runs on a timer). Called under the
        lock."""
        assert self._entries is not None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def _mark_singles(self) -> None:
        """Tell the doorkeeper of the single rows looked up since it last heard."""
        if self._singles:
            self._doorkeeper.seen(np.concatenate(self._singles))
            self._singles.clear()


class ResponseCache:
    """Exact repeats of request text -> what it was answered with.

    Two kinds of text, one store:

    - A single-row body, keyed on a 16-byte BLAKE2b digest of the body (:meth:`key`), so
      the repeat middleware answers it before anything is parsed. Its answer is the
      :data:`RowKey` the row encodes to, looked up in the score cache: the answer can never
      outlive the score it came from.
    - A batch row's JSON text, keyed on ``hash()`` of its bytes (:func:`row_text_key`), so a
      batch's repeated rows are neither decoded nor encoded. Its answer is the score
      itself: a second lookup per row in the score cache (cachetools' Python ``get``,
      ~1 µs) would cost a 100-row batch as much as the lookups it saves. A score of a model
      version never changes, and the entries of a version go when it is swapped out.
      ``hash()`` of bytes is SipHash under a key drawn per process: clients cannot aim for
      a collision, and two rows share a key with probability about 2**-64. It costs
      0.25 µs for a 600-byte row against 0.9 for a digest.

    The rest is shared:

    - Admitted on the second sight. First sights are remembered in two generations of
      plain sets (the newer one is started afresh when full), so a one-off text costs a
      set insert: no cache entry, no expiry record, nothing for the garbage collector.
    - Answers live in an :class:`AnswerStore` (least recently used first, bounded in bytes)
      with their expiry time beside them, checked when they are looked up, as the score
      cache does.
    - Bounded in bytes (``max_bytes`` for both parts together), not just in entries.

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
        self.ttl_s = ttl_s
        self._timer = timer
        # A quarter of the budget remembers first sights (two generations), the rest answers.
        self._seen_per_generation = max(1, max_bytes // 4 // (2 * _SEEN_ENTRY_BYTES))
        self._seen: set[TextKey] = set()
        self._seen_before: set[TextKey] = set()
        self._answers = AnswerStore(max_bytes - max_bytes // 4)
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
            seen = len(self._seen) + len(self._seen_before)
            return self._answers.nbytes + seen * _SEEN_ENTRY_BYTES

    def lookup(self, digest: bytes, version: str) -> RowKey | None:
        """The row key a body encodes to under ``version``, if it is a known repeat."""
        with self._lock:
            entry = self._answers.get(digest, self._timer())
        if entry is None or entry[0] != version or not isinstance(entry[1], bytes):
            return None
        return entry[0], entry[1]

    def lookup_rows(self, texts: list[int], version: str) -> NDArray[np.float32]:
        """The score of each batch row whose text was answered under ``version``; NaN
        where none is known. One lock for the batch."""
        with self._lock:
            entries = self._answers.get_many(texts, self._timer())
        known = [
            e[1] if e is not None and e[0] == version and isinstance(e[1], float) else math.nan
            for e in entries
        ]
        return np.array(known, dtype=np.float32)

    def offer(self, digest: bytes, key: RowKey) -> None:
        """Remember a body scored as ``key``: the first sight is noted, the second admitted."""
        self.offer_rows([digest], key[0], [key[1]])

    def offer_rows(
        self, texts: Sequence[TextKey], version: str, answers: Sequence[bytes | float]
    ) -> None:
        """Remember texts answered under ``version`` (row keys for single-row bodies, scores
        for batch rows): each text's first sight is noted, its second admitted. One lock
        for a batch's rows."""
        with self._lock:
            expires = self._timer() + self.ttl_s
            seen, seen_before = self._seen, self._seen_before
            for text, answer in zip(texts, answers, strict=True):
                if text in seen or text in seen_before:
                    seen.discard(text)
                    seen_before.discard(text)
                    self._answers.put(text, (version, answer, expires))
                    continue
                seen.add(text)
                if len(seen) >= self._seen_per_generation:
                    self._seen_before, self._seen = seen, set()
                    seen, seen_before = self._seen, self._seen_before

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._seen_before.clear()
            self._answers.clear()


class AnswerStore:
    """Text key -> ``(version, answer, expires at)``, least recently used first, bounded in
    bytes: the response cache's answers.

    One ``OrderedDict`` (C), not cachetools' ``LRUCache`` (which the score cache keeps): a
    batch's row texts are looked up with one C-level ``map`` of its ``get`` and refreshed
    with ``move_to_end``, where ``LRUCache.get`` runs five Python calls a row. 100 rows of a
    90%-hit batch in a cache of ~2,000 answers: 14 µs against 40, which was 11% of the
    event loop's time on the production NFFM's 90%-hit batches (py-spy).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[TextKey, _Answer] = OrderedDict()

    def get(self, key: TextKey, now: float) -> _Answer | None:
        """``key``'s answer if it has not expired by ``now`` (an expired one is dropped)."""
        return self.get_many([key], now)[0]

    def get_many(self, keys: Sequence[TextKey], now: float) -> list[_Answer | None]:
        """Each key's live answer (``None`` where there is none), each one found made the
        most recently used."""
        entries: list[_Answer | None] = list(map(self._entries.get, keys))
        refresh = self._entries.move_to_end
        for i, (key, entry) in enumerate(zip(keys, entries, strict=True)):
            if entry is None:
                continue
            if entry[2] > now:
                refresh(key)
                continue
            entries[i] = None
            self._drop(key)
        return entries

    def put(self, key: TextKey, answer: _Answer) -> None:
        """Keep ``answer`` as the most recently used; the least recently used go while the
        store is over its bound (an answer larger than the whole bound is not kept)."""
        self._drop(key)
        size = _answer_bytes(answer)
        if size > self.max_bytes:
            return
        self._entries[key] = answer
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= _answer_bytes(evicted)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: TextKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= _answer_bytes(entry)


def row_text_keys(rows: Sequence[bytes]) -> list[int]:
    """Batch rows' response-cache keys: ``hash()`` of each one's JSON text (see
    ResponseCache)."""
    return list(map(hash, map(bytes, rows)))


def _answer_bytes(answer: _Answer) -> int:
    return _ANSWER_OVERHEAD_BYTES + sys.getsizeof(answer[1])
