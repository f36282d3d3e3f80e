import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.features.spec import MISSING_INDEX, NUM_RESERVED
from app.features.table import (
    DICTS_MAX_VALUES,
    NOT_FOUND,
    VocabularyDicts,
    VocabularyTable,
    vocabulary_lookup,
)

LOOKUPS = [VocabularyDicts, VocabularyTable]


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_each_field_finds_its_own_vocabulary(lookup: type) -> None:
    found = lookup([("news", "sports"), ("sports", "x")]).find(
        # Two rows of two fields, row after row; "sports" means different things per field.
        ["sports", "x", "news", "sports"],
        rows=2,
    )
    assert found.tolist() == [NUM_RESERVED + 1, NUM_RESERVED + 1, NUM_RESERVED, NUM_RESERVED]


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_missing_spellings_and_absent_values(lookup: type) -> None:
    found = lookup([("a",)]).find(["", None, "b", 7, "a"], rows=5)
    assert found.tolist() == [MISSING_INDEX, MISSING_INDEX, NOT_FOUND, NOT_FOUND, NUM_RESERVED]


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_numbers_are_never_taken_for_strings_of_equal_hash(lookup: type) -> None:
    # hash(0) == hash(False) == hash(0.0) == hash("") == 0: only strings and null match.
    found = lookup([("a",)]).find([0, False, 0.0, ""], rows=4)
    assert found.tolist() == [NOT_FOUND, NOT_FOUND, NOT_FOUND, MISSING_INDEX]


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_unhashable_values_are_left_to_the_caller(lookup: type) -> None:
    with pytest.raises(TypeError):
        lookup([("a",)]).find([["a"]], rows=1)


def test_a_large_vocabulary_finds_every_stored_value_and_nothing_wrong() -> None:
    vocabulary = [f"{i:08x}" for i in range(50_000)]
    table = VocabularyTable([vocabulary])
    found = table.find(list(vocabulary), rows=len(vocabulary))
    expected = np.arange(NUM_RESERVED, NUM_RESERVED + len(vocabulary))
    stored = found != NOT_FOUND
    assert (found[stored] == expected[stored]).all()
    # The few keys that did not fit their window are the only ones left to the exact path.
    assert int((~stored).sum()) == table.unstored < len(vocabulary) // 100


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_no_fields(lookup: type) -> None:
    assert lookup([]).find([], rows=3).tolist() == []


def test_small_vocabularies_get_dicts_and_large_ones_the_table() -> None:
    half = [f"{i}" for i in range(DICTS_MAX_VALUES // 2)]
    assert isinstance(vocabulary_lookup([half, half]), VocabularyDicts)
    assert isinstance(vocabulary_lookup([half, [*half, "one more"]]), VocabularyTable)


_VOCABULARIES = [("news", "sports", "5", "true"), ("sports", "x", "0")]
json_values = (
    st.none()
    | st.booleans()
    | st.integers(-10, 10)
    | st.floats(allow_nan=True)
    | st.text(max_size=3)
    | st.sampled_from(["news", "sports", "5", "true", "x", "0", ""])
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(json_values, json_values), max_size=20))
def test_the_dicts_and_the_table_agree_on_any_json_values(
    rows: list[tuple[object, object]],
) -> None:
    values = [value for row in rows for value in row]
    dicts = VocabularyDicts(_VOCABULARIES).find(values, len(rows))
    table = VocabularyTable(_VOCABULARIES).find(values, len(rows))
    np.testing.assert_array_equal(dicts, table)
