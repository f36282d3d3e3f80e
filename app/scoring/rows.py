"""A batch's rows decoded by msgspec straight into one struct type per model version.

Decoded into dicts, every row of a batch costs a dict and a hash of each of its keys, and
taking the values out in field order costs a dict lookup each: 100 rows of the 39-field
production model took 299 µs to decode from their text and ~190 µs more to take the values
out (the 10-field default model: 75 and 30). Decoded into a struct whose fields are the
model's, the same rows take 203 µs, values taken out included (default: 63): msgspec
matches each key to its slot in C, and refuses an unknown field, or a value that is not a
JSON scalar, on the way.

A whole /predict body can be decoded the same way (:meth:`RowDecoder.body`), its rows
straight into the struct: the generic parse keeps them as text first (``msgspec.Raw``, for
the response cache's row lookups), and joining and decoding that text again cost a 100-row
batch 22 µs more on the default model and 55 µs more on the production NFFM (88 against 67
µs; 264 against 208).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec

from app.features.encoder import FeatureEncoder
from app.schemas import Features

# What a feature value may be in JSON; the encoder checks it against its field's kind.
_Value = str | int | float | bool | None


def _values_getter(slots: Sequence[str]) -> Callable[[list[msgspec.Struct]], list[object]]:
    """A function giving rows' values of ``slots``, row after row."""
    if not slots:
        return lambda rows: []
    if len(slots) == 1:  # attrgetter of one name gives the value, not a tuple of one
        one = attrgetter(slots[0])
        return lambda rows: list(map(one, rows))
    many = attrgetter(*slots)
    return lambda rows: list(chain.from_iterable(map(many, rows)))


class DecodedBody(NamedTuple):
    """A /predict body decoded for one model: exactly one of the two is set."""

    features: dict[str, Any] | None  # one row, as the generic parse decodes it
    rows: list[Any] | None  # a batch of at least one row, each in the model's struct


class RowDecoder:
    """Decode a batch's row texts into the values :meth:`FeatureEncoder.encode_values` takes.

    A key left out of a row is ``None`` (missing), as in the row path. Field names need not
    be Python identifiers: the struct's slots are ``f0``, ``f1``... renamed to them.
    """

    def __init__(self, encoder: FeatureEncoder) -> None:
        names = [*encoder.categorical_names, *encoder.numeric_names]
        slots = [f"f{i}" for i in range(len(names))]
        row = msgspec.defstruct(
            "Row",
            [(slot, _Value, None) for slot in slots],
            rename=dict(zip(slots, names, strict=True)),
            forbid_unknown_fields=True,
            gc=False,  # holds only scalars: no reference cycles to track
        )
        self._decoder = msgspec.json.Decoder(list[row])  # type: ignore[valid-type]
        body = msgspec.defstruct(
            "Body",
            [("features", Features | None, None), ("instances", list[row] | None, None)],  # type: ignore[valid-type]
            forbid_unknown_fields=True,
        )
        self._body: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)
        split = len(encoder.categorical_names)
        self._categorical = _values_getter(slots[:split])
        self._numeric = _values_getter(slots[split:])

    def values(self, texts: Sequence[bytes]) -> tuple[list[object], list[object]] | None:
        """The categorical and the numeric values of rows given as their JSON texts, or
        ``None`` when a row is not the model's row shape (an unknown field, a value that is
        not a JSON scalar, a row that is not an object): the generic path says which."""
        try:
            rows = self._decoder.decode(b"[" + b",".join(texts) + b"]")
        except msgspec.DecodeError:
            return None
        return self.values_of(rows)

    def values_of(self, rows: list[Any]) -> tuple[list[object], list[object]]:
        """The categorical and the numeric values of rows decoded by this decoder."""
        return self._categorical(rows), self._numeric(rows)

    def body(self, body: bytes) -> DecodedBody | None:
        """A /predict body with its rows decoded into the model's struct, or ``None`` when
        it is anything but one row or a non-empty batch of the model's row shape: the
        generic parse then says what is wrong, or keeps rows this one refuses (an unknown
        field, a value that is not a JSON scalar) for the encoder to name."""
        try:
            decoded = self._body.decode(body)
        except msgspec.DecodeError:
            return None
        features, rows = decoded.features, decoded.instances
        if (features is None) == (rows is None) or rows == []:
            return None
        return DecodedBody(features, rows)
