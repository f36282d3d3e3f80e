"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

# /explain's row: values are checked by the encoder, which knows each field's kind and names
# the field in its error.
_VALUE_TYPES = ["string", "number", "boolean", "null"]
_ROW_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": _VALUE_TYPES},
    "description": "field name -> value; a field left out or null is 'missing'",
}
ExplainFeatures = Annotated[
    dict[StrictStr, object],
    WithJsonSchema(_ROW_SCHEMA),
]


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
