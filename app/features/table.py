"""Every categorical field's vocabulary behind one batch lookup, for encoding request batches.

A batch of request rows holds thousands of categorical values, each a freshly decoded string
whose hash is not computed yet. Two ways to look them all up, chosen by the vocabularies'
total size (:func:`vocabulary_lookup`):

- :class:`VocabularyDicts`: one dict per field, walked in one C-level ``map``. While the dicts
  fit the CPU caches a value costs little more than its hash.
- :class:`VocabularyTable`: one numpy hash table. In dicts of megabytes each value costs a few
  dependent memory reads; here a value costs one ``hash()`` call and the batch is probed
  with a dozen numpy calls whose reads the CPU overlaps (the home slot, then the rest of
  the window for the few values it does not settle).

Where one overtakes the other: docs/THRESHOLDS.md#dicts_max_values.

Either is an accelerator in front of the exact dict lookup: a value it does not find
(unseen, a number, anything not stored) is left to the caller, which looks it up the exact
way.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import cycle, repeat

import numpy as np
from numpy.typing import NDArray

from app.features.spec import MISSING_INDEX, NUM_RESERVED

NOT_FOUND = -1
# Slots probed per value: a key not within WINDOW slots of its home is left to the exact
# lookup (few at a load of at most 1/2: docs/THRESHOLDS.md#window).
WINDOW = 8
# The key of an empty slot. A value whose key is this is not stored: its lookup stops at
# the first empty slot with a match whose index is NOT_FOUND.
_EMPTY = np.iinfo(np.int64).min
_FURTHER = np.arange(1, WINDOW)  # a window's slots after the home slot
_TEXT_TYPES = frozenset((str, type(None)))
# Vocabularies this small in all are looked up in dicts: docs/THRESHOLDS.md#dicts_max_values
DICTS_MAX_VALUES = 20_000


def vocabulary_lookup(vocabularies: Sequence[Sequence[str]]) -> VocabularyDicts | VocabularyTable:
    """The faster batch lookup for vocabularies of this size (see the module docstring)."""
    if sum(map(len, vocabularies)) <= DICTS_MAX_VALUES:
        return VocabularyDicts(vocabularies)
    return VocabularyTable(vocabularies)


def _tokens(vocabulary: Sequence[str]) -> list[object]:
    """What a field's lookup holds, in order: "" and null (both missing, as in the row
    path), then the vocabulary."""
    return ["", None, *vocabulary]


def _token_indices(vocabulary: Sequence[str]) -> NDArray[np.int64]:
    """The index of each of :func:`_tokens`."""
    found = np.arange(NUM_RESERVED - 2, NUM_RESERVED + len(vocabulary), dtype=np.int64)
    found[:2] = MISSING_INDEX
    return found


class VocabularyDicts:
    """One dict per field from token to index.

    Only str and null keys are stored, so a number never matches (``0 == ""`` is false, though
    their hashes are equal): it is left to the caller's exact path, which spells it.

    Args:
        vocabularies: one per categorical field, in the order their values will come.
    """

    def __init__(self, vocabularies: Sequence[Sequence[str]]) -> None:
        self._dicts: list[dict[object, int]] = [
            dict(zip(_tokens(vocabulary), _token_indices(vocabulary).tolist(), strict=True))
            for vocabulary in vocabularies
        ]

    def find(self, values: list[object], rows: int) -> NDArray[np.int64]:
        """The index of each value, ``NOT_FOUND`` where no dict holds it.

        Args:
            values: ``rows`` rows of one value per field, row after row.

        Raises:
            TypeError: a value is unhashable (a list, a dict): the caller's exact path says so.
        """
        looked_up = map(dict.get, cycle(self._dicts), values, repeat(NOT_FOUND))
        return np.fromiter(looked_up, np.int64, len(values))


class VocabularyTable:
    """Open addressing on ``hash(value) ^ salt[field]``, without wrap-around or deletes.

    A value it finds has the same 64-bit ``hash()`` as a vocabulary value of its field
    (salted per field); two different strings share one with probability about 2**-64.

    Args:
        vocabularies: one per categorical field, in the order their values will come.
    """

    def __init__(self, vocabularies: Sequence[Sequence[str]]) -> None:
        self.fields = len(vocabularies)
        # Fixed salts: a value means different things in different fields. The table is
        # rebuilt in every process (str hashes are randomised per process), so it is never
        # stored anywhere.
        self.salts = np.random.default_rng(0).integers(
            _EMPTY, np.iinfo(np.int64).max, size=self.fields, dtype=np.int64
        )
        keys: list[NDArray[np.int64]] = []
        indices: list[NDArray[np.int64]] = []
        for salt, vocabulary in zip(self.salts.tolist(), vocabularies, strict=True):
            tokens = _tokens(vocabulary)
            keys.append(np.fromiter(map(hash, tokens), np.int64, len(tokens)) ^ salt)
            indices.append(_token_indices(vocabulary))
        nothing = [np.empty(0, np.int64)]
        self._build(np.concatenate(keys or nothing), np.concatenate(indices or nothing))

    def _build(self, keys: NDArray[np.int64], indices: NDArray[np.int64]) -> None:
        """Place every key in the first free slot of its window, a round per offset."""
        size = 1 << max(4, int(2 * len(keys)).bit_length())
        self.mask = size - 1
        # Each slot's key and index side by side: reading a window of keys brings the
        # indices into cache with them (two separate arrays cost a second memory read).
        slots = np.empty((size + WINDOW, 2), dtype=np.int64)
        slots[:, 0], slots[:, 1] = _EMPTY, NOT_FOUND
        self.keys, self.indices = slots[:, 0], slots[:, 1]
        home = keys & self.mask
        waiting = np.arange(len(keys))
        for offset in range(WINDOW):
            slots = home[waiting] + offset
            free = self.indices[slots] == NOT_FOUND
            # One key per free slot this round; the others try the next offset.
            _, first = np.unique(slots[free], return_index=True)
            placed = np.flatnonzero(free)[first]
            self.keys[slots[placed]] = keys[waiting[placed]]
            self.indices[slots[placed]] = indices[waiting[placed]]
            waiting = np.delete(waiting, placed)
        self.unstored = len(waiting)  # left to the exact lookup

    def find(self, values: list[object], rows: int) -> NDArray[np.int64]:
        """The index of each value, ``NOT_FOUND`` where the table does not hold it.

        Args:
            values: ``rows`` rows of one value per field, row after row.

        Raises:
            TypeError: a value is unhashable (a list, a dict): the caller's exact path says so.
        """
        keys = np.fromiter(map(hash, values), np.int64, len(values)) ^ np.tile(self.salts, rows)
        if not _TEXT_TYPES.issuperset(map(type, values)):
            # Numbers hash as themselves (hash(0) == hash("") == 0): only strings and null
            # may be looked up here; the rest stays NOT_FOUND.
            text = np.fromiter((type(value) in _TEXT_TYPES for value in values), bool, len(values))
            keys[~text] = _EMPTY
        # Most values are settled by their home slot (it holds them, or is empty: an empty
        # slot's index is NOT_FOUND, and an empty slot never holds a key, see _EMPTY).
        slots = keys & self.mask
        stored = self.keys[slots]
        hit = stored == keys
        found = np.where(hit, self.indices[slots], NOT_FOUND)
        # The rest read the rest of their window at once, taking its first match: a key is
        # never placed beyond an empty slot of its window, so none needs to stop there (one
        # round of numpy calls, not one a slot of the window).
        rest = np.flatnonzero(~hit & (stored != _EMPTY))
        if len(rest):
            window = slots[rest, None] + _FURTHER
            match = self.keys[window] == keys[rest, None]
            first = match.argmax(axis=1)
            matched = match[np.arange(len(rest)), first]
            found[rest[matched]] = self.indices[window[matched, first[matched]]]
        return found
