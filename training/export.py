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
import tempfile
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from pydantic import BaseModel, ConfigDict, JsonValue
from torch import nn

from app.features.spec import MISSING_INDEX, UNSEEN_INDEX, FeatureSpec, load_json_model
from app.repository.manifest import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    ONNX_DATA_FILE,
    ONNX_FILE,
    OPTIMIZER_FILE,
    DenseDtype,
    ModelManifest,
    OnnxGraph,
    TableDtype,
    VersionFile,
    content_version,
    describe_files,
    verify_files,
)
from app.repository.store import ModelRepository, resolve_model_dir
from training.calibration import Calibration, CalibrationLayer
from training.data import Task
from training.graph_file import compact_dense, compact_tables, save_graph, strip_build_metadata
from training.layers import fill_unseen_rows, serving_tables
from training.models import ModelConfig, build_model
from training.state_file import load_state, save_state
from training.statistics import TrainingStatistics

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "indices"
OUTPUT_NAME = "score"
PARITY_ATOL = 1e-5
# How far compact tables may move the served scores of 99% of the export's fixture rows (the
# rest sit on the calibration's steepest stretches, which magnify any change); the float16
# figure is ~2x what the default model shows (docs/LARGE_MODELS.md).
TABLE_PARITY: dict[TableDtype, float] = {"float32": 0.0, "float16": 1e-3, "int8": 2e-2}
# The same for int8 dense layers, ~2.5x what the default model shows; compact tables and
# dense layers together may move scores by the sum of the two.
DENSE_PARITY: dict[DenseDtype, float] = {"float32": 0.0, "int8": 1e-2}
# What an export records of its graph's parity (``training`` of spec.json).
_PARITY_RECORDS = ("parity_max_abs_diff", "parity_p99_abs_diff")


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
    model: nn.Module, task: Task, num_fields: int, calibration: Calibration | None = None
) -> ir.Model:
    """The serving graph with a dynamic batch axis and a pinned opset, stripped of what the
    exporter records about the machine it ran on."""
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
    strip_build_metadata(program.model)
    return program.model


def write_graph(graph: ir.Model, path: Path) -> VersionFile | None:
    """Save ``graph`` (weights beside it) and check it with ``onnx.checker``; returns the
    size and sha256 of its weights file, if it has one."""
    data = save_graph(graph, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker rejected the graph: {exc}") from exc
    return data


def graph_scores(path: Path, rows: np.ndarray) -> np.ndarray:
    """What onnxruntime scores ``rows`` with the graph at ``path``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
    return np.asarray(scores)


def check_parity(
    model: nn.Module,
    task: Task,
    actual: np.ndarray,
    rows: np.ndarray,
    calibration: Calibration | None = None,
) -> float:
    """Max |torch - onnxruntime| on ``rows`` (``actual``: the graph's scores of them); raises
    if above :data:`PARITY_ATOL`, or, for a calibrated graph, that times the calibration's
    steepest slope: the two runtimes' probabilities differ in their last bits, and the map
    magnifies that by its slope."""
    head = _ServingHead(model, task, calibration).eval()
    with torch.no_grad():
        expected = head(torch.from_numpy(rows)).numpy()
    gaps = np.abs(actual - expected)
    gap = float(gaps.max()) if len(rows) else 0.0
    allowed = PARITY_ATOL * max(1.0, calibration.steepest if calibration else 1.0)
    if not gap <= allowed:
        raise ExportError(f"onnxruntime differs from torch by {gap:.3g} (> {allowed:.3g})")
    typical = float(np.quantile(gaps, 0.99)) if len(rows) else 0.0
    if not typical <= PARITY_ATOL:  # only rows on the map's steepest stretches may differ
        raise ExportError(f"onnxruntime differs from torch by {typical:.3g} on 1% of rows")
    return gap


def compare_compact(float_scores: np.ndarray, compact_scores: np.ndarray) -> tuple[float, float]:
    """Max and 99th percentile of |float graph - compact graph| on the same rows (compact:
    its tables, its dense layers or both)."""
    gaps = np.abs(float_scores - compact_scores)
    return float(gaps.max()), float(np.quantile(gaps, 0.99))


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
    table_dtype: TableDtype = "float32",
    checkpoint: bool = True,
    optimizer_state: dict[str, Any] | None = None,
    dense_dtype: DenseDtype = "float32",
) -> ModelManifest:
    """Export ``model`` as a new version of the repository ``out_dir``, then point
    ``CURRENT`` at it, with its training statistics and its calibration (baked into the
    graph, and kept beside it for a re-export) when given, its tables stored as
    ``table_dtype`` and its dense layers as ``dense_dtype``, and its torch checkpoint and
    ``optimizer_state`` unless ``checkpoint`` is false (they are only read to re-export or
    to train further). Returns the version's manifest."""
    with VersionDraft(model, spec, out_dir, checkpoint, optimizer_state) as draft:
        return draft.finish(
            config, task, metrics, training, statistics, calibration, table_dtype, dense_dtype
        )


class VersionDraft:
    """A version of ``model`` being written into ``out_dir``'s staging directory.

    Entering fills the model's unseen rows and starts writing its training state (the
    checkpoint and ``optimizer_state``: gigabytes for a large model) on a thread, around
    the page cache and hashed on the way (:mod:`training.uncached_file`), so the disk
    works while the caller scores its test rows and :meth:`finish` builds the serving
    graph. Leaving the block waits for the writes; a draft not finished (an error, an
    exception) leaves no staging directory. The weights must not change inside the block.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: FeatureSpec,
        out_dir: Path,
        checkpoint: bool = True,
        optimizer_state: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.repository = ModelRepository(out_dir)
        self._checkpoint = checkpoint
        self._optimizer_state = optimizer_state
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctr-export")
        self._training_files: Future[dict[str, VersionFile]] | None = None
        self._finished = False

    def __enter__(self) -> VersionDraft:
        self.model.eval()
        fill_unseen_rows(self.model, self.spec.field_dims)
        self.staging = self.repository.staging_dir()
        if self._checkpoint:
            # the state dict is taken here, not on the thread: the exporter's tracing may
            # swap a module's parameters while it runs
            self._training_files = self._writer.submit(
                _save_training_state,
                self.model.state_dict(),
                self._optimizer_state,
                self.staging,
            )
        return self

    def __exit__(self, *_exc: object) -> None:
        self._writer.shutdown(wait=True)
        if not self._finished:
            shutil.rmtree(self.staging, ignore_errors=True)

    def finish(
        self,
        config: ModelConfig,
        task: Task,
        metrics: dict[str, float],
        training: dict[str, JsonValue],
        statistics: TrainingStatistics | None = None,
        calibration: Calibration | None = None,
        table_dtype: TableDtype = "float32",
        dense_dtype: DenseDtype = "float32",
    ) -> ModelManifest:
        """Build, write and check the serving graph, wait for the training state, commit
        the version and point ``CURRENT`` at it; returns its manifest."""
        staging, spec = self.staging, self.spec
        data, parity, dense_dtype = _write_serving_graph(
            self.model, spec, task, calibration, table_dtype, dense_dtype, staging
        )
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        if statistics is not None:
            statistics.save(staging)
        if calibration is not None:
            calibration.save(staging)
        written = {} if self._training_files is None else self._training_files.result()
        if data is not None:
            written = {**written, ONNX_DATA_FILE: data}
        rest = [p.name for p in staging.iterdir() if p.is_file() and p.name not in written]
        files = dict(sorted((describe_files(staging, rest) | written).items()))
        graph_info = OnnxGraph(
            external_data=None if data is None else ONNX_DATA_FILE,
            opset=OPSET,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            table_dtype=table_dtype,
            dense_dtype=dense_dtype,
        )
        manifest = ModelManifest(
            model_type=config.name,
            hyperparameters=config.model_dump(mode="json", exclude={"name"}),
            task=task,
            features=spec,
            onnx=graph_info,
            version=content_version(graph_info, files, spec),
            files=files,
            metrics=metrics,
            training={**training, **parity},
            created_at=datetime.now(UTC),
        )
        manifest.save(staging)
        for item in staging.iterdir():
            os.chmod(item, 0o644)
        version_dir = self.repository.commit(staging, manifest.version)
        self._finished = True
        self.repository.set_current(manifest.version)
        logger.info(
            "exported %s version %s to %s (CURRENT)", config.name, manifest.version, version_dir
        )
        return manifest


def _write_serving_graph(
    model: nn.Module,
    spec: FeatureSpec,
    task: Task,
    calibration: Calibration | None,
    table_dtype: TableDtype,
    dense_dtype: DenseDtype,
    staging: Path,
) -> tuple[VersionFile | None, dict[str, JsonValue], DenseDtype]:
    """Export the serving graph into ``staging``, its tables as ``table_dtype`` and its
    dense layers as ``dense_dtype``, checked against torch (and the float graph); returns
    its weights file's size and sha256 (if it has one), the parity and how its dense layers
    are stored (float32 where the model has none)."""
    graph = to_onnx(model, task, len(spec.fields), calibration)
    rows = fixture_rows(spec.field_dims, 2048)
    onnx_path = staging / ONNX_FILE
    compact = table_dtype != "float32" or dense_dtype != "float32"
    float_dir = Path(tempfile.mkdtemp(dir=staging)) if compact else staging
    data = write_graph(graph, float_dir / ONNX_FILE)
    float_scores = graph_scores(float_dir / ONNX_FILE, rows)
    gap = check_parity(model, task, float_scores, rows, calibration)
    logger.info("export parity: max |torch - onnxruntime| = %.2e", gap)
    parity: dict[str, JsonValue] = {"parity_max_abs_diff": gap}
    if not compact:
        return data, parity, dense_dtype
    tables = compact_tables(graph, table_dtype)
    layers = compact_dense(graph, dense_dtype)
    if not layers:
        dense_dtype = "float32"
    data = write_graph(graph, onnx_path)
    worst, typical = compare_compact(float_scores, graph_scores(onnx_path, rows))
    shutil.rmtree(float_dir)
    allowed = TABLE_PARITY[table_dtype] + DENSE_PARITY[dense_dtype]
    if not typical <= allowed:
        raise ExportError(
            f"{table_dtype} tables and {dense_dtype} dense layers move 1% of scores by more "
            f"than {typical:.3g} (> {allowed:.3g}); export with wider ones"
        )
    logger.info(
        "%s tables %s, %s dense layers %s: |float - compact| at most %.2e, 99%% within %.2e",
        table_dtype,
        tables,
        dense_dtype,
        layers,
        worst,
        typical,
    )
    return (
        data,
        parity | {"compact_parity_max_abs_diff": worst, "compact_parity_p99_abs_diff": typical},
        dense_dtype,
    )


def _save_training_state(
    weights: dict[str, Any], optimizer_state: dict[str, Any] | None, staging: Path
) -> dict[str, VersionFile]:
    """Write the checkpoint (``weights``: the model's state dict, taken by the caller before
    the exporter traces the model, which may swap a module's parameters while it runs) and
    the optimizer's state into ``staging``; their sizes and hashes."""
    written = {CHECKPOINT_FILE: save_state(weights, staging / CHECKPOINT_FILE)}
    if optimizer_state is not None:
        written[OPTIMIZER_FILE] = save_state(optimizer_state, staging / OPTIMIZER_FILE)
    return written


class _TrainedGraph(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    table_dtype: TableDtype = "float32"  # absent before compact tables: float32
    dense_dtype: DenseDtype = "float32"  # absent before int8 dense layers: float32


class TrainedModel(BaseModel):
    """What a re-export needs of a version's spec.json, read from any format ctrserve has
    written (a version exported before whole-version checksums included)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model_type: str
    hyperparameters: dict[str, JsonValue]
    task: Task
    features: FeatureSpec
    metrics: dict[str, float] = {}
    training: dict[str, JsonValue] = {}
    files: dict[str, VersionFile] | None = None  # absent before format 2
    onnx: _TrainedGraph = _TrainedGraph()

    @property
    def layers(self) -> ModelConfig:
        """The model's type and hyper-parameters, to build it again."""
        return ModelConfig.model_validate({"name": self.model_type, **self.hyperparameters})


def load_checkpoint(model_dir: Path) -> tuple[nn.Module, TrainedModel]:
    """Rebuild the torch model of an exported model (a repository's current version, or a
    version or flat directory) from its weights-only checkpoint, checked against spec.json."""
    model_dir = resolve_model_dir(model_dir)
    trained = load_json_model(TrainedModel, model_dir / MANIFEST_FILE)
    path = model_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise ExportError(
            f"{model_dir}: no {CHECKPOINT_FILE}; it was exported with --no-checkpoint, so it "
            "can be served but not re-exported or trained further"
        )
    if trained.files is not None:
        verify_files(model_dir, trained.files, skip=set(trained.files) - {CHECKPOINT_FILE})
    model = build_model(trained.features.field_dims, trained.layers)
    state = load_state(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # the layers' parameters changed since it was saved
        detail = " ".join(str(exc).split())[:300]
        raise ExportError(
            f"{path} does not fit this version's {trained.model_type} "
            f"layers; it was saved by an older ctrserve: train the model again ({detail})"
        ) from None
    return model, trained


def load_optimizer_state(model_dir: Path) -> dict[str, Any] | None:
    """The optimiser's state a version kept beside its checkpoint (``None``: it has none,
    e.g. it was exported before ctrserve kept it), checked against spec.json."""
    model_dir = resolve_model_dir(model_dir)
    trained = load_json_model(TrainedModel, model_dir / MANIFEST_FILE)
    path = model_dir / OPTIMIZER_FILE
    if not path.is_file():
        return None
    if trained.files is not None:
        verify_files(model_dir, trained.files, skip=set(trained.files) - {OPTIMIZER_FILE})
    state: dict[str, Any] = load_state(path)
    return state


def reexport(
    model_dir: Path,
    out_dir: Path | None = None,
    table_dtype: TableDtype | None = None,
    checkpoint: bool = True,
    dense_dtype: DenseDtype | None = None,
) -> ModelManifest:
    """Export again from ``checkpoint.pt`` (e.g. after an exporter upgrade, or to store the
    tables as ``table_dtype`` or the dense layers as ``dense_dtype``; default: as they were),
    as a new version of ``out_dir`` (default: the same repository)."""
    model, trained = load_checkpoint(model_dir)
    version_dir = resolve_model_dir(model_dir)
    # the old export's parity figures describe the old graph: this export measures its own
    training = {k: v for k, v in trained.training.items() if not k.endswith(_PARITY_RECORDS)}
    return write_artifact(
        model,
        trained.features,
        trained.layers,
        trained.task,
        out_dir or model_dir,
        trained.metrics,
        training,
        TrainingStatistics.load(version_dir),
        Calibration.load(version_dir),
        table_dtype or trained.onnx.table_dtype,
        checkpoint,
        load_optimizer_state(version_dir) if checkpoint else None,
        dense_dtype or trained.onnx.dense_dtype,
    )
