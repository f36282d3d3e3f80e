"""Every exported model scores like its torch original, and unseen values get field averages."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from app.features.errors import SpecError  # noqa: E402
from app.features.spec import NUM_RESERVED, UNSEEN_INDEX  # noqa: E402
from app.model.scorer import Scorer  # noqa: E402
from app.repository.manifest import ModelManifest, sha256_file  # noqa: E402
from app.repository.store import ModelRepository, resolve_model_dir  # noqa: E402
from training.calibration import Calibration, fit_calibration  # noqa: E402
from training.data import open_source  # noqa: E402
from training.dataset import prepare  # noqa: E402
from training.export import (  # noqa: E402
    ExportError,
    fixture_rows,
    load_checkpoint,
    load_optimizer_state,
    reexport,
    write_artifact,
)
from training.layers import FeaturesEmbedding, FeaturesLinear, FieldAwareEmbedding  # noqa: E402
from training.models import DEFAULTS, MODELS, build_model  # noqa: E402
from training.statistics import STATISTICS_FILE, TrainingStatistics  # noqa: E402
from training.train import TrainConfig, fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(synth_csv: Path):
    return prepare(open_source(synth_csv), TrainConfig(model=DEFAULTS["lr"], seed=0))


def _model(name: str, field_dims: tuple[int, ...]) -> torch.nn.Module:
    config = DEFAULTS[name].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)})
    torch.manual_seed(1)
    model = build_model(field_dims, config)
    with torch.no_grad():  # move every table away from its near-zero init
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_matches_torch_on_10k_rows(prepared, tmp_path: Path, name: str) -> None:
    spec = prepared.spec
    model = _model(name, spec.field_dims)
    config = DEFAULTS[name].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)})
    write_artifact(model, spec, config, "binary", tmp_path / name, {}, {})
    rows = fixture_rows(spec.field_dims, 10_000, seed=7)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(rows))).numpy()
    actual = Scorer.load(resolve_model_dir(tmp_path / name)).score_indices(rows)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["ffm", "deepffm", "nffm"])
def test_a_field_aware_table_is_exported_as_vectors_and_weights(
    prepared, tmp_path: Path, name: str
) -> None:
    model = _model(name, prepared.spec.field_dims)
    config = DEFAULTS[name].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)})
    write_artifact(model, prepared.spec, config, "binary", tmp_path / name, {}, {})
    graph = onnx.load(str(resolve_model_dir(tmp_path / name) / "model.onnx")).graph
    shapes = {tuple(initializer.dims) for initializer in graph.initializer}
    rows, width = model.field_aware.embedding.weight.shape
    assert (rows, width - 1) in shapes  # the vectors
    assert (rows, 1) in shapes  # the first-order weights
    assert (rows, width) not in shapes  # and not the trained one
    assert model.field_aware.served is None  # the trained model is left as it was


def _hand_filled(model: torch.nn.Module, field_dims: tuple[int, ...]) -> torch.nn.Module:
    """Set each unseen row to the mean of its field's value rows, written out plainly."""
    filled = copy.deepcopy(model)
    for module in filled.modules():
        if isinstance(module, FeaturesLinear):
            table = module.weight.weight
        elif isinstance(module, FeaturesEmbedding | FieldAwareEmbedding):
            table = module.embedding.weight
        else:
            continue
        start = 0
        with torch.no_grad():
            for size in field_dims:
                rows = [table[start + r] for r in range(NUM_RESERVED, size)]
                table[start + UNSEEN_INDEX] = sum(rows) / len(rows)
                start += size
    return filled


@pytest.mark.parametrize("name", ["ffm", "nffm", "deepfm"])
def test_unseen_value_scores_with_field_average(prepared, tmp_path: Path, name: str) -> None:
    spec = prepared.spec
    model = _model(name, spec.field_dims)
    reference = _hand_filled(model, spec.field_dims)
    config = DEFAULTS[name].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)})
    write_artifact(model, spec, config, "binary", tmp_path / name, {}, {})
    scorer = Scorer.load(resolve_model_dir(tmp_path / name))

    base = {"c1": "c1_0", "c2": "c2_1", "n0": 3.0}
    first = scorer.score_rows([{**base, "c0": "never-seen-1"}])[0]
    second = scorer.score_rows([{**base, "c0": "never-seen-2"}])[0]
    assert first == second

    indices = scorer.encoder.encode_rows([{**base, "c0": "never-seen-1"}])
    assert indices[0, 0] == UNSEEN_INDEX
    with torch.no_grad():
        expected = torch.sigmoid(reference(torch.from_numpy(indices))).item()
    assert first == pytest.approx(expected, abs=1e-5)


def test_regression_export_has_no_sigmoid(prepared, tmp_path: Path) -> None:
    spec = prepared.spec
    model = _model("fm", spec.field_dims)
    write_artifact(model, spec, DEFAULTS["fm"], "regression", tmp_path / "fm", {}, {})
    rows = fixture_rows(spec.field_dims, 64)
    with torch.no_grad():
        expected = model(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(
        Scorer.load(resolve_model_dir(tmp_path / "fm")).score_indices(rows), expected, atol=1e-5
    )


def test_artifact_is_self_describing(model_dir: Path) -> None:
    manifest = ModelManifest.load(resolve_model_dir(model_dir))
    assert manifest.model_type == "nffm"
    assert manifest.task == "binary"
    assert manifest.onnx.opset == 18
    assert manifest.metrics["auc"] > 0.5
    assert {p.name for p in model_dir.iterdir()} == {"CURRENT", manifest.version}
    assert (model_dir / "CURRENT").read_text() == manifest.version + "\n"
    version_dir = model_dir / manifest.version
    assert json.loads((version_dir / "metrics.json").read_text()) == manifest.metrics
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "calibration.json",
        "checkpoint.pt",
        "metrics.json",
        "model.onnx",
        "model.onnx.data",  # the weights, mapped by every worker rather than copied
        "optimizer.pt",  # Adagrad's per-row sums, for a warm start to go on with
        "spec.json",
        "statistics.npz",
    ]
    # every file but the manifest itself, with its size and hash
    assert set(manifest.files) == {p.name for p in version_dir.iterdir()} - {"spec.json"}
    for name, entry in manifest.files.items():
        assert entry.bytes == (version_dir / name).stat().st_size
        assert entry.sha256 == sha256_file(version_dir / name)
    # what ctrserve drift compares with: every training row counted once in each field
    statistics = TrainingStatistics.load(version_dir)
    assert statistics is not None
    assert [len(statistics.field_counts[f.name]) for f in manifest.features.fields] == list(
        manifest.features.field_dims
    )
    assert {int(c.sum()) for c in statistics.field_counts.values()} == {statistics.rows}
    assert statistics.score_counts.sum() > 0
    assert np.all(np.diff(statistics.score_edges) >= 0)


def test_reexport_from_checkpoint_is_identical(model_dir: Path, tmp_path: Path) -> None:
    manifest = reexport(model_dir, tmp_path / "again")
    assert manifest.version == ModelManifest.load(resolve_model_dir(model_dir)).version
    again = resolve_model_dir(tmp_path / "again")
    assert (again / STATISTICS_FILE).is_file()  # carried over
    assert (again / "optimizer.pt").is_file()
    assert manifest.features == ModelManifest.load(resolve_model_dir(model_dir)).features
    rows = fixture_rows(manifest.features.field_dims, 500)
    np.testing.assert_allclose(
        Scorer.load(resolve_model_dir(tmp_path / "again")).score_indices(rows),
        Scorer.load(resolve_model_dir(model_dir)).score_indices(rows),
        atol=1e-6,
    )
    model, _ = load_checkpoint(model_dir)
    assert isinstance(model, MODELS["nffm"])


def test_a_damaged_optimizer_state_is_named_and_serving_never_reads_it(
    model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(resolve_model_dir(model_dir), copy)
    damaged = bytearray((copy / "optimizer.pt").read_bytes())
    damaged[-1] ^= 0xFF
    (copy / "optimizer.pt").write_bytes(bytes(damaged))
    Scorer.load(copy)  # the service checks only what it reads
    with pytest.raises(SpecError, match=r"optimizer\.pt: sha256"):
        load_optimizer_state(copy)


def test_a_checkpoint_of_other_layers_is_refused_clearly(model_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(resolve_model_dir(model_dir), old)
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    state["unexpected.weight"] = torch.zeros(1)
    torch.save(state, old / "checkpoint.pt")
    spec = json.loads((old / "spec.json").read_text())
    del spec["files"]  # as an older ctrserve wrote it: no file list to check it against
    spec["format_version"] = 1
    (old / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="older ctrserve: train the model again"):
        load_checkpoint(old)


def test_evaluate_reproduces_training_metrics(model_dir: Path, synth_csv: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "evaluate",
            "--model-dir",
            str(model_dir),
            "--data",
            str(synth_csv),
            "--split",
            "test",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    evaluated = json.loads(result.stdout)
    reported = ModelManifest.load(resolve_model_dir(model_dir)).metrics
    assert evaluated["rows"] == reported["rows"]
    # onnxruntime and torch agree to ~1e-7; that can only reorder near-ties in the AUC
    assert evaluated["auc"] == pytest.approx(reported["auc"], abs=1e-4)
    assert evaluated["logloss"] == pytest.approx(reported["logloss"], abs=1e-5)


def test_failed_export_leaves_the_served_version(prepared, tmp_path: Path, monkeypatch) -> None:
    import training.export as export

    spec = prepared.spec
    out = tmp_path / "lr"
    first = write_artifact(
        _model("lr", spec.field_dims), spec, DEFAULTS["lr"], "binary", out, {}, {}
    )

    def broken_parity(*args, **kwargs):
        raise export.ExportError("simulated parity failure")

    monkeypatch.setattr(export, "check_parity", broken_parity)
    with pytest.raises(export.ExportError, match="simulated"):
        write_artifact(_model("fm", spec.field_dims), spec, DEFAULTS["fm"], "binary", out, {}, {})
    assert (out / "CURRENT").read_text().strip() == first.version
    assert {p.name for p in out.iterdir()} == {"CURRENT", first.version}  # no staging left


def test_a_training_that_fails_after_its_export_began_leaves_the_served_version(
    prepared, tmp_path: Path, monkeypatch
) -> None:
    """The export starts writing the checkpoint while the test rows are scored; a failure
    there waits for that write and removes it."""
    import training.commands as commands

    spec = prepared.spec
    out = tmp_path / "lr"
    first = write_artifact(
        _model("lr", spec.field_dims), spec, DEFAULTS["lr"], "binary", out, {}, {}
    )

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while scoring")

    monkeypatch.setattr(commands, "_calibration", broken)
    config = TrainConfig(model=DEFAULTS["lr"], epochs=1)
    with pytest.raises(RuntimeError, match="simulated"):
        commands.train_one(prepared, config, out, progress=False)
    assert (out / "CURRENT").read_text().strip() == first.version
    assert {p.name for p in out.iterdir()} == {"CURRENT", first.version}  # no staging left


def test_a_second_export_adds_a_version_and_moves_the_pointer(prepared, tmp_path: Path) -> None:
    spec = prepared.spec
    out = tmp_path / "repo"
    first = write_artifact(
        _model("lr", spec.field_dims), spec, DEFAULTS["lr"], "binary", out, {}, {}
    )
    second = write_artifact(
        _model("fm", spec.field_dims), spec, DEFAULTS["fm"], "binary", out, {}, {}
    )
    assert first.version != second.version
    repository = ModelRepository(out)
    assert repository.versions() == [first.version, second.version]
    assert repository.current_version() == second.version
    # the first version is untouched: still loadable, byte for byte as written
    assert Scorer.load(out / first.version).version == first.version


def test_export_refuses_a_flat_first_stage_directory(prepared, model_dir: Path, tmp_path) -> None:
    flat = Path(shutil.copytree(resolve_model_dir(model_dir), tmp_path / "flat"))
    spec = prepared.spec
    with pytest.raises(SpecError, match="flat model directory"):
        write_artifact(_model("lr", spec.field_dims), spec, DEFAULTS["lr"], "binary", flat, {}, {})
    assert Scorer.load(resolve_model_dir(flat)).version == ModelManifest.load(flat).version


def test_fit_improves_over_chance(prepared) -> None:
    config = TrainConfig(
        model=DEFAULTS["ffm"].model_copy(update={"embed_dim": 4}),
        epochs=3,
        learning_rate=1e-2,
        batch_size=256,
    )
    model = build_model(prepared.spec.field_dims, config.model)
    result = fit(model, prepared, config, progress=False)
    assert result.history[-1]["val_auc"] > 0.6


def test_a_calibrated_export_serves_the_calibrated_torch_score(prepared, tmp_path: Path) -> None:
    spec = prepared.spec
    model = _model("nffm", spec.field_dims)
    rows = fixture_rows(spec.field_dims, 4096, seed=3)
    with torch.no_grad():
        probabilities = torch.sigmoid(model(torch.from_numpy(rows))).numpy()
    labels = (np.random.default_rng(0).random(len(rows)) < probabilities**2).astype(float)
    calibration = fit_calibration(labels, probabilities)
    assert calibration is not None
    config = DEFAULTS["nffm"].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)})
    out = tmp_path / "nffm"
    write_artifact(model, spec, config, "binary", out, {}, {}, calibration=calibration)
    served = Scorer.load(resolve_model_dir(out)).score_indices(rows)
    with torch.no_grad():  # the exported model: its unseen rows hold field averages now
        probabilities = torch.sigmoid(model(torch.from_numpy(rows))).numpy()
    tolerance = 1e-5 * max(1.0, calibration.steepest)  # the map magnifies the last bits
    np.testing.assert_allclose(served, calibration.apply(probabilities), rtol=0, atol=tolerance)
    assert np.abs(served - probabilities).max() > 0.01  # and it is not the raw score
    again = reexport(out)  # the calibration travels with the version
    rescored = Scorer.load(out / again.version).score_indices(rows)
    np.testing.assert_array_equal(rescored, served)


def test_training_calibrates_by_default_and_reports_both(model_dir: Path) -> None:
    version = resolve_model_dir(model_dir)
    assert Calibration.load(version) is not None
    metrics = json.loads((version / "metrics.json").read_text())
    for name in ("ne", "ece", "calibration", "uncalibrated_ne", "uncalibrated_ece"):
        assert name in metrics


def test_no_calibrate_exports_the_model_alone(synth_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain"
    trained = subprocess.run(
        [sys.executable, "-m", "training", "train", "--data", str(synth_csv), "--model", "lr",
         "--out", str(out), "--epochs", "1", "--no-progress", "--no-calibrate"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    version = resolve_model_dir(out)
    assert Calibration.load(version) is None
    metrics = json.loads((version / "metrics.json").read_text())
    assert "ece" in metrics
    assert "uncalibrated_ece" not in metrics
    model, _ = load_checkpoint(out)
    rows = fixture_rows(ModelManifest.load(version).features.field_dims, 256)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(rows))).numpy()
    np.testing.assert_allclose(Scorer.load(version).score_indices(rows), expected, atol=1e-5)
