"""spec.json: the self-describing manifest of an exported model.

It holds everything the service needs besides the graph itself: the feature spec, the task,
the ONNX file's sha256 and I/O names, the content-hash version and the training metrics.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.features.spec import FeatureSpec, load_json_model

MANIFEST_FILE = "spec.json"
ONNX_FILE = "model.onnx"
METRICS_FILE = "metrics.json"
FORMAT_VERSION: Literal[1] = 1


class OnnxGraph(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = ONNX_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
    input_name: str = "indices"
    output_name: str = "score"


class ModelManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    model_type: str
    hyperparameters: dict[str, JsonValue]
    task: Literal["binary", "regression"]
    features: FeatureSpec
    onnx: OnnxGraph
    version: str
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: datetime

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        return load_json_model(cls, model_dir / MANIFEST_FILE)

    def save(self, model_dir: Path) -> None:
        (model_dir / MANIFEST_FILE).write_text(self.model_dump_json(indent=1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_version(onnx_sha256: str, features: FeatureSpec) -> str:
    """A version that changes whenever the graph or the encoding changes, and only then."""
    digest = hashlib.sha256(onnx_sha256.encode())
    digest.update(features.model_dump_json().encode())
    return digest.hexdigest()[:16]
