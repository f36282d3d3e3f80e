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

# Values are checked by the encoder, which knows each field's kind and names the field in
# its error; validating a union type per value here costs more than scoring a batch.
Features = Annotated[
    dict[StrictStr, object],
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            "description": "field name -> value; a field left out or null is 'missing'",
        }
    ),
]


class PredictRequest(BaseModel):
    """Either one row (``features``) or a batch (``instances``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"features": {"c0": "c0_1", "n0": 2.5}}]},
    )

    features: Features | None = None
    instances: Annotated[list[Features], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.features is None) == (self.instances is None):
            raise ValueError("send exactly one of 'features' (one row) or 'instances' (a batch)")
        return self


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

    features: Features


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
    model_type: str
    version: str
    task: Literal["binary", "regression"]
    model_dir: str
    hyperparameters: dict[str, JsonValue]
    fields: list[FieldInfo]
    metrics: dict[str, float]
    created_at: datetime


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00]+$",
        description="directory to load; default: the current one again",
    )


class ReloadResponse(BaseModel):
    previous_version: str
    version: str
    model_dir: str


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, JsonValue]]
