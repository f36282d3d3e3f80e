import numpy as np
import pytest

from app.features.spec import MISSING_INDEX, NUM_RESERVED
from app.features.table import NOT_FOUND, VocabularyTable


def test_each_field_finds_its_own_vocabulary() -> None:
    table = VocabularyTable([("news", "sports"), ("sports", "x")])
    # Two rows of two fields, row after row; "sports" means different things per field.
    found = table.find(["sports", "x", "news", "sports"], rows=2)
    assert found.tolist() == [NUM_RESERVED + 1, NUM_RESERVED + 1, NUM_RESERVED, NUM_RESERVED]


def test_missing_spellings_and_absent_values() -> None:
    table = VocabularyTable([("a",)])
    found = table.find(["", None, "b", 7, "a"], rows=5)
    assert found.tolist() == [MISSING_INDEX, MISSING_INDEX, NOT_FOUND, NOT_FOUND, NUM_RESERVED]


def test_numbers_are_never_taken_for_strings_of_equal_hash() -> None:
    # hash(0) == hash(False) == hash(0.0) == hash("") == 0: only strings and null match.
    found = VocabularyTable([("a",)]).find([0, False, 0.0, ""], rows=4)
    assert found.tolist() == [NOT_FOUND, NOT_FOUND, NOT_FOUND, MISSING_INDEX]


def test_unhashable_values_are_left_to_the_caller() -> None:
    with pytest.raises(TypeError):
        VocabularyTable([("a",)]).find([["a"]], rows=1)


def test_a_large_vocabulary_finds_every_stored_value_and_nothing_wrong() -> None:
    vocabulary = [f"{i:08x}" for i in range(50_000)]
    table = VocabularyTable([vocabulary])
    found = table.find(list(vocabulary), rows=len(vocabulary))
    expected = np.arange(NUM_RESERVED, NUM_RESERVED + len(vocabulary))
    stored = found != NOT_FOUND
    assert (found[stored] == expected[stored]).all()
    # The few keys that did not fit their window are the only ones left to the exact path.
    assert int((~stored).sum()) == table.unstored < len(vocabulary) // 100


def test_no_fields() -> None:
    assert VocabularyTable([]).find([], rows=3).tolist() == []
