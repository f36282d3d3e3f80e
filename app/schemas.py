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


class LoadedVersion(BaseModel):
    version: str
    model_type: str
    serves: list[str] = Field(description="default, its labels, split, shadow")
    model_bytes: int = Field(description="bytes of its graph and external weights")


class ModelBudget(BaseModel):
    cache_entries: int = Field(description="entries this model's score cache holds now")
    cache_budget: int = Field(description="entries it may hold (policy.yaml's cache_entries)")
    model_bytes: int = Field(description="bytes of the loaded versions' graphs and weights")


class ModelInfo(BaseModel):
    name: str = Field(description="the model's name (models/<name>)")
    model_type: str
    version: str = Field(description="the default version: what CURRENT names")
    task: Literal["binary", "regression"]
    model_dir: str = Field(description="the default version's directory")
    repository: str
    versions: list[str] = Field(description="versions in the repository, oldest first")
    loaded: list[LoadedVersion] = Field(description="versions this worker has loaded")
    labels: dict[str, str] = Field(description="label -> version, as loaded")
    policy: dict[str, JsonValue] = Field(description="models/<name>/policy.yaml as in force")
    budget: ModelBudget
    pinned: bool = Field(description="CTR_MODEL_VERSION pins this model's default version")
    failures: dict[str, str] = Field(description="versions (or pointers) refused, and why")
    hyperparameters: dict[str, JsonValue]
    fields: list[FieldInfo]
    metrics: dict[str, float]
    created_at: datetime


class ModelList(BaseModel):
    default: str = Field(description="the model /predict and /model answer")
    models: list[str]


class ReloadRequest(BaseModel):
    """Which version the fleet should serve; an empty body re-reads CURRENT now."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, min_length=1, description="the model (unset: the default one)"
    )
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
    model: str
    previous_version: str | None
    version: str
    model_dir: str


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="a version in the repository: the label names it from now on",
    )


class LabelResponse(BaseModel):
    model: str
    labels: dict[str, str] = Field(description="every label of the model, as loaded now")


class ModelReadiness(BaseModel):
    ready: bool
    version: str | None = Field(description="the default version served; null: none loaded")
    target_version: str | None = Field(
        description="what this worker should serve (CURRENT, or the pinned version)"
    )
    last_error: str | None = Field(
        default=None,
        description="why a version is not served (the one before it keeps serving)",
    )


class ReadyResponse(BaseModel):
    status: Literal["ready", "unavailable"]
    model_version: str | None = Field(description="the default model's default version")
    target_version: str | None = Field(description="the default model's target version")
    last_error: str | None = Field(default=None, description="the default model's last refusal")
    models: dict[str, ModelReadiness] = Field(description="every model, ready or not")


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, JsonValue]]
