"""A version is all of its files: the same model gives the same bytes and version however
often and wherever it is exported; compact tables and int8 dense layers stay within their
parity bound."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ir = pytest.importorskip("onnx_ir")

from app.features.errors import SpecError  # noqa: E402
from app.model.scorer import Scorer  # noqa: E402
from app.repository.manifest import ONNX_DATA_FILE, ONNX_FILE, ModelManifest  # noqa: E402
from app.repository.store import resolve_model_dir  # noqa: E402
from training.data import open_source  # noqa: E402
from training.dataset import prepare  # noqa: E402
from training.export import (  # noqa: E402
    DENSE_PARITY,
    TABLE_PARITY,
    ExportError,
    fixture_rows,
    load_checkpoint,
    reexport,
    to_onnx,
    write_artifact,
)
from training.graph_file import EXTERNAL_TENSOR_BYTES, save_graph  # noqa: E402
from training.memory import plan  # noqa: E402
from training.models import DEFAULTS, build_model  # noqa: E402
from training.train import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = DEFAULTS["nffm"].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)})


@pytest.fixture(scope="module")
def prepared(synth_csv: Path):
    return prepare(open_source(synth_csv), TrainConfig(model=CONFIG, seed=0))


def _model(field_dims: tuple[int, ...], seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(field_dims, CONFIG)
    with torch.no_grad():  # move every table away from its near-zero init
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def _export(prepared, out: Path, model: torch.nn.Module | None = None, **options) -> Path:
    model = model if model is not None else _model(prepared.spec.field_dims)
    write_artifact(model, prepared.spec, CONFIG, "binary", out, {}, {}, **options)
    return resolve_model_dir(out)


def test_two_exports_of_one_model_are_one_version_byte_for_byte(prepared, tmp_path) -> None:
    first = _export(prepared, tmp_path / "a")
    second = _export(prepared, tmp_path / "b")
    assert first.name == second.name
    for name in (ONNX_FILE, ONNX_DATA_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # exported again into the same repository, it is the version already there
    again = _export(prepared, tmp_path / "a")
    assert again == first
    assert [p.name for p in (tmp_path / "a").iterdir() if p.is_dir()] == [first.name]


def test_the_weights_file_holds_the_trained_tables_and_is_described_as_written(
    prepared, tmp_path
) -> None:
    """The tables are written from the trained ones (a view without the last column, a
    few rows at a time), and spec.json's size and sha256 of the file, taken as it was
    written, are the file's."""
    model = _model(prepared.spec.field_dims)
    version = _export(prepared, tmp_path / "w", model)
    graph = onnx.load(str(version / ONNX_FILE), load_external_data=False)
    places = {
        init.name: {entry.key: entry.value for entry in init.external_data}
        for init in graph.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
    }
    table = model.field_aware.embedding.weight.detach().numpy()
    data = (version / ONNX_DATA_FILE).read_bytes()
    by_length = {int(p["length"]): int(p["offset"]) for p in places.values()}
    for trained in (table[:, :-1], table[:, -1]):  # the vectors, then the first-order weights
        stored = np.frombuffer(data, np.float32, trained.size, by_length[trained.nbytes])
        np.testing.assert_array_equal(stored, trained.reshape(-1))
    described = ModelManifest.load(version).files[ONNX_DATA_FILE]
    assert described.bytes == len(data)
    assert described.sha256 == hashlib.sha256(data).hexdigest()


def test_the_weights_file_is_laid_out_as_onnx_ir_lays_it_out(tmp_path: Path) -> None:
    """Tensors over 1 MiB at 64 KiB offsets (onnxruntime maps them), smaller ones packed:
    the bytes ``onnx_ir.save`` writes, so a model exports to the version it always did."""
    model = build_model((40_000, 100, 100, 50), CONFIG).eval()  # a 2.6 MB table
    ours, reference = tmp_path / "ours", tmp_path / "onnx_ir"
    ours.mkdir()
    reference.mkdir()
    save_graph(to_onnx(model, "binary", 4), ours / ONNX_FILE)
    ir.save(
        to_onnx(model, "binary", 4),
        reference / ONNX_FILE,
        external_data=ONNX_DATA_FILE,
        size_threshold_bytes=EXTERNAL_TENSOR_BYTES,
        alignment=1 << 16,
    )
    for name in (ONNX_FILE, ONNX_DATA_FILE):
        assert (ours / name).read_bytes() == (reference / name).read_bytes()


def test_the_graph_holds_nothing_of_the_machine_that_exported_it(prepared, tmp_path) -> None:
    graph_bytes = (_export(prepared, tmp_path / "m") / ONNX_FILE).read_bytes()
    assert str(ROOT).encode() not in graph_bytes
    assert b"stack_trace" not in graph_bytes
    assert b"training/" not in graph_bytes  # no module paths, no class hierarchy


def test_an_export_from_another_checkout_is_the_same_version(
    model_dir: Path, tmp_path: Path
) -> None:
    """What two clones of the repository do: the same checkpoint, exported by source files
    at another path, gives the same version."""
    checkout = tmp_path / "elsewhere" / "ctrserve"
    for package in ("app", "training"):
        shutil.copytree(
            ROOT / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    code = (
        "import sys; from pathlib import Path; from training.export import reexport; "
        "print(reexport(Path(sys.argv[1]), Path(sys.argv[2])).version)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), str(tmp_path / "out")],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert result.stdout.split()[-1] == ModelManifest.load(resolve_model_dir(model_dir)).version


def test_different_models_never_share_a_version(prepared, tmp_path: Path) -> None:
    base = _export(prepared, tmp_path / "base").name
    other_weights = _export(prepared, tmp_path / "seed", _model(prepared.spec.field_dims, 2)).name
    one_weight = _model(prepared.spec.field_dims)
    with torch.no_grad():
        next(one_weight.parameters()).view(-1)[0] += 1e-3
    nudged = _export(prepared, tmp_path / "nudged", one_weight).name
    assert len({base, other_weights, nudged}) == 3


def test_a_bit_flipped_in_the_checkpoint_is_refused_where_it_is_read(
    model_dir: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(resolve_model_dir(model_dir), tmp_path / "copy"))
    data = bytearray((copy / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(SpecError, match=r"checkpoint\.pt: sha256"):
        load_checkpoint(copy)
    assert Scorer.load(copy).smoke_test() > 0  # the service never reads it


def test_without_a_checkpoint_a_version_serves_but_cannot_be_reexported(
    prepared, tmp_path: Path
) -> None:
    version_dir = _export(prepared, tmp_path / "m", checkpoint=False)
    assert not (version_dir / "checkpoint.pt").exists()
    assert "checkpoint.pt" not in ModelManifest.load(version_dir).files
    assert Scorer.load(version_dir).smoke_test() > 0
    with pytest.raises(ExportError, match="--no-checkpoint"):
        reexport(tmp_path / "m")


def test_a_version_of_the_older_format_is_refused_with_the_way_out(
    model_dir: Path, tmp_path: Path
) -> None:
    old = Path(shutil.copytree(resolve_model_dir(model_dir), tmp_path / "old"))
    spec = json.loads((old / "spec.json").read_text())
    del spec["files"]
    spec["format_version"] = 1
    (old / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(SpecError, match=r"older ctrserve.*ctrserve export"):
        Scorer.load(old)
    manifest = reexport(old, tmp_path / "new")  # the way out it names
    assert Scorer.load(resolve_model_dir(tmp_path / "new")).version == manifest.version


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compact_tables_shrink_the_weights_and_stay_within_their_bound(
    prepared, tmp_path: Path, dtype: str
) -> None:
    model = _model(prepared.spec.field_dims)
    float_dir = _export(prepared, tmp_path / "float", model)
    compact_dir = _export(prepared, tmp_path / dtype, model, table_dtype=dtype)
    manifest = ModelManifest.load(compact_dir)
    assert manifest.onnx.table_dtype == dtype
    assert manifest.version != float_dir.name
    tables = {
        init.name: init
        for init in onnx.load(
            str(compact_dir / ONNX_FILE), load_external_data=False
        ).graph.initializer
    }
    rows_of_all_fields = sum(prepared.spec.field_dims)
    vectors = [t for t in tables.values() if list(t.dims[:1]) == [rows_of_all_fields]]
    vectors = [t for t in vectors if t.dims[1] > 1]  # the vector tables, not the weights
    expected = onnx.TensorProto.FLOAT16 if dtype == "float16" else onnx.TensorProto.INT8
    assert vectors
    assert all(t.data_type == expected for t in vectors)
    rows = fixture_rows(prepared.spec.field_dims, 5000, seed=11)
    served = Scorer.load(compact_dir).score_indices(rows)
    reference = Scorer.load(float_dir).score_indices(rows)
    gaps = np.abs(served - reference)
    assert np.quantile(gaps, 0.99) <= TABLE_PARITY[dtype]
    assert 0 < manifest.training["compact_parity_p99_abs_diff"] <= TABLE_PARITY[dtype]
    # the tables' bytes went down to 2 (float16) or 1 (int8, plus a scale a row) per weight
    width = 2 if dtype == "float16" else 1
    weights = sum(int(np.prod(t.dims)) for t in vectors)
    float_bytes = (float_dir / ONNX_DATA_FILE).stat().st_size
    saved = float_bytes - (compact_dir / ONNX_DATA_FILE).stat().st_size
    assert saved >= 0.85 * weights * (4 - width)


def test_compact_tables_past_their_bound_are_refused(prepared, tmp_path: Path, monkeypatch) -> None:
    from training import export

    monkeypatch.setitem(export.TABLE_PARITY, "int8", 1e-9)
    model = _model(prepared.spec.field_dims)
    _export(prepared, tmp_path / "m", model)
    with pytest.raises(ExportError, match="int8 tables and float32 dense layers move 1% of"):
        _export(prepared, tmp_path / "m", model, table_dtype="int8")
    assert len([p for p in (tmp_path / "m").iterdir() if p.is_dir()]) == 1  # nothing added


def test_int8_dense_layers_score_each_row_on_its_own_within_their_bound(
    prepared, tmp_path: Path
) -> None:
    model = _model(prepared.spec.field_dims)
    float_dir = _export(prepared, tmp_path / "float", model)
    dense_dir = _export(prepared, tmp_path / "int8", model, dense_dtype="int8")
    manifest = ModelManifest.load(dense_dir)
    assert (manifest.onnx.table_dtype, manifest.onnx.dense_dtype) == ("float32", "int8")
    graph = onnx.load(str(dense_dir / ONNX_FILE), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("MatMulNBits") == len(CONFIG.mlp_dims) + 1
    assert "Gemm" not in ops
    rows = fixture_rows(prepared.spec.field_dims, 5000, seed=11)
    scorer = Scorer.load(dense_dir)
    served = scorer.score_indices(rows)
    gaps = np.abs(served - Scorer.load(float_dir).score_indices(rows))
    assert 0 < np.quantile(gaps, 0.99) <= DENSE_PARITY["int8"]
    assert manifest.training["compact_parity_p99_abs_diff"] <= DENSE_PARITY["int8"]
    # the memory plan a training run prints put the weights file at what was written
    planned = plan(prepared.spec.field_dims, CONFIG, 256, "adam", dense_dtype="int8")
    written = manifest.files[ONNX_DATA_FILE].bytes
    assert abs(planned.exported - written) <= 0.05 * written
    # a row's score is its own, whatever is batched with it, to float rounding (the score
    # cache relies on it; one activation scale per batch moved rows by ~3e-4)
    alone = np.concatenate([scorer.score_indices(rows[i : i + 1]) for i in range(50)])
    np.testing.assert_allclose(alone, served[:50], rtol=0, atol=1e-6)
    # a re-export keeps the dense layers as they were, unless told otherwise
    assert ModelManifest.load(resolve_model_dir(tmp_path / "int8")).onnx.dense_dtype == "int8"
    again = reexport(dense_dir, tmp_path / "again")
    assert again.onnx.dense_dtype == "int8"
    assert again.version == manifest.version
    wide = reexport(dense_dir, tmp_path / "wide", dense_dtype="float32")
    assert wide.version == float_dir.name
    assert "compact_parity_p99_abs_diff" not in wide.training


def test_int8_dense_layers_of_a_model_without_any_stay_float32(prepared, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = DEFAULTS["ffm"].model_copy(update={"embed_dim": 4})
    model = build_model(prepared.spec.field_dims, config).eval()
    out = tmp_path / "ffm"
    write_artifact(model, prepared.spec, config, "binary", out, {}, {}, dense_dtype="int8")
    manifest = ModelManifest.load(resolve_model_dir(out))
    assert manifest.onnx.dense_dtype == "float32"
    assert manifest.training["compact_parity_max_abs_diff"] == 0.0
