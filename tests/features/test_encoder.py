import math

import numpy as np
import pytest

from app.features.encoder import FeatureEncoder, canonical_token
from app.features.errors import EncodeError
from app.features.spec import (
    MISSING_INDEX,
    NUM_RESERVED,
    UNSEEN_INDEX,
    CategoricalField,
    FeatureSpec,
    NumericField,
)


@pytest.fixture
def encoder() -> FeatureEncoder:
    spec = FeatureSpec(
        fields=(
            CategoricalField(name="site", vocabulary=("news", "sports", "5")),
            NumericField(name="age", binning="quantile", bin_edges=(18.0, 30.0, 50.0)),
        )
    )
    return FeatureEncoder(spec)


def test_known_values_take_their_rows(encoder: FeatureEncoder) -> None:
    out = encoder.encode_rows([{"site": "news", "age": 25}, {"site": "5", "age": 60}])
    assert out.dtype == np.int64
    assert out.tolist() == [
        [NUM_RESERVED + 0, NUM_RESERVED + 1],
        [NUM_RESERVED + 2, NUM_RESERVED + 3],
    ]


@pytest.mark.parametrize("row", [{}, {"site": None, "age": None}, {"site": "", "age": ""}])
def test_missing_values(encoder: FeatureEncoder, row: dict[str, object]) -> None:
    assert encoder.encode_rows([row]).tolist() == [[MISSING_INDEX, MISSING_INDEX]]


def test_unseen_values_share_one_row(encoder: FeatureEncoder) -> None:
    out = encoder.encode_rows([{"site": "never"}, {"site": "seen"}, {"site": 123}])
    assert out[:, 0].tolist() == [UNSEEN_INDEX] * 3


@pytest.mark.parametrize(
    ("age", "expected_bin"),
    [(-1e9, 0), (17.999, 0), (18.0, 1), (29.9, 1), (30.0, 2), (50.0, 3), (1e12, 3), ("25", 1)],
)
def test_numeric_bin_edges(encoder: FeatureEncoder, age: object, expected_bin: int) -> None:
    assert encoder.encode_rows([{"age": age}])[0, 1] == NUM_RESERVED + expected_bin


@pytest.mark.parametrize("spelling", [5, 5.0, "5", np.int64(5)])
def test_equivalent_spellings_encode_alike(encoder: FeatureEncoder, spelling: object) -> None:
    assert encoder.encode_rows([{"site": spelling}])[0, 0] == NUM_RESERVED + 2


def test_key_order_does_not_matter(encoder: FeatureEncoder) -> None:
    a = encoder.encode_rows([{"site": "news", "age": 20}])
    b = encoder.encode_rows([{"age": 20, "site": "news"}])
    assert a.tolist() == b.tolist()


def test_unknown_field_lists_allowed_ones(encoder: FeatureEncoder) -> None:
    with pytest.raises(EncodeError, match=r"unknown field.*\['site', 'age'\]") as info:
        encoder.encode_rows([{"sitee": "news"}])
    assert info.value.field == "sitee"


@pytest.mark.parametrize("bad", ["old", [1], {"a": 1}, True, math.inf])
def test_bad_numeric_values_name_the_field(encoder: FeatureEncoder, bad: object) -> None:
    with pytest.raises(EncodeError) as info:
        encoder.encode_rows([{"age": bad}])
    assert info.value.field == "age"


def test_bad_categorical_type(encoder: FeatureEncoder) -> None:
    with pytest.raises(EncodeError, match="site"):
        encoder.encode_rows([{"site": ["news"]}])


def test_columns_and_rows_agree(encoder: FeatureEncoder) -> None:
    rows = [
        {"site": "news", "age": 20.0},
        {"site": None, "age": None},
        {"site": "x", "age": 99},
    ]
    columns = {
        "site": np.array(["news", None, "x"], dtype=object),
        "age": np.array([20.0, math.nan, 99.0]),
    }
    assert encoder.encode_columns(columns, 3).tolist() == encoder.encode_rows(rows).tolist()


def test_columns_of_wrong_length(encoder: FeatureEncoder) -> None:
    with pytest.raises(EncodeError, match="expected 3"):
        encoder.encode_columns({"site": ["a", "b"]}, 3)


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (None, None),
        ("", None),
        ("a", "a"),
        (7, "7"),
        (7.0, "7"),
        (7.5, "7.5"),
        (True, "true"),
    ],
)
def test_canonical_token(value: object, token: str | None) -> None:
    assert canonical_token(value) == token


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_request_rows_refuse_non_finite_numbers(encoder: FeatureEncoder, value: float) -> None:
    for field in ("site", "age"):
        with pytest.raises(EncodeError, match="null for missing") as info:
            encoder.encode_rows([{field: value}])
        assert info.value.field == field


def test_training_columns_read_nan_as_missing(encoder: FeatureEncoder) -> None:
    out = encoder.encode_columns({"age": np.array([math.nan, 20.0])}, 2)
    assert out[:, 1].tolist() == [MISSING_INDEX, NUM_RESERVED + 1]


@pytest.mark.parametrize("rows", [1, 200])  # the value path and the batch path
def test_integers_beyond_float64_are_refused(encoder: FeatureEncoder, rows: int) -> None:
    with pytest.raises(EncodeError, match=r"not a finite number|infinite") as info:
        encoder.encode_rows([{"site": "news", "age": 10**400}] * rows)
    assert info.value.field == "age"


def test_a_batch_of_numeric_strings_and_numbers_encodes_as_single_rows(
    encoder: FeatureEncoder,
) -> None:
    rows = [{"site": s, "age": a} for s, a in [("news", "25"), (5, 60), ("x", None), (None, 17.5)]]
    batch = rows * 100
    singles = np.vstack([encoder.encode_rows([row]) for row in rows] * 100)
    np.testing.assert_array_equal(encoder.encode_rows(batch), singles)


@pytest.mark.parametrize(
    "odd", [{"site": "news", "age": 20, "other": 1}, {"site": "news", "other": 1}]
)
def test_a_batch_with_an_unknown_field_is_refused(
    encoder: FeatureEncoder, odd: dict[str, object]
) -> None:
    rows = [{"site": "news", "age": 20}] * 300  # enough values for the batch path
    with pytest.raises(EncodeError, match="unknown field") as info:
        encoder.encode_rows([*rows, odd])
    assert info.value.field == "other"
    assert encoder.encode_rows([*rows, {"age": 20}])[-1].tolist() == [
        MISSING_INDEX,
        NUM_RESERVED + 1,
    ]


@pytest.mark.parametrize("rows", [100, 300])  # one search of merged edges; one a field
def test_a_batch_bins_every_numeric_field_as_its_own_edges_do(rows: int) -> None:
    # Fields whose edges interleave and repeat one another's: each value must be counted
    # against its own field's edges only, ties included (an edge is in the bin above it).
    edges = [(0.0, 1.0, 2.0), (1.0, 1.5, 2.0, 9.0), (), (-3.0,)]
    spec = FeatureSpec(
        fields=tuple(
            NumericField(name=f"n{j}", binning="quantile", bin_edges=field_edges)
            for j, field_edges in enumerate(edges)
        )
    )
    encoder = FeatureEncoder(spec)
    candidates = [-5.0, -3.0, 0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0, 9.0, 1e300, None]
    rng = np.random.default_rng(rows)
    numbers = [candidates[i] for i in rng.integers(len(candidates), size=rows * len(edges))]
    expected = [
        MISSING_INDEX
        if value is None
        else NUM_RESERVED + int(np.searchsorted(edges[i % len(edges)], value, side="right"))
        for i, value in enumerate(numbers)
    ]
    encoded = encoder.encode_values([], numbers, rows)
    assert encoded.ravel().tolist() == expected
