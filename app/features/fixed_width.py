"""A vocabulary looked up by whole numpy arrays of fixed-width strings (``str`` or ``bytes``).

Binary tensors and JSON tensors of the inference protocol arrive as one fixed-width array per
field. Each value's first bytes, as 64-bit words, are hashed in one matrix product (a sum of
words times odd multipliers), the hash is found among the vocabulary's sorted hashes, and the
found value's text is compared with the token's, so a match is exact, never a collision. A
binary search over the strings themselves compares text at every step: on vocabularies of
thousands of values it costs two to three times as much (docs/BENCHMARKS.md, "Encoding a BYTES
tensor").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from app.features.spec import NUM_RESERVED, UNSEEN_INDEX

_WORD = 8  # bytes per hashed word
# Multipliers are drawn from these seeds until the vocabulary's distinct values have
# distinct hashes (the first, almost surely).
_SEEDS = (1, 2, 3, 4)


class FixedWidthVocabulary:
    """One field's vocabulary, found by hash for arrays of one string kind.

    Args:
        vocabulary: the field's values; value ``i`` has index ``NUM_RESERVED + i``.
        kind: ``"S"`` (UTF-8 bytes, as binary tensors hold them) or ``"U"`` (numpy str).
    """

    def __init__(self, vocabulary: Sequence[str], kind: str) -> None:
        given: NDArray[np.generic] = (
            np.array([v.encode() for v in vocabulary], dtype=np.bytes_)
            if kind == "S"
            else np.array(list(vocabulary), dtype=np.str_)
        )
        indices = np.arange(NUM_RESERVED, NUM_RESERVED + len(vocabulary), dtype=np.int64)
        self.width = -(-max(given.dtype.itemsize, 1) // _WORD)  # in words
        words = _words(given, self.width)
        for seed in _SEEDS:
            # odd multipliers: each word's bits all reach the hash
            multipliers = np.random.default_rng(seed).integers(
                0, 2**64, self.width, dtype=np.uint64, endpoint=False
            ) | np.uint64(1)
            hashes = words @ multipliers
            order = np.argsort(hashes, kind="stable")  # equal hashes in vocabulary order
            repeated = hashes[order][1:] == hashes[order][:-1]
            if not repeated.any():
                break
            # numpy drops trailing NULs, so two values may have one fixed-width form (and so
            # one hash): the first keeps it, as a dict built in vocabulary order would
            if (given[order][1:] == given[order][:-1])[repeated].all():
                order = order[np.concatenate(([True], ~repeated))]
                break
        else:  # four draws colliding: not a vocabulary, an attack on this hash
            raise ValueError("the vocabulary's values collide under every hash drawn")
        self.multipliers = multipliers
        self.hashes, self.values, self.indices = hashes[order], given[order], indices[order]

    def find(self, tokens: NDArray[np.generic]) -> NDArray[np.int64]:
        """The index of each token (a 1-D array of this vocabulary's kind); ``UNSEEN_INDEX``
        where absent."""
        if len(self.hashes) == 0 or len(tokens) == 0:
            return np.full(len(tokens), UNSEEN_INDEX, dtype=np.int64)
        # a token longer than every value hashes by its first words, and fails the compare
        hashes = _words(tokens, self.width) @ self.multipliers
        place = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        found = self.values[place] == tokens  # exact: a hash collision is not a match
        return np.where(found, self.indices[place], UNSEEN_INDEX)


def _words(values: NDArray[np.generic], width: int) -> NDArray[np.uint64]:
    """The first ``width`` 64-bit words of each value's bytes, zero-padded."""
    size, wanted = values.dtype.itemsize, width * _WORD
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), size)
    if size == wanted:
        return raw.view(np.uint64)
    words = np.zeros((len(values), wanted), dtype=np.uint8)
    words[:, : min(size, wanted)] = raw[:, :wanted]
    return words.view(np.uint64)
