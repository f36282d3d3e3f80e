"""The columnar (tensor) encoder agrees exactly with the per-row encoder the service uses.

The inference protocol sends one typed array per field (str, bytes, numbers); /predict sends
JSON rows. Both must give a model the same indices for the same values: missing (null in a
row; an empty string or NaN in a tensor), unseen values, numbers sent as strings, numeric
edges and ties, non-ASCII text, over-long strings.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.features.encoder import SMALL_COLUMN_ROWS, FeatureEncoder
from app.features.errors import EncodeError
from app.features.spec import CategoricalField, FeatureSpec, NumericField

EDGES = (-1.5, 0.0, 1.0, 2.5, 1e6)
SPEC = FeatureSpec(
    fields=(
        CategoricalField(name="site", vocabulary=("news", "5", "sports", "café", "-3", "0.25")),
        NumericField(name="count", binning="quantile", bin_edges=EDGES),
        CategoricalField(name="ids", vocabulary=tuple(str(i) for i in range(0, 50, 3))),
        CategoricalField(name="empty", vocabulary=()),
    )
)
ENCODER = FeatureEncoder(SPEC, max_value_chars=12)

tokens = st.sampled_from(["news", "5", "sports", "café", "-3", "0.25", ""]) | st.text(max_size=14)
numbers = (
    st.sampled_from([*EDGES, *(np.nextafter(e, np.inf) for e in EDGES), -0.0])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**40), 2**40).map(float)
)


@st.composite
def columns(draw: st.DrawFn) -> tuple[list[dict[str, object]], dict[str, np.ndarray]]:
    """The same values as JSON rows and as typed tensors, in every spelling tensors allow."""
    # both sides of SMALL_COLUMN_ROWS: value by value below it, whole arrays above
    n = draw(st.integers(1, SMALL_COLUMN_ROWS + 8))
    site = draw(st.lists(tokens, min_size=n, max_size=n))
    count = draw(st.lists(st.none() | numbers, min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(-5, 60), min_size=n, max_size=n))
    rows: list[dict[str, object]] = [
        {"site": s or None, "count": c, "ids": i} for s, c, i in zip(site, count, ids, strict=True)
    ]
    # numpy's fixed-width strings drop trailing NULs, so such values travel as objects (as
    # the protocol decodes them); everything else as str or UTF-8 bytes arrays
    exact = any(s.endswith("\x00") for s in site)
    site_tensor = draw(
        st.sampled_from(
            [np.array(site, dtype=object)]
            if exact
            else [np.array(site, dtype=np.str_), np.array([s.encode() for s in site], np.bytes_)]
        )
    )
    as_float = np.array([np.nan if c is None else c for c in count], dtype=np.float64)
    as_text = np.array(["" if c is None else repr(float(c)) for c in count], dtype=np.str_)
    with np.errstate(over="ignore"):  # beyond float32: inf, which both paths refuse
        as_single = as_float.astype(np.float32)
    count_tensor = draw(st.sampled_from([as_float, as_single, as_text]))
    if count_tensor.dtype == np.float32:  # the row carries what the tensor can hold
        for row, value in zip(rows, count_tensor.tolist(), strict=True):
            row["count"] = None if np.isnan(value) else value
    elif count_tensor.dtype.kind == "U":  # numbers as text in both, length limit and all
        for row, text in zip(rows, count_tensor.tolist(), strict=True):
            row["count"] = text or None
    ids_tensor = draw(
        st.sampled_from(
            [
                np.array(ids, dtype=np.int64),
                np.array(ids, dtype=np.int32),
                np.array(ids, dtype=np.float64),
                np.array([str(i) for i in ids], dtype=np.str_),
            ]
        )
    )
    return rows, {"site": site_tensor, "count": count_tensor, "ids": ids_tensor}


def _encode(encode: object) -> np.ndarray | str:
    try:
        return encode()  # type: ignore[operator]
    except EncodeError as error:
        return f"refused: {error.field}"


@settings(max_examples=1500, deadline=None)
@given(columns())
def test_tensors_encode_exactly_as_rows(case: tuple[list[dict[str, object]], dict]) -> None:
    rows, tensors = case
    by_row = _encode(lambda: ENCODER.encode_rows(rows))
    by_column = _encode(lambda: ENCODER.encode_columns(tensors, len(rows)))
    if isinstance(by_row, str) or isinstance(by_column, str):
        # Both refuse. With several bad values each may name a different one first (rows
        # are read row by row, tensors field by field); the single-fault cases are below.
        assert isinstance(by_row, str), (by_column, rows, tensors)
        assert isinstance(by_column, str), (by_row, rows, tensors)
    else:
        np.testing.assert_array_equal(by_column, by_row)


def test_missing_spellings_in_tensors() -> None:
    out = ENCODER.encode_columns(
        {
            "site": np.array(["", "news"]),
            "count": np.array([np.nan, 1.0]),
            "ids": np.array([b"", b"3"]),
        },
        2,
    )
    assert out[0].tolist() == [0, 0, 0, 0]  # every field missing (empty is absent)
    assert out[1, 0] == 2  # "news", the first vocabulary value


@pytest.mark.parametrize(
    ("tensors", "field", "message"),
    [
        ({"count": np.array(["1.5", "cheap"])}, "count", "expected a number, got 'cheap'"),
        ({"count": np.array([np.inf])}, "count", "inf"),
        ({"site": np.array(["x" * 13])}, "site", "13 characters exceeds 12"),
        ({"site": np.array([np.inf])}, "site", "inf"),
        # past SMALL_COLUMN_ROWS: the whole-array path
        ({"count": np.array([np.inf] * (SMALL_COLUMN_ROWS + 1))}, "count", "infinite"),
    ],
)
def test_bad_tensors_are_refused_naming_the_field(tensors, field: str, message: str) -> None:
    with pytest.raises(EncodeError, match=message) as caught:
        ENCODER.encode_columns(tensors, len(next(iter(tensors.values()))))
    assert caught.value.field == field
