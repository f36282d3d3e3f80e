"""Export a trained model into the repository ``models/<name>/`` as a new version.

Every export fills the unseen rows with field averages, checks the graph with
``onnx.checker`` and proves onnxruntime agrees with torch in a hidden staging directory;
only then is it renamed into place as ``models/<name>/<version>/`` (never changed again)
and ``CURRENT`` flipped to it, which every serving worker follows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pydantic import JsonValue
from torch import nn

from app.features.spec import MISSING_INDEX, UNSEEN_INDEX, FeatureSpec
from app.scoring.manifest import (
    METRICS_FILE,
    ONNX_FILE,
    ModelManifest,
    OnnxGraph,
    content_version,
    sha256_file,
)
from app.scoring.repository import ModelRepository, resolve_model_dir
from training.calibration import Calibration, CalibrationLayer
from training.data import Task
from training.layers import fill_unseen_rows, serving_tables
from training.models import ModelConfig, build_model
from training.statistics import TrainingStatistics

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "indices"
OUTPUT_NAME = "score"
CHECKPOINT_FILE = "checkpoint.pt"
PARITY_ATOL = 1e-5


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with the torch model."""


class _ServingHead(nn.Module):
    """The graph the service runs: the model, then for the binary task a sigmoid and the
    calibration, if there is one."""

    def __init__(self, model: nn.Module, task: Task, calibration: Calibration | None) -> None:
        super().__init__()
        self.model = model
        self.binary = task == "binary"
        self.calibration = None if calibration is None else CalibrationLayer(calibration)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` int64 -> ``(B,)`` probability or value."""
        scores = self.model(indices)
        if not self.binary:
            return scores
        probabilities = torch.sigmoid(scores)
        return probabilities if self.calibration is None else self.calibration(probabilities)


def fixture_rows(field_dims: tuple[int, ...], num_rows: int, seed: int = 0) -> np.ndarray:
    """Random valid index rows with every reserved row (missing, unseen) represented."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.integers(0, dim, num_rows) for dim in field_dims], axis=1)
    rows[0, :] = MISSING_INDEX
    rows[1 % num_rows, :] = UNSEEN_INDEX
    return rows.astype(np.int64)


def to_onnx(
    model: nn.Module,
    task: Task,
    num_fields: int,
    path: Path,
    calibration: Calibration | None = None,
) -> None:
    """Write the serving graph with a dynamic batch axis and a pinned opset."""
    head = _ServingHead(model, task, calibration).eval()
    example = torch.zeros((2, num_fields), dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # The exporter's own internals emit deprecation noise we cannot act on.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        with serving_tables(model):
            program = torch.onnx.export(
                head,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
                report=False,
            )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker rejected the graph: {exc}") from exc


def check_parity(
    model: nn.Module,
    task: Task,
    path: Path,
    rows: np.ndarray,
    calibration: Calibration | None = None,
) -> float:
    """Max |torch - onnxruntime| on ``rows``; raises if above :data:`PARITY_ATOL`, or, for a
    calibrated graph, that times the calibration's steepest slope: the two runtimes'
    probabilities differ in their last bits, and the map magnifies that by its slope."""
    head = _ServingHead(model, task, calibration).eval()
    with torch.no_grad():
        expected = head(torch.from_numpy(rows)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
    gaps = np.abs(actual - expected)
    gap = float(gaps.max()) if len(rows) else 0.0
    allowed = PARITY_ATOL * max(1.0, calibration.steepest if calibration else 1.0)
    if not gap <= allowed:
        raise ExportError(f"onnxruntime differs from torch by {gap:.3g} (> {allowed:.3g})")
    typical = float(np.quantile(gaps, 0.99)) if len(rows) else 0.0
    if not typical <= PARITY_ATOL:  # only rows on the map's steepest stretches may differ
        raise ExportError(f"onnxruntime differs from torch by {typical:.3g} on 1% of rows")
    return gap


def write_artifact(
    model: nn.Module,
    spec: FeatureSpec,
    config: ModelConfig,
    task: Task,
    out_dir: Path,
    metrics: dict[str, float],
    training: dict[str, JsonValue],
    statistics: TrainingStatistics | None = None,
    calibration: Calibration | None = None,
) -> ModelManifest:
    """Export ``model`` as a new version of the repository ``out_dir``, then point
    ``CURRENT`` at it, with its training statistics and its calibration (baked into the
    graph, and kept beside it for a re-export) when given. Returns the version's manifest."""
    model.eval()
    fill_unseen_rows(model, spec.field_dims)
    repository = ModelRepository(out_dir)
    staging = repository.staging_dir()
    try:
        onnx_path = staging / ONNX_FILE
        to_onnx(model, task, len(spec.fields), onnx_path, calibration)
        rows = fixture_rows(spec.field_dims, 2048)
        gap = check_parity(model, task, onnx_path, rows, calibration)
        logger.info("export parity: max |torch - onnxruntime| = %.2e", gap)
        digest = sha256_file(onnx_path)
        manifest = ModelManifest(
            model_type=config.name,
            hyperparameters=config.model_dump(mode="json", exclude={"name"}),
            task=task,
            features=spec,
            onnx=OnnxGraph(
                sha256=digest, opset=OPSET, input_name=INPUT_NAME, output_name=OUTPUT_NAME
            ),
            version=content_version(digest, spec),
            metrics=metrics,
            training={**training, "parity_max_abs_diff": gap},
            created_at=datetime.now(UTC),
        )
        manifest.save(staging)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        torch.save(model.state_dict(), staging / CHECKPOINT_FILE)
        if statistics is not None:
            statistics.save(staging)
        if calibration is not None:
            calibration.save(staging)
        for item in staging.iterdir():
            os.chmod(item, 0o644)
        version_dir = repository.commit(staging, manifest.version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    repository.set_current(manifest.version)
    logger.info(
        "exported %s version %s to %s (CURRENT)", config.name, manifest.version, version_dir
    )
    return manifest


def load_checkpoint(model_dir: Path) -> tuple[nn.Module, ModelManifest]:
    """Rebuild the torch model of an exported model (a repository's current version, or a
    version or flat directory) from its weights-only checkpoint."""
    model_dir = resolve_model_dir(model_dir)
    manifest = ModelManifest.load(model_dir)
    config = ModelConfig.model_validate({"name": manifest.model_type, **manifest.hyperparameters})
    model = build_model(manifest.features.field_dims, config)
    state = torch.load(model_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # the layers' parameters changed since it was saved
        detail = " ".join(str(exc).split())[:300]
        raise ExportError(
            f"{model_dir / CHECKPOINT_FILE} does not fit this version's {manifest.model_type} "
            f"layers; it was saved by an older ctrserve: train the model again ({detail})"
        ) from None
    return model, manifest


def reexport(model_dir: Path, out_dir: Path | None = None) -> ModelManifest:
    """Export again from ``checkpoint.pt`` (e.g. after an exporter upgrade), as a new version
    of ``out_dir`` (default: the same repository)."""
    model, manifest = load_checkpoint(model_dir)
    config = ModelConfig.model_validate({"name": manifest.model_type, **manifest.hyperparameters})
    version_dir = resolve_model_dir(model_dir)
    return write_artifact(
        model,
        manifest.features,
        config,
        manifest.task,
        out_dir or model_dir,
        manifest.metrics,
        dict(manifest.training),
        TrainingStatistics.load(version_dir),
        Calibration.load(version_dir),
    )
