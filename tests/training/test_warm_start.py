"""Warm start: yesterday's model continues on today's data, its vocabulary grown and capped."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from app.features.spec import NUM_RESERVED, CategoricalField, FeatureSpec  # noqa: E402
from app.repository.manifest import ModelManifest  # noqa: E402
from app.repository.store import ModelRepository, resolve_model_dir  # noqa: E402
from support.training_files import training_cli  # noqa: E402
from training.data import Batch, DataError  # noqa: E402
from training.fit_spec import SpecBuilder  # noqa: E402
from training.layers import embedding_tables, field_offsets  # noqa: E402
from training.models import build_model  # noqa: E402
from training.optim import SparseOptimizer  # noqa: E402
from training.statistics import TrainingStatistics  # noqa: E402
from training.warm_start import (  # noqa: E402
    carried_optimizer,
    load_warm_start,
    merge_spec,
    transplant,
)


def _reshuffled(spec: FeatureSpec) -> FeatureSpec:
    """The first field's vocabulary reversed, its last value gone and a value added."""
    first = spec.fields[0]
    assert isinstance(first, CategoricalField)
    values = (*reversed(first.vocabulary[:-1]), "never-seen-before")
    changed = first.model_copy(update={"vocabulary": values})
    return spec.model_copy(update={"fields": (changed, *spec.fields[1:])})


def test_every_kept_value_keeps_its_rows_and_a_new_one_starts_at_the_average(
    model_dir: Path,
) -> None:
    base = load_warm_start(model_dir)
    spec = _reshuffled(base.spec)
    model = build_model(spec.field_dims, base.model_config)
    moved = transplant(base, model, spec)
    old_field, new_field = base.spec.fields[0], spec.fields[0]
    assert isinstance(old_field, CategoricalField)
    assert isinstance(new_field, CategoricalField)
    assert moved["new_values"] == 1
    old_start = int(field_offsets(base.spec.field_dims)[0])
    new_start = int(field_offsets(spec.field_dims)[0])
    for old_table, new_table in zip(
        embedding_tables(base.model), embedding_tables(model), strict=True
    ):
        for i, value in enumerate(new_field.vocabulary[:-1]):
            j = old_field.vocabulary.index(value)
            assert torch.equal(
                new_table[new_start + NUM_RESERVED + i], old_table[old_start + NUM_RESERVED + j]
            )
        new_row = new_table[new_start + NUM_RESERVED + len(new_field.vocabulary) - 1]
        assert torch.equal(new_row, old_table[old_start + 1])  # the field's unseen row
        for k in range(1, len(spec.fields)):  # the other fields, row for row
            a, b = (
                int(field_offsets(base.spec.field_dims)[k]),
                int(field_offsets(spec.field_dims)[k]),
            )
            size = spec.field_dims[k]
            assert torch.equal(new_table[b : b + size], old_table[a : a + size])


def test_the_optimizer_state_follows_the_rows(model_dir: Path) -> None:
    """Adagrad's per-row sums move with their values; a new value starts with none; the
    run's own learning rate applies; another optimiser starts fresh."""
    base = load_warm_start(model_dir)
    assert base.optimizer is not None
    name = base.optimizer["name"]
    spec = _reshuffled(base.spec)
    carried, said = carried_optimizer(base, spec, name)
    assert carried is not None
    assert said == f"carried from {base.version}"
    old_field, new_field = base.spec.fields[0], spec.fields[0]
    assert isinstance(old_field, CategoricalField)
    assert isinstance(new_field, CategoricalField)
    old_start = int(field_offsets(base.spec.field_dims)[0])
    new_start = int(field_offsets(spec.field_dims)[0])
    moved = 0
    for index, entries in carried["tables"]["state"].items():
        old_entries = base.optimizer["tables"]["state"][index]
        for key, value in entries.items():
            if not (isinstance(value, torch.Tensor) and value.dim()):
                continue
            old = old_entries[key]
            assert len(value) == sum(spec.field_dims)
            for i, token in enumerate(new_field.vocabulary[:-1]):
                j = old_field.vocabulary.index(token)
                assert torch.equal(
                    value[new_start + NUM_RESERVED + i], old[old_start + NUM_RESERVED + j]
                )
            last = new_start + NUM_RESERVED + len(new_field.vocabulary) - 1
            assert not value[last].any()  # the new value: no history
            moved += 1
    assert moved > 0
    model = build_model(spec.field_dims, base.model_config)
    optimizer = SparseOptimizer(model, spec.field_dims, 0.123, 0.0, name)
    optimizer.load_state(carried)
    assert {g["lr"] for g in optimizer.sparse.param_groups} == {0.123}

    other = "adam" if name == "adagrad" else "adagrad"
    assert carried_optimizer(base, spec, other) == (
        None,
        f"fresh: {base.version} trained with {name}",
    )


def test_the_same_spec_continues_the_same_model(model_dir: Path) -> None:
    base = load_warm_start(model_dir)
    model = build_model(base.spec.field_dims, base.model_config)
    transplant(base, model, base.spec)
    rows = torch.from_numpy(
        np.stack([np.arange(len(base.spec.fields)) % 3 + NUM_RESERVED] * 4).astype(np.int64)
    )
    with torch.no_grad():
        assert torch.equal(model.eval()(rows), base.model.eval()(rows))


def test_a_field_at_capacity_evicts_the_faded_values_for_todays(model_dir: Path) -> None:
    base = load_warm_start(model_dir)
    first = base.spec.fields[0]
    assert isinstance(first, CategoricalField)
    today = _builder(*_columns(base.spec), rows=10_000, token="fresh")
    capacity = 5
    spec = merge_spec(base, today, min_count=1, capacity=capacity, decay=0.5)
    merged = spec.fields[0]
    assert isinstance(merged, CategoricalField)
    assert len(merged.vocabulary) == capacity
    assert merged.vocabulary[0] == "fresh"  # seen 10,000 times today: first
    counts = base.counts[first.name][NUM_RESERVED:]
    by_count = sorted(zip(first.vocabulary, counts, strict=True), key=lambda vc: (-vc[1], vc[0]))
    assert list(merged.vocabulary[1:]) == [v for v, _ in by_count[: capacity - 1]]


def _columns(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """A spec's categorical and numeric fields, in its order."""
    categorical = [f.name for f in spec.fields if isinstance(f, CategoricalField)]
    return categorical, [f.name for f in spec.fields if not isinstance(f, CategoricalField)]


def _builder(
    categorical: list[str], numeric: list[str], rows: int = 100, token: str | None = None
) -> SpecBuilder:
    """Today's columns, each holding one value (``token``, or ``<field>_1``) in every row."""
    builder = SpecBuilder(categorical, numeric)
    builder.update(
        Batch(
            categorical={name: pa.array([token or f"{name}_1"] * rows) for name in categorical},
            numeric={name: np.ones(rows) for name in numeric},
            labels=np.zeros(rows, dtype=np.float32),
            weights=None,
            positions=np.arange(rows),
            oracle=None,
            time=None,
        )
    )
    return builder


def test_columns_in_another_order_continue_the_same_fields(model_dir: Path) -> None:
    base = load_warm_start(model_dir)
    categorical, numeric = _columns(base.spec)
    in_order = merge_spec(base, _builder(categorical, numeric), 1, None, 0.9)
    reordered = merge_spec(base, _builder(categorical[::-1], numeric[::-1]), 1, None, 0.9)
    assert reordered == in_order
    assert [f.name for f in reordered.fields] == [f.name for f in base.spec.fields]


def test_other_fields_are_refused_with_what_differs(model_dir: Path) -> None:
    base = load_warm_start(model_dir)
    categorical, numeric = _columns(base.spec)
    today = _builder([*categorical[1:], "new_field"], [categorical[0], *numeric])
    with pytest.raises(DataError) as refused:
        merge_spec(base, today, 1, None, 0.9)
    assert f"today's data adds new_field; has {categorical[0]} as numeric, not categorical" in (
        str(refused.value)
    )
    with pytest.raises(DataError, match=f"today's data lacks {numeric[-1]}:"):
        merge_spec(base, _builder(categorical, numeric[:-1]), 1, None, 0.9)


def test_warm_start_grows_the_vocabulary_and_exports_a_new_version(
    model_dir: Path, tmp_path: Path
) -> None:
    """Day 1 continues day 0's model: values new on day 1 get rows; one more version."""
    repository = tmp_path / "repo"
    ModelRepository(repository).root.mkdir()
    day1 = tmp_path / "day1.csv"
    assert training_cli("synth", "--rows", "20000", "--seed", "3", "--day", "1", "--shift", "c0",
                "--out", str(day1)).returncode == 0  # fmt: skip
    base = resolve_model_dir(model_dir)
    manifest = ModelManifest.load(base)
    result = training_cli(
        "train",
        "--data",
        str(day1),
        "--warm-start",
        str(model_dir),
        "--epochs",
        "1",
        "--out",
        str(repository),
        "--no-progress",
    )  # fmt: skip  (no --model: the base's)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["warm_start"]["from"] == manifest.version
    assert summary["warm_start"]["kept_values"] > 0
    assert summary["warm_start"]["new_values"] > 0
    assert summary["warm_start"]["optimizer"] == f"carried from {manifest.version}"
    grown = ModelManifest.load(resolve_model_dir(repository))
    assert "optimizer.pt" in grown.files  # and the next day carries it on
    assert grown.hyperparameters == manifest.hyperparameters
    old_c0, new_c0 = manifest.features.fields[0], grown.features.fields[0]
    assert isinstance(old_c0, CategoricalField)
    assert isinstance(new_c0, CategoricalField)
    assert set(new_c0.vocabulary) - set(old_c0.vocabulary)  # day 1's new values have rows
    statistics = TrainingStatistics.load(resolve_model_dir(repository))
    assert statistics is not None
    assert statistics.vocabulary_counts is not None  # carried to the next day
    assert all(statistics.vocabulary_counts[n].sum() > statistics.field_counts[n].sum()
               for n in statistics.field_counts)  # fmt: skip


def test_warm_start_refuses_another_model(model_dir: Path, synth_csv: Path, tmp_path) -> None:
    result = training_cli(
        "train", "--data", str(synth_csv), "--model", "fm", "--warm-start", str(model_dir),
        "--out", str(tmp_path / "repo"), "--no-progress",
    )  # fmt: skip
    assert result.returncode != 0
    assert "--warm-start continues" in result.stderr
    assert "give --model nffm" in result.stderr
