"""Whole-array vocabulary lookups by hash: exactly the dict lookup, for bytes and for str."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.features.fixed_width import FixedWidthVocabulary
from app.features.spec import NUM_RESERVED, UNSEEN_INDEX

# No NUL: numpy's fixed-width strings drop trailing ones (pinned separately below).
_TEXT = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=40)


def _array(values: list[str], kind: str) -> np.ndarray:
    if kind == "S":
        return np.array([v.encode() for v in values], dtype=np.bytes_)
    return np.array(values, dtype=np.str_)


@pytest.mark.parametrize("kind", ["S", "U"])
@settings(max_examples=60, deadline=None)
@given(
    vocabulary=st.lists(_TEXT, unique=True, max_size=50),
    others=st.lists(_TEXT, max_size=30),
    picks=st.lists(st.integers(min_value=0), max_size=60),
)
def test_every_token_gets_its_dict_index(
    kind: str, vocabulary: list[str], others: list[str], picks: list[int]
) -> None:
    """Known values (picked from the vocabulary), unseen ones of any length (longer and
    shorter than every known value) and the empty string: all as a dict would answer."""
    pool = vocabulary + others
    tokens = [pool[i % len(pool)] for i in picks] if pool else []
    lookup = {v: NUM_RESERVED + i for i, v in enumerate(vocabulary)}
    found = FixedWidthVocabulary(vocabulary, kind).find(_array(tokens, kind))
    assert found.tolist() == [lookup.get(t, UNSEEN_INDEX) for t in tokens]


@pytest.mark.parametrize("kind", ["S", "U"])
def test_a_token_wider_than_the_vocabulary_is_unseen_even_when_it_starts_like_a_value(
    kind: str,
) -> None:
    vocabulary = ["abcdefgh", "ab"]
    tokens = ["abcdefgh" + "x" * 30, "abcdefgh", "ab", "ab" + "\x01", ""]
    found = FixedWidthVocabulary(vocabulary, kind).find(_array(tokens, kind))
    assert found.tolist() == [UNSEEN_INDEX, NUM_RESERVED, NUM_RESERVED + 1, UNSEEN_INDEX, 1]


def test_values_equal_but_for_trailing_nuls_take_the_first_index() -> None:
    """numpy cannot tell ``"a"`` from ``"a\\0"``: the first of them keeps the row, as the
    sorted search this lookup replaced did."""
    found = FixedWidthVocabulary(["b", "a\x00", "a"], "S").find(np.array([b"a", b"b"]))
    assert found.tolist() == [NUM_RESERVED + 1, NUM_RESERVED]


def test_an_empty_vocabulary_or_no_tokens() -> None:
    assert FixedWidthVocabulary([], "U").find(np.array(["x"])).tolist() == [UNSEEN_INDEX]
    assert FixedWidthVocabulary(["x"], "S").find(np.array([], dtype="S1")).tolist() == []


def test_a_strided_view_is_looked_up_like_its_copy() -> None:
    """A column cut out of a wider array (every other element) is not contiguous."""
    tokens = np.array([b"a", b"zz", b"b", b"zz", b"c"])[::2]
    assert FixedWidthVocabulary(["c", "a"], "S").find(tokens).tolist() == [
        NUM_RESERVED + 1,
        UNSEEN_INDEX,
        NUM_RESERVED,
    ]


def test_a_token_whose_hash_collides_with_a_value_is_not_taken_for_it() -> None:
    """The hash is a sum of words times odd multipliers, so a two-word token with exactly
    the hash of a vocabulary value can be built: it must be unseen (its text is compared)."""
    vocabulary = FixedWidthVocabulary(["abcdefgh12345678"], "S")
    first, second = (int(m) for m in vocabulary.multipliers)
    value = [int(w) for w in np.array([b"abcdefgh12345678"]).view("<u8")]
    target = (value[0] * first + value[1] * second) % 2**64
    for word in range(1, 1000):
        other = ((target - word * first) * pow(second, -1, 2**64)) % 2**64
        if other >> 56:  # a last byte that is not NUL, which numpy would drop
            break
    token = np.array([word, other], dtype="<u8").view("S16")
    assert token[0] != b"abcdefgh12345678"
    assert int(token.view("<u8") @ vocabulary.multipliers) == int(vocabulary.hashes[0])
    assert vocabulary.find(token).tolist() == [UNSEEN_INDEX]
