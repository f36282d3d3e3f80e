"""The score cache of one model: scores keyed on the version and the encoded row.

Keyed on the encoded row, not the request text, so key order, ``5`` vs ``"5"`` and the
different unseen values of a field share an entry, whichever protocol sent the row.
Imports no FastAPI.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

_FIRST_ROW = np.zeros(1, dtype=np.intp)
_NONE_LOOKED_UP = np.empty(0, dtype=np.intp)
_SINGLES_PENDING = 1024  # single rows marked in the doorkeeper together, at most this many
DOORKEEPER_MIN_ROWS = 4096  # so that a small cache still sees a large batch come back
_BITS_PER_ENTRY = 64  # the doorkeeper's sparsity: docs/THRESHOLDS.md#doorkeeper


@dataclass(frozen=True, eq=False)  # compared by identity: one slot per version loaded
class _Slot:
    """A loaded version's place in the cache: the prefix of its keys (a number never given
    to another version, so entries of a version gone are never read as another's), and the
    smallest unsigned type that holds its largest index."""

    prefix: NDArray[np.unsignedinteger]  # the number, as key_type units
    key_type: np.dtype[np.unsignedinteger]

    @classmethod
    def make(cls, number: int, largest_index: int) -> _Slot:
        key_type = np.min_scalar_type(max(largest_index, 0))
        if key_type.kind != "u":
            key_type = np.dtype(np.uint64)
        width = "<u8" if key_type.itemsize == 8 else "<u4"
        prefix = np.frombuffer(np.array(number, dtype=width).tobytes(), dtype=key_type)
        return cls(prefix.copy(), key_type)


@dataclass
class Lookup:
    """What the cache knew about a batch: which rows it had, a score per row (NaN until the
    caller fills in the misses), and the keys of the rows it looked up, for
    :meth:`ScoreCache.store`."""

    hits: NDArray[np.bool_]
    scores: NDArray[np.float32]
    keys: list[bytes]  # the key of every row looked up, in ``looked_up`` order
    looked_up: NDArray[np.intp]
    slot: _Slot | None

    @classmethod
    def missed(cls, rows: int) -> Lookup:
        """Nothing known and nothing to store: every row to be scored."""
        scores = np.empty(rows, dtype=np.float32)
        scores.fill(np.nan)  # np.full does this in a Python wrapper around the same two calls
        return cls(np.zeros(rows, dtype=np.bool_), scores, [], _NONE_LOOKED_UP, None)

    @property
    def misses(self) -> NDArray[np.intp]:
        """The rows to be scored, in order."""
        return (~self.hits).nonzero()[0]


class Doorkeeper:
    """Which rows were probably seen lately: TinyLFU's doorkeeper, as numpy bit tables.

    A batch row is cached from its second sight on, so a stream of one-off rows costs one
    vectorised hash and a few array operations a batch instead of a cache lookup and a
    cache write per row. A false positive admits a one-off row (a lookup and a store
    wasted), so the tables are sparse: ``_BITS_PER_ENTRY`` bits per entry of capacity keep
    at most 1 bit in 32 set (false positives, memory and cost by sparsity:
    docs/THRESHOLDS.md#doorkeeper). Two generations: after ``capacity`` marks the older one
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

    def seen(self, indices: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Whether each row was marked in this generation or the last; marks them all."""
        slots = self._row_hash(indices)
        cells = (slots >> np.uint64(3)).astype(np.intp)
        bits = np.left_shift(np.uint8(1), (slots & np.uint64(7)).astype(np.uint8))
        seen: NDArray[np.bool_] = ((self._current[cells] | self._previous[cells]) & bits) != 0
        np.bitwise_or.at(self._current, cells, bits)  # .at: two rows may share a cell
        self._marked += len(slots)
        if self._marked > self._capacity:
            self._previous, self._current = self._current, self._previous
            self._current[:] = 0
            self._marked = 0
        return seen


class ScoreCache:
    """Scores of one model's loaded versions, LRU-bounded, with a TTL, its admission inside.

    - Keys are the version's slot number, then the row's indices, as bytes in the smallest
      unsigned type that holds the version's largest index, made for a whole batch by one
      numpy call. The versions of a model share its budget by their traffic.
    - cachetools' ``LRUCache`` holds ``(score, expires_at)``: the clock is read once a
      lookup, and an expired entry leaves when it is next looked up or falls off the end.
    - Admission: a row of a batch is looked up and stored from its second sight (the
      :class:`Doorkeeper`), so a stream of one-off rows costs a vectorised hash a batch, not
      a lookup and a store a row. A single row is always looked up and stored, so a repeated
      request is a hit the second time; the doorkeeper hears of single rows in bulk.
    - It serves the versions :meth:`serve` names: a request scored by a version unloaded
      meanwhile neither reads nor writes entries; a version's entries, once it is gone, are
      never read again and leave by the LRU's order or their TTL.

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
        self._slots: dict[str, _Slot] = {}
        self._numbers = itertools.count(1)

    @property
    def enabled(self) -> bool:
        return self._entries is not None

    def serve(self, versions: Mapping[str, int]) -> None:
        """Serve these versions (version -> its largest index) from now on; a version not
        named is dropped, a new one gets a slot number never used before."""
        with self._lock:
            kept = {v: slot for v, slot in self._slots.items() if v in versions}
            for version, largest in versions.items():
                if version not in kept:
                    kept[version] = _Slot.make(next(self._numbers), largest)
            self._slots = kept
            self._singles.clear()

    @property
    def maxsize(self) -> int:
        return 0 if self._entries is None else int(self._entries.maxsize)

    def __len__(self) -> int:
        """Entries held (expired ones included until they are looked up or evicted)."""
        if self._entries is None:
            return 0
        with self._lock:
            return len(self._entries)

    @staticmethod
    def keys(slot: _Slot, indices: NDArray[np.int64]) -> list[bytes]:
        """The key of each row: the slot's prefix, then its indices (one numpy call)."""
        width = len(slot.prefix)
        rows = np.empty((len(indices), width + indices.shape[1]), dtype=slot.key_type)
        rows[:, :width] = slot.prefix
        rows[:, width:] = indices
        whole_rows = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
        return cast("list[bytes]", whole_rows.tolist())  # a void item's tolist() is bytes

    def lookup(self, version: str, indices: NDArray[np.int64]) -> Lookup:
        """The cached score of each row of ``indices`` (NaN where it has to be scored)."""
        nothing = Lookup.missed(len(indices))
        if self._entries is None:
            return nothing
        if len(indices) == 1:
            return self._lookup_row(version, indices, nothing)
        hits, scores = nothing.hits, nothing.scores
        with self._lock:
            slot = self._slots.get(version)
            if slot is None:
                return nothing
            self._mark_singles()
            looked_up = np.flatnonzero(self._doorkeeper.seen(indices))
            keys = self.keys(slot, indices[looked_up])
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
        return Lookup(hits, scores, keys, looked_up, slot)

    def _lookup_row(self, version: str, row: NDArray[np.int64], nothing: Lookup) -> Lookup:
        """One row, with scalar work only: a dozen numpy calls would cost it more."""
        with self._lock:
            slot = self._slots.get(version)
            if slot is None:
                return nothing
            key = slot.prefix.tobytes() + row.astype(slot.key_type, order="C").tobytes()
            self._singles.append(row)  # the doorkeeper hears of it with the next batch
            if len(self._singles) >= _SINGLES_PENDING:
                self._mark_singles()
            score = self._live(key, self._timer())
        if score is not None:
            nothing.scores[0], nothing.hits[0] = score, True
        return Lookup(nothing.hits, nothing.scores, [key], _FIRST_ROW, slot)

    def store(self, lookup: Lookup) -> None:
        """Keep the scores (filled in by now) of the rows ``lookup`` looked up and missed."""
        if self._entries is None or not lookup.keys:
            return
        rows = lookup.looked_up
        fresh = [
            (key, score)
            for key, hit, score in zip(
                lookup.keys, lookup.hits[rows].tolist(), lookup.scores[rows].tolist(), strict=True
            )
            if not hit
        ]
        if not fresh:
            return
        with self._lock:
            if lookup.slot not in self._slots.values():  # its version was unloaded meanwhile
                return
            expires = self._timer() + self.ttl_s
            entries = self._entries
            for key, score in fresh:
                entries[key] = (score, expires)

    def _live(self, key: bytes, now: float) -> float | None:
        """``key``'s score if it has not expired by ``now`` (an expired entry is dropped).
        Called under the lock."""
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
