"""/predict bodies decoded straight into the model's fields encode exactly as decoded dicts
do; a body the model's struct refuses is left to the generic decoding, which names what is
wrong; nesting is refused at its first step, however deep."""

import json

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.features.encoder import FeatureEncoder
from app.features.errors import EncodeError
from app.features.spec import CategoricalField, FeatureSpec, NumericField
from app.protocol.predict_json import PredictRequest, RowDecoder, render
from app.schemas import BatchPredictResponse, PredictResponse
from app.scoring.service import Scored
from support.fuzz import ENCODER, rows

# Field names JSON allows and Python does not, in an order that mixes the two kinds.
ODD = FeatureSpec(
    fields=(
        NumericField(name="1st-age", binning="quantile", bin_edges=(18.0, 30.0)),
        CategoricalField(name="user agent", vocabulary=("a", "b")),
        CategoricalField(name="class", vocabulary=("x",)),
    )
)


def _body(batch: list[object]) -> bytes:
    return json.dumps({"instances": batch}).encode()


def _by_dicts(encoder: FeatureEncoder, batch: list[object]) -> np.ndarray | None:
    try:
        return encoder.encode_rows(batch)  # type: ignore[arg-type]
    except EncodeError:
        return None


def _by_structs(encoder: FeatureEncoder, batch: list[object]) -> np.ndarray | None:
    decoded = RowDecoder(encoder).decode(_body(batch))
    assert decoded is not None
    assert (decoded.rows, decoded.single) == (len(batch), False)
    try:
        return decoded.encode(encoder)
    except EncodeError:
        return None


@pytest.mark.parametrize("copies", [1, 100])  # the value path and the batch path
def test_odd_field_names_and_left_out_keys(copies: int) -> None:
    encoder = FeatureEncoder(ODD)
    batch = [{"user agent": "b", "1st-age": 20}, {"class": "x"}, {"1st-age": None, "class": 5}]
    batch *= copies
    expected = encoder.encode_rows(batch)
    assert expected[:3].tolist() == [[3, 3, 0], [0, 0, 2], [0, 0, 1]]
    np.testing.assert_array_equal(_by_structs(encoder, batch), expected)


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
    assert decoder.decode(_body([{"class": "x"}, row])) is None


def test_a_model_of_one_field_of_each_kind() -> None:
    spec = FeatureSpec(
        fields=(
            CategoricalField(name="site", vocabulary=("news",)),
            NumericField(name="age", binning="quantile", bin_edges=(18.0,)),
        )
    )
    encoder = FeatureEncoder(spec)
    batch: list[object] = [{"site": "news", "age": 3}, {}]
    np.testing.assert_array_equal(_by_structs(encoder, batch), encoder.encode_rows(batch))  # type: ignore[arg-type]


def _generic(body: bytes) -> np.ndarray:
    request = msgspec.json.decode(body, type=PredictRequest)
    return ENCODER.encode_rows(request.instances or [])


@settings(max_examples=500, deadline=None)
@given(st.lists(rows, min_size=1, max_size=6), st.integers(1, 60))
def test_any_rows_of_the_models_shape_encode_as_dicts_do(
    distinct: list[dict[str, object]], copies: int
) -> None:
    batch: list[object] = list(distinct * copies)
    if RowDecoder(ENCODER).decode(_body(batch)) is None:
        # Not the model's shape (or not JSON: json.dumps writes NaN and Infinity): the
        # generic path refuses it too.
        with pytest.raises((EncodeError, msgspec.DecodeError)):
            _generic(_body(batch))
        return
    expected, got = _by_dicts(ENCODER, batch), _by_structs(ENCODER, batch)
    if expected is None:
        assert got is None
    else:
        np.testing.assert_array_equal(got, expected)


def test_a_single_row_body_is_one_row() -> None:
    encoder = FeatureEncoder(ODD)
    decoded = RowDecoder(encoder).decode(b'{"features": {"class": "x", "1st-age": 2}}')
    assert decoded is not None
    assert (decoded.rows, decoded.single) == (1, True)
    expected = encoder.encode_rows([{"class": "x", "1st-age": 2}])
    np.testing.assert_array_equal(decoded.encode(encoder), expected)


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
    assert RowDecoder(FeatureEncoder(ODD)).decode(body) is None


@pytest.mark.parametrize("depth", [2, 1_000, 100_000])
@pytest.mark.parametrize(
    ("opening", "closing"),
    [
        ('{"features": {"class": ', "}}"),
        ('{"instances": [', "]}"),
        ('{"features": ', "}"),
        ('{"other": ', "}"),
    ],
)
def test_nesting_is_refused_at_its_first_step(opening: str, closing: str, depth: int) -> None:
    nested = '{"a": ' * depth + "1" + "}" * depth
    deep_list = "[" * depth + "1" + "]" * depth
    for inner in (nested, deep_list):
        body = (opening + inner + closing).encode()
        assert RowDecoder(FeatureEncoder(ODD)).decode(body) is None
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(body, type=PredictRequest)


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.floats(min_value=0.0, max_value=1.0, width=32), min_size=1, max_size=5),
    data=st.data(),
)
def test_an_answer_is_the_documented_schema_with_the_scores_it_was_given(
    scores: list[float], data: st.DataObject
) -> None:
    cached = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    scored = Scored(np.array(scores, dtype=np.float32), np.array(cached), "v1")
    one = PredictResponse.model_validate_json(render(scored, single=True))
    assert (one.prediction, one.cached, one.model_version) == (scores[0], cached[0], "v1")
    batch = BatchPredictResponse.model_validate_json(render(scored, single=False))
    assert batch.predictions == scores
    assert batch.cached == cached
    assert batch.cache_hits == sum(cached)
