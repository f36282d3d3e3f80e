"""The /predict JSON wire format: ``{"features": {...}}`` (one row) or ``{"instances":
[{...}, ...]}`` (a batch), decoded into what the scoring pipeline encodes, and the answer.

A body is decoded by msgspec straight into one struct type per model version, whose fields
are the model's: msgspec matches each key to its slot in C and refuses an unknown field, or
a value that is not a JSON scalar, on the way; a batch's values then come out in field
order with one ``attrgetter`` a row, with no dict built a row. A body that struct refuses
is decoded again generically, so that the error names what is wrong and where.

Every value is a JSON scalar by type, so no body, however deeply nested, makes these
decoders recurse past one level: nesting is refused at its first step (a 422).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from app.features.encoder import FeatureEncoder
from app.features.errors import EncodeError
from app.model.scorer import Scorer
from app.prediction_log.log import Columns, Values
from app.scoring.service import Encode, PredictionService, Scored

# What a feature value may be in JSON; the encoder checks it against its field's kind.
Value = str | int | float | bool | None
_FEATURES_DESCRIPTION = "field name -> value; a field left out or null is 'missing'"
Features = Annotated[dict[str, Value], msgspec.Meta(description=_FEATURES_DESCRIPTION)]


class PredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Either one row (`features`) or a batch (`instances`)."""

    features: Features | None = None
    instances: Annotated[list[Features], msgspec.Meta(min_length=1)] | None = None


class BodyError(ValueError):
    """A /predict body that is not valid JSON or not the request's shape (answered 422)."""


class BatchTooLargeError(ValueError):
    """A /predict batch of more rows than ``CTR_MAX_BATCH_SIZE`` (answered 413)."""


class _LooseRequest(msgspec.Struct):
    """A body with any JSON as values: decoded only to let the encoder name a value that is
    not a scalar (msgspec names it ``[...]``), so it may recurse (and is guarded)."""

    features: dict[str, Any] | None = None
    instances: list[dict[str, Any]] | None = None


_REQUEST = msgspec.json.Decoder(PredictRequest)
_LOOSE = msgspec.json.Decoder(_LooseRequest)
_JSON = msgspec.json.Encoder()


# Rows of a body (dicts, or the model's structs) encoded by the model's encoder.
EncodeRows = Callable[[FeatureEncoder, Sequence[Any]], NDArray[np.int64]]


@dataclass(frozen=True)
class PredictBody:
    """A decoded body: how to encode its rows, how many there are, whether it was one row
    (``features``) or a batch, and its values by field (for the prediction log)."""

    encode: Encode
    rows: int
    single: bool
    values: Values


def predict_request_schema() -> dict[str, Any]:
    """The JSON schema of :class:`PredictRequest`, for the OpenAPI document."""
    schema: dict[str, Any] = msgspec.json.schema(PredictRequest)["$defs"]["PredictRequest"]
    schema["examples"] = [{"features": {"c0": "c0_1", "n0": 2.5}}]
    return schema


def decode(body: bytes, scorer: Scorer) -> PredictBody:
    """A /predict body for ``scorer``'s fields. Raises :class:`BodyError`."""
    fast = _decoder(scorer).decode(body)
    if fast is not None:
        return fast
    request: PredictRequest | _LooseRequest
    try:
        request = _REQUEST.decode(body)
    except msgspec.ValidationError as exc:
        if "[...]" not in str(exc):
            raise BodyError(str(exc)) from None
        request = _loose(body, exc)  # a value that is not a scalar: the encoder names it
    except msgspec.DecodeError as exc:
        raise BodyError(f"Invalid JSON: {exc}") from None
    if (request.features is None) == (request.instances is None):
        raise BodyError("send exactly one of 'features' (one row) or 'instances' (a batch)")
    if request.features is not None:
        return _one_row(request.features)
    rows = request.instances or []
    return _batch(
        rows,
        lambda encoder, part: encoder.encode_rows(part),
        lambda encoder: {name: [row.get(name) for row in rows] for name in encoder.names},
    )


def _loose(body: bytes, error: msgspec.ValidationError) -> _LooseRequest:
    try:
        return _LOOSE.decode(body)
    except RecursionError:  # msgspec stops at the interpreter's limit and unwinds cleanly
        raise BodyError(f"{error}: nested too deeply") from None
    except msgspec.DecodeError:
        raise BodyError(str(error)) from None


async def answer(
    service: PredictionService,
    max_batch_size: int,
    body: bytes,
    model: str | None = None,
    version: str | None = None,
) -> bytes:
    """The JSON answer to a /predict body for ``model`` (the default one for ``None``) and
    ``version`` (a version or a label; unset: routed by the model's policy). Raises one of
    :data:`app.api.errors.SCORING_ERRORS` (a bad body or feature, too many rows, an unknown
    model, a failed onnxruntime call, overload)."""
    served = service.model(model)
    lineup = served.lineup  # one lineup for the whole request
    decoding = served.addressed(lineup, version)
    started = time.perf_counter()
    request = decode(body, decoding)
    service.parsed(time.perf_counter() - started)
    if request.rows > max_batch_size:
        raise BatchTooLargeError(
            f"batch of {request.rows} rows exceeds the limit of {max_batch_size} "
            "(CTR_MAX_BATCH_SIZE)"
        )
    target = served.route(lineup, version, lambda field: _first(request, decoding, field))
    scored = await service.score(target, request.encode, request.rows, request.values)
    return render(scored, request.single)


def _first(request: PredictBody, scorer: Scorer, field: str) -> object:
    """The value of ``field`` in the request's first row (a split keyed by a feature)."""
    values = request.values
    if isinstance(values, Mapping):
        return values.get(field)
    column = values(scorer.encoder).get(field)
    return None if column is None or not len(column) else column[0]


def render(scored: Scored, single: bool) -> bytes:
    """The JSON body of a /predict answer, in the documented shapes (``PredictResponse``,
    ``BatchPredictResponse`` in app/schemas.py), written by msgspec: building and dumping
    the pydantic model a request would cost more than the rest of a cache hit's answer."""
    if single:
        return _JSON.encode(
            {
                "prediction": float(scored.scores[0]),
                "model_version": scored.version,
                "cached": bool(scored.cached[0]),
            }
        )
    return _JSON.encode(
        {
            "predictions": scored.scores.tolist(),
            "model_version": scored.version,
            "cached": scored.cached.tolist(),
            "cache_hits": scored.cache_hits,
        }
    )


def _one_row(features: dict[str, Any]) -> PredictBody:
    return PredictBody(
        lambda encoder: encoder.encode_rows([features]),
        1,
        single=True,
        values=features,
    )


def _batch(rows: Sequence[Any], encode_rows: EncodeRows, columns: Columns) -> PredictBody:
    """A batch whose rows ``encode_rows`` encodes; an ``EncodeError`` names the first row
    that does not encode alone (the batch paths encode a field or a batch at a time)."""

    def encode(encoder: FeatureEncoder) -> NDArray[np.int64]:
        try:
            return encode_rows(encoder, rows)
        except EncodeError:
            for i in range(len(rows)):
                try:
                    encode_rows(encoder, rows[i : i + 1])
                except EncodeError as alone:
                    raise alone.in_row(i) from None
            raise

    return PredictBody(encode, len(rows), single=False, values=columns)


def _values_getter(slots: Sequence[str]) -> Callable[[Sequence[Any]], list[object]]:
    """A function giving rows' values of ``slots``, row after row."""
    if not slots:
        return lambda rows: []
    if len(slots) == 1:  # attrgetter of one name gives the value, not a tuple of one
        one = attrgetter(slots[0])
        return lambda rows: list(map(one, rows))
    many = attrgetter(*slots)
    return lambda rows: list(chain.from_iterable(map(many, rows)))


class RowDecoder:
    """/predict bodies decoded straight into one model's fields.

    A key left out of a row is ``None`` (missing). Field names need not be Python
    identifiers: the struct's slots are ``f0``, ``f1``... renamed to them.
    """

    def __init__(self, encoder: FeatureEncoder) -> None:
        names = [*encoder.categorical_names, *encoder.numeric_names]
        slots = [f"f{i}" for i in range(len(names))]
        row = msgspec.defstruct(
            "Row",
            [(slot, Value, None) for slot in slots],
            rename=dict(zip(slots, names, strict=True)),
            forbid_unknown_fields=True,
            gc=False,  # holds only scalars: no reference cycles to track
        )
        body = msgspec.defstruct(
            "Body",
            [("features", Features | None, None), ("instances", list[row] | None, None)],  # type: ignore[valid-type]
            forbid_unknown_fields=True,
        )
        self._body: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)
        split = len(encoder.categorical_names)
        self._categorical = _values_getter(slots[:split])
        self._numeric = _values_getter(slots[split:])
        self._layout = (encoder.categorical_names, encoder.numeric_names)

    def decode(self, body: bytes) -> PredictBody | None:
        """The body, or ``None`` when it is anything but one row or a non-empty batch of the
        model's row shape: the generic decoding then says what is wrong."""
        try:
            decoded = self._body.decode(body)
        except msgspec.DecodeError:
            return None
        features, rows = decoded.features, decoded.instances
        if (features is None) == (rows is None) or rows == []:
            return None
        if features is not None:
            return _one_row(features)
        return _batch(rows, self._encode, lambda encoder: self._columns(encoder, rows))

    def values_of(self, rows: Sequence[Any]) -> tuple[list[object], list[object]]:
        """The categorical and the numeric values of rows decoded by this decoder."""
        return self._categorical(rows), self._numeric(rows)

    def _encode(self, encoder: FeatureEncoder, rows: Sequence[Any]) -> NDArray[np.int64]:
        if (encoder.categorical_names, encoder.numeric_names) == self._layout:
            return encoder.encode_values(*self.values_of(rows), len(rows))
        # Another version of other fields (a shadow, a split): by name, a field at a time.
        present = {k: v for k, v in self._columns(encoder, rows).items() if any(map(_given, v))}
        return encoder.encode_columns(present, len(rows))

    def _columns(self, encoder: FeatureEncoder, rows: Sequence[Any]) -> dict[str, list[object]]:
        """Each of this decoder's fields' values, from the row after row values of
        :meth:`values_of` (whichever version's ``encoder`` asks)."""
        columns: dict[str, list[object]] = {}
        for names, values in zip(self._layout, self.values_of(rows), strict=True):
            for j, name in enumerate(names):
                columns[name] = values[j :: len(names)]
        return columns


def _given(value: object) -> bool:
    return value is not None


# One decoder per loaded model version, made on its first request and gone with it.
_DECODERS: weakref.WeakKeyDictionary[Scorer, RowDecoder] = weakref.WeakKeyDictionary()


def _decoder(scorer: Scorer) -> RowDecoder:
    decoder = _DECODERS.get(scorer)
    if decoder is None:
        decoder = _DECODERS[scorer] = RowDecoder(scorer.encoder)
    return decoder
