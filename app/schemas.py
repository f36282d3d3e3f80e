"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

# Values are checked by the encoder, which knows each field's kind and names the field in
# its error; validating a union type per value here costs more than scoring a batch.
_FEATURES_DESCRIPTION = "field name -> value; a field left out or null is 'missing'"
_VALUE_TYPES = ["string", "number", "boolean", "null"]
_ROW_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": _VALUE_TYPES},
    "description": _FEATURES_DESCRIPTION,
}
# /predict's rows (decoded by msgspec) ...
Features = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description=_FEATURES_DESCRIPTION,
        extra_json_schema={"additionalProperties": {"type": _VALUE_TYPES}},
    ),
]
# ... and /explain's row (a pydantic model, as every other body): the same JSON.
ExplainFeatures = Annotated[
    dict[StrictStr, object],
    WithJsonSchema(_ROW_SCHEMA),
]


# Decoded by msgspec, not pydantic: measured on 100-row bodies of a 39-field model, 220 µs
# against 355 µs (orjson alone: 201 µs), and the body is the largest Python cost of a batch
# after encoding. Only its shape is checked here; the values, by the encoder. A batch's rows
# are kept as their JSON text (msgspec.Raw, checked to be JSON): a row whose exact text was
# scored lately is answered from the response cache without being decoded or encoded
# (PredictionService.predict_batch); decode_rows decodes the others, all in one call.
class PredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Either one row (`features`) or a batch (`instances`)."""

    features: Features | None = None
    instances: (
        Annotated[
            list[Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema=_ROW_SCHEMA)]],
            msgspec.Meta(min_length=1),
        ]
        | None
    ) = None


class _RowsRequest(msgspec.Struct):
    """A batch with its rows decoded: what a row that fails to decode is reported against
    (its other keys were checked by :func:`parse_predict` already, ``"features": null``)."""

    instances: list[Features]


class BodyError(ValueError):
    """A /predict body that is not valid JSON or not the request's shape (answered 422)."""


class BatchTooLargeError(ValueError):
    """A /predict batch of more rows than ``CTR_MAX_BATCH_SIZE`` (answered 413)."""


_REQUEST = msgspec.json.Decoder(PredictRequest)
_ROWS = msgspec.json.Decoder(list[Features])


def parse_predict(body: bytes) -> PredictRequest:
    """Decode and check a /predict body. Raises :class:`BodyError` saying what is wrong."""
    try:
        request = _REQUEST.decode(body)
    except msgspec.ValidationError as exc:
        raise BodyError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BodyError(f"Invalid JSON: {exc}") from None
    if (request.features is None) == (request.instances is None):
        raise BodyError("send exactly one of 'features' (one row) or 'instances' (a batch)")
    return request


def decode_rows(rows: Sequence[bytes], body: bytes) -> list[dict[str, Any]]:
    """Rows of ``body`` (a batch :func:`parse_predict` accepted) as dicts, in one decode.

    Raises :class:`BodyError` naming the row's place in the whole body (``$.instances[3]``)
    when one is not a JSON object.
    """
    try:
        return _ROWS.decode(b"[" + b",".join(rows) + b"]")
    except msgspec.ValidationError as exc:
        try:  # the whole batch again, so that the message points into the body as sent
            msgspec.json.decode(body, type=_RowsRequest)
        except msgspec.ValidationError as whole:
            raise BodyError(str(whole)) from None
        raise BodyError(str(exc)) from None


def predict_request_schema() -> dict[str, Any]:
    """The JSON schema of :class:`PredictRequest`, for the OpenAPI document."""
    schema: dict[str, Any] = msgspec.json.schema(PredictRequest)["$defs"]["PredictRequest"]
    schema["examples"] = [{"features": {"c0": "c0_1", "n0": 2.5}}]
    return schema


class PredictResponse(BaseModel):
    prediction: float
    model_version: str
    cached: bool


class BatchPredictResponse(BaseModel):
    predictions: list[float]
    model_version: str
    cached: list[bool]
    cache_hits: int


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: ExplainFeatures


class FieldEffectOut(BaseModel):
    field: str
    encoded_as: Literal["value", "missing", "unseen"]
    effect: float = Field(description="prediction - prediction with this field at its average")
    prediction_without: float


class ExplainResponse(BaseModel):
    prediction: float
    baseline: float = Field(description="prediction with every field at its field average")
    interaction_residual: float = Field(
        description="prediction - baseline - sum(effects): the part due to interactions"
    )
    effects: list[FieldEffectOut] = Field(description="sorted by |effect|, largest first")
    model_version: str


class FieldInfo(BaseModel):
    name: str
    kind: Literal["categorical", "numeric"]
    cardinality: int = Field(description="vocabulary values or numeric bins")


class ModelInfo(BaseModel):
    name: str = Field(description="the repository's name (models/<name>)")
    model_type: str
    version: str
    task: Literal["binary", "regression"]
    model_dir: str = Field(description="the version directory being served")
    repository: str
    versions: list[str] = Field(description="versions in the repository, oldest first")
    pinned: bool = Field(description="CTR_MODEL_VERSION pins this service to one version")
    hyperparameters: dict[str, JsonValue]
    fields: list[FieldInfo]
    metrics: dict[str, float]
    created_at: datetime


class ReloadRequest(BaseModel):
    """Which version the fleet should serve; an empty body re-reads CURRENT now."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="a version already in the repository: point CURRENT at it",
    )
    model_dir: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00]+$",
        description="an exported model elsewhere: copy it in as a version, point CURRENT at it",
    )

    @model_validator(mode="after")
    def _at_most_one(self) -> ReloadRequest:
        if self.version is not None and self.model_dir is not None:
            raise ValueError("send 'version' or 'model_dir', not both")
        return self


class ReloadResponse(BaseModel):
    previous_version: str
    version: str
    model_dir: str


class ReadyResponse(BaseModel):
    status: Literal["ready", "unavailable"]
    model_version: str
    target_version: str | None = Field(
        description="what this worker should serve (CURRENT, or the pinned version)"
    )
    last_error: str | None = Field(
        default=None,
        description="why the target version is not served (the old one keeps serving)",
    )


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, JsonValue]]
