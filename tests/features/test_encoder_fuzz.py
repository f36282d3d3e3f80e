"""Property-based tests of the encoder: any JSON value either encodes into range or is
refused with an EncodeError naming its field -- never another exception."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.features.encoder import SMALL_BATCH_VALUES
from app.features.errors import EncodeError
from support.fuzz import ENCODER, FIELD_NAMES, SPEC, rows


@settings(max_examples=2000, deadline=None)
@given(st.lists(rows, min_size=1, max_size=5))
def test_any_json_encodes_in_range_or_names_the_field(batch: list[dict[str, object]]) -> None:
    try:
        out = ENCODER.encode_rows(batch)
    except EncodeError as error:
        refused: str | None = error.field
    else:
        refused = None
    if refused is not None:
        assert refused in FIELD_NAMES
        return
    assert out.shape == (len(batch), 3)
    assert out.dtype == np.int64
    assert ((out >= 0) & (out < np.array(SPEC.field_dims))).all()


scalars = st.none() | st.sampled_from(["news", "5", "sports", "", "x"]) | st.integers(-10, 10)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(scalars, st.none() | st.floats(-1e6, 1e6)), min_size=1, max_size=20))
def test_rows_and_columns_agree(values: list[tuple[object, float | None]]) -> None:
    batch = [{"site": site, "age": age} for site, age in values]
    columns = {
        "site": np.array([site for site, _ in values], dtype=object),
        "age": np.array([np.nan if age is None else age for _, age in values]),
    }
    np.testing.assert_array_equal(
        ENCODER.encode_rows(batch), ENCODER.encode_columns(columns, len(values))
    )


def _alone(row: dict[str, object]) -> np.ndarray | None:
    try:
        return ENCODER.encode_rows([row])[0]
    except EncodeError:
        return None


@settings(max_examples=500, deadline=None)
@given(st.lists(rows, min_size=1, max_size=6))
def test_a_large_batch_encodes_as_its_rows_one_by_one(distinct: list[dict[str, object]]) -> None:
    # Enough rows for the batch path (more than SMALL_BATCH_VALUES values).
    batch = distinct * (1 + SMALL_BATCH_VALUES // len(distinct))
    alone = [_alone(row) for row in batch]
    if any(row is None for row in alone):
        with pytest.raises(EncodeError):
            ENCODER.encode_rows(batch)
    else:
        np.testing.assert_array_equal(ENCODER.encode_rows(batch), np.stack(alone))
