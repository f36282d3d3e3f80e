"""Batch rows decoded straight into the model's fields encode exactly as decoded dicts do."""

import json

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.features.encoder import FeatureEncoder
from app.features.errors import EncodeError
from app.features.spec import CategoricalField, FeatureSpec, NumericField
from app.scoring.rows import RowDecoder
from support.fuzz import ENCODER, rows

# Field names JSON allows and Python does not, in an order that mixes the two kinds.
ODD = FeatureSpec(
    fields=(
        NumericField(name="1st-age", binning="quantile", bin_edges=(18.0, 30.0)),
        CategoricalField(name="user agent", vocabulary=("a", "b")),
        CategoricalField(name="class", vocabulary=("x",)),
    )
)


def _texts(batch: list[object]) -> list[bytes]:
    return [json.dumps(row).encode() for row in batch]


def _by_dicts(encoder: FeatureEncoder, batch: list[object]) -> np.ndarray | None:
    try:
        return encoder.encode_rows(batch)  # type: ignore[arg-type]
    except EncodeError:
        return None


def _by_structs(encoder: FeatureEncoder, texts: list[bytes]) -> np.ndarray | None:
    values = RowDecoder(encoder).values(texts)
    assert values is not None
    try:
        return encoder.encode_values(*values, len(texts))
    except EncodeError:
        return None


@pytest.mark.parametrize("copies", [1, 100])  # the value path and the batch path
def test_odd_field_names_and_left_out_keys(copies: int) -> None:
    encoder = FeatureEncoder(ODD)
    batch = [{"user agent": "b", "1st-age": 20}, {"class": "x"}, {"1st-age": None, "class": 5}]
    batch *= copies
    expected = encoder.encode_rows(batch)
    assert expected[:3].tolist() == [[3, 3, 0], [0, 0, 2], [0, 0, 1]]
    np.testing.assert_array_equal(_by_structs(encoder, _texts(batch)), expected)


@pytest.mark.parametrize(
    "row",
    [
        {"nope": "a"},  # an unknown field
        {"class": ["x"]},  # not a JSON scalar
        {"class": {"x": 1}},
        3,  # not an object
        "class",
    ],
)
def test_a_row_not_of_the_models_shape_is_left_to_the_generic_path(row: object) -> None:
    decoder = RowDecoder(FeatureEncoder(ODD))
    assert decoder.values(_texts([{"class": "x"}, row])) is None


def test_a_model_of_one_field_of_each_kind() -> None:
    spec = FeatureSpec(
        fields=(
            CategoricalField(name="site", vocabulary=("news",)),
            NumericField(name="age", binning="quantile", bin_edges=(18.0,)),
        )
    )
    values = RowDecoder(FeatureEncoder(spec)).values(_texts([{"site": "news", "age": 3}, {}]))
    assert values == (["news", None], [3, None])


@settings(max_examples=500, deadline=None)
@given(st.lists(rows, min_size=1, max_size=6), st.integers(1, 60))
def test_any_rows_of_the_models_shape_encode_as_dicts_do(
    distinct: list[dict[str, object]], copies: int
) -> None:
    texts = _texts(distinct * copies)
    if RowDecoder(ENCODER).values(texts) is None:
        # Not the model's shape: check that the generic path refuses it too, or that
        # msgspec's Any would have decoded what the struct could not.
        with pytest.raises((EncodeError, msgspec.DecodeError)):
            ENCODER.encode_rows(msgspec.json.decode(b"[" + b",".join(texts) + b"]"))
        return
    batch = [json.loads(text) for text in texts]
    expected, got = _by_dicts(ENCODER, batch), _by_structs(ENCODER, texts)
    if expected is None:
        assert got is None
    else:
        np.testing.assert_array_equal(got, expected)


def test_a_whole_body_decodes_its_rows_as_their_texts_do() -> None:
    encoder = FeatureEncoder(ODD)
    decoder = RowDecoder(encoder)
    batch = [{"user agent": "b", "1st-age": 20}, {"class": "x"}, {"1st-age": None, "class": 5}]
    for body in ({"instances": batch}, {"features": None, "instances": batch}):
        decoded = decoder.body(json.dumps(body).encode())
        assert decoded is not None
        assert decoded.features is None
        assert decoded.rows is not None
        assert decoder.values_of(decoded.rows) == decoder.values(_texts(batch))
    assert decoder.body(b'{"features": {"class": "x", "1st-age": 2}}') == (
        {"class": "x", "1st-age": 2},
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"nope": "a"}]}',  # a row not of the model's shape
        b'{"instances": [{"class": ["x"]}]}',
        b'{"instances": [3]}',
        b'{"instances": []}',  # not one row nor a batch of rows
        b"{}",
        b'{"features": {}, "instances": [{}]}',
        b'{"instances": [{}], "extra": 1}',
        b'{"instances": [{}]',  # not JSON
    ],
)
def test_a_body_the_model_cannot_take_whole_is_left_to_the_generic_parse(body: bytes) -> None:
    assert RowDecoder(FeatureEncoder(ODD)).body(body) is None
