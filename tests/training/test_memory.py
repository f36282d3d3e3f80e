"""The memory plan a training run prints: training, the export after it, and what serving maps."""

from pathlib import Path

import pytest

pytest.importorskip("torch")

from app.repository.manifest import ModelManifest
from app.repository.store import resolve_model_dir
from training.memory import SERVING_WORKER_BYTES, plan
from training.models import ModelConfig


def _config(manifest: ModelManifest) -> ModelConfig:
    return ModelConfig.model_validate({"name": manifest.model_type, **manifest.hyperparameters})


def test_the_planned_weights_file_is_the_exported_one(model_dir: Path) -> None:
    manifest = ModelManifest.load(resolve_model_dir(model_dir))
    memory = plan(manifest.features.field_dims, _config(manifest), 256, "adam")
    exported = manifest.files["model.onnx.data"].bytes
    assert abs(memory.exported - exported) <= 0.05 * exported


def test_compact_tables_shrink_the_plan_and_workers_share_the_weights(model_dir: Path) -> None:
    manifest = ModelManifest.load(resolve_model_dir(model_dir))
    dims, config = manifest.features.field_dims, _config(manifest)
    wide, half, quarter = (
        plan(dims, config, 256, "adam", d) for d in ("float32", "float16", "int8")
    )
    assert (half.exported - half.dense) == pytest.approx((wide.exported - wide.dense) / 2, rel=0.01)
    assert quarter.exported < half.exported
    assert wide.replica(4) - wide.replica(1) == 3 * wide.worker  # one copy of the weights
    assert wide.worker > SERVING_WORKER_BYTES  # the runtime, and the encoder's vocabularies
    assert half.export > wide.export  # the compact copy is made beside the float tables
    assert all(p.total >= p.training for p in (wide, half, quarter))
    assert any("served by 2 worker(s)" in line for line in wide.lines())


def test_int8_dense_layers_shrink_the_planned_weights_file(model_dir: Path) -> None:
    manifest = ModelManifest.load(resolve_model_dir(model_dir))
    dims, config = manifest.features.field_dims, _config(manifest)
    wide = plan(dims, config, 256, "adam")
    narrow = plan(dims, config, 256, "adam", dense_dtype="int8")
    # about a byte a weight where float32 keeps four (tests/training/test_graph_file.py
    # holds the plan against a written int8 export)
    assert wide.exported - wide.dense * 3 // 4 <= narrow.exported < wide.exported
    assert narrow.dense == wide.dense  # training holds the float layers either way
