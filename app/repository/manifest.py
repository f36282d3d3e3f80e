"""spec.json: the self-describing manifest of an exported model version.

It holds everything the service needs besides the graph itself: the feature spec, the task,
the graph's I/O names, the training metrics, and **every file of the version with its size
and sha256** (the graph, its external weights, the statistics, the checkpoint...), so a
corrupt, truncated or swapped file is refused by whoever reads it. The version is a hash of
the model's content (the graph, its weights and the feature spec), the same however often
the same trained model is exported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.core.cpus import usable_cpus
from app.features.errors import SpecError
from app.features.spec import FeatureSpec, load_json_model

MANIFEST_FILE = "spec.json"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
OPTIMIZER_FILE = "optimizer.pt"  # the optimiser's state beside the checkpoint, for warm starts
# Files only training reads (re-export, warm start); the service never opens them.
TRAINING_FILES = (CHECKPOINT_FILE, OPTIMIZER_FILE)
FORMAT_VERSION: Literal[2] = 2
TableDtype = Literal["float32", "float16", "int8"]
DenseDtype = Literal["float32", "int8"]


class VersionFile(BaseModel):
    """One file of a version, as it was written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class OnnxGraph(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = ONNX_FILE
    external_data: str | None = None  # the weights file the graph refers to, if any
    opset: int
    input_name: str = "indices"
    output_name: str = "score"
    table_dtype: TableDtype = "float32"  # how the embedding tables are stored
    dense_dtype: DenseDtype = "float32"  # how the fully connected layers' weights are stored

    @property
    def content_files(self) -> list[str]:
        """The files that hold the model: the graph, then its weights."""
        return [self.file] if self.external_data is None else [self.file, self.external_data]


class ModelManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[2] = FORMAT_VERSION
    model_type: str
    hyperparameters: dict[str, JsonValue]
    task: Literal["binary", "regression"]
    features: FeatureSpec
    onnx: OnnxGraph
    version: str
    files: dict[str, VersionFile]  # every file of the version but this one
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: datetime

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        """Read ``model_dir/spec.json`` (:class:`SpecError` with the reason if it is not one)."""
        path = model_dir / MANIFEST_FILE
        try:
            older = json.loads(path.read_text()).get("format_version") == 1
        except (OSError, ValueError, AttributeError):
            older = False  # load_json_model says what is wrong with it
        if older:
            raise SpecError(
                f"{path}: exported by an older ctrserve (format 1, whose checksum covers "
                "model.onnx only); export it again: `ctrserve export --model-dir "
                f"{model_dir}` makes a version of this format from its checkpoint"
            )
        return load_json_model(cls, path)

    def save(self, model_dir: Path) -> None:
        (model_dir / MANIFEST_FILE).write_text(self.model_dump_json(indent=1))

    def check_content(self) -> None:
        """Raise :class:`SpecError` unless the version is the hash of the listed content."""
        expected = content_version(self.onnx, self.files, self.features)
        if expected != self.version:
            raise SpecError(
                f"version {self.version} in spec.json is not the hash of its content "
                f"({expected}): the manifest was edited or belongs to other files"
            )


class _Versioned(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: str


def read_version(model_dir: Path) -> str:
    """The version spec.json names, whatever format it is in (a flat directory's name)."""
    return load_json_model(_Versioned, model_dir / MANIFEST_FILE).version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: list[Path]) -> list[str]:
    """The sha256 of each file, hashed side by side: hashlib lets go of the GIL while it
    hashes, so a version's gigabyte files take the time of the largest, not of all."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), usable_cpus()))) as pool:
        return list(pool.map(sha256_file, paths))


def describe_files(folder: Path, names: Iterable[str]) -> dict[str, VersionFile]:
    """Size and sha256 of each named file in ``folder``."""
    ordered = sorted(names)
    digests = sha256_files([folder / name for name in ordered])
    return {
        name: VersionFile(bytes=(folder / name).stat().st_size, sha256=digest)
        for name, digest in zip(ordered, digests, strict=True)
    }


def verify_files(folder: Path, files: dict[str, VersionFile], skip: Iterable[str] = ()) -> None:
    """Check that every listed file (but ``skip``) is in ``folder`` as it was written.

    Sizes are compared first, so a truncated file is named without reading gigabytes.

    Raises:
        SpecError: naming the first file that is missing, of another size or another hash.
    """
    names = [name for name in files if name not in set(skip)]
    for name in names:
        if Path(name).name != name or name.startswith("."):
            raise SpecError(f"{folder}: spec.json lists {name!r}, which is not a file name")
        try:
            size = (folder / name).stat().st_size
        except OSError as exc:
            raise SpecError(f"{folder / name}: missing ({exc.strerror})") from None
        if size != files[name].bytes:
            raise SpecError(
                f"{folder / name}: {size:,} bytes where spec.json lists "
                f"{files[name].bytes:,}; the file is truncated or from another export"
            )
    for name, actual in zip(names, sha256_files([folder / name for name in names]), strict=True):
        if actual != files[name].sha256:
            raise SpecError(
                f"{folder / name}: sha256 {actual[:12]}… does not match spec.json "
                f"({files[name].sha256[:12]}…); the file is corrupt or from another export"
            )


def content_version(
    onnx: OnnxGraph, files: Mapping[str, VersionFile], features: FeatureSpec
) -> str:
    """A version that changes whenever the graph, its weights or the encoding change, and
    only then: the hash of the content files' hashes (as ``files`` lists them) and of the
    feature spec.

    Raises:
        SpecError: ``files`` does not list a content file.
    """
    missing = [name for name in onnx.content_files if name not in files]
    if missing:
        raise SpecError(f"spec.json does not list the model's file(s) {missing}")
    digest = hashlib.sha256()
    for name in onnx.content_files:
        digest.update(files[name].sha256.encode())
    digest.update(features.model_dump_json().encode())
    return digest.hexdigest()[:16]
