"""Negative down-sampling: every positive kept, a seeded share of every split's negatives
(the kept validation and test negatives weighted 1 / w), `evaluate --split` on every row,
the exported scores corrected for it."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from app.repository.store import resolve_model_dir  # noqa: E402
from training.data import Batch, open_source  # noqa: E402
from training.dataset import prepare, split_rule  # noqa: E402
from training.evaluation import binary_metrics  # noqa: E402
from training.models import DEFAULTS, build_model  # noqa: E402
from training.split import (  # noqa: E402
    DROPPED,
    DROPPED_TEST,
    DROPPED_VAL,
    TEST,
    TRAIN,
    VAL,
    SplitRule,
)
from training.statistics import TrainingStatistics  # noqa: E402
from training.train import TrainConfig, correct_for_sampling, corrected_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SYNTH_ROWS = 10_000  # the session's synthetic log (tests/conftest.py)


def _batch(rows: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.1).astype(np.float32)
    return Batch({}, {}, labels, None, np.arange(rows, dtype=np.int64), None, None)


def test_every_positive_and_a_share_of_the_negatives_are_kept_in_every_split() -> None:
    batch = _batch(200_000)
    plain = SplitRule(0.1, 0.1, seed=3).assign(batch)
    rule = SplitRule(0.1, 0.1, seed=3, negative_sampling=0.25)
    sampled = rule.assign(batch)
    np.testing.assert_array_equal(rule.unsampled().assign(batch), plain)
    positives = batch.labels > 0
    np.testing.assert_array_equal(sampled[positives], plain[positives])
    for split, dropped in ((TRAIN, DROPPED), (VAL, DROPPED_VAL), (TEST, DROPPED_TEST)):
        negatives = ~positives & (plain == split)
        assert np.mean(sampled[negatives] == split) == pytest.approx(0.25, abs=0.02)
        assert set(np.unique(sampled[negatives])) == {split, dropped}
    again = SplitRule(0.1, 0.1, seed=3, negative_sampling=0.25).assign(batch)
    np.testing.assert_array_equal(again, sampled)  # the same rows on every pass


def test_kept_validation_negatives_stand_for_the_ones_left_out(
    synth_csv: Path, tmp_path: Path
) -> None:
    def validation(**settings: object) -> tuple[np.ndarray, np.ndarray | None]:
        config = TrainConfig(model=DEFAULTS["lr"], **settings)  # type: ignore[arg-type]
        prepared = prepare(open_source(synth_csv), config, tmp_path / "cache")
        val = prepared.val
        return val.labels.read(), None if val.weights is None else val.weights.read()

    labels, weights = validation()
    assert weights is None  # nothing sampled, nothing weighted
    kept_labels, kept_weights = validation(negative_sampling=0.3)
    assert kept_weights is not None
    assert len(kept_labels) < 0.85 * len(labels)
    assert kept_labels.sum() == labels.sum()  # every positive
    np.testing.assert_allclose(kept_weights, np.where(kept_labels > 0, 1.0, 1 / 0.3), rtol=1e-6)
    # the weights restore the rows and the click rate the split would have had
    assert kept_weights.sum() == pytest.approx(len(labels), rel=0.05)
    rate = np.average(kept_labels, weights=kept_weights)
    assert rate == pytest.approx(labels.mean(), abs=0.02)
    assert rate < kept_labels.mean() - 0.03  # unweighted, the kept rows click more


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_sampled_shards_are_the_kept_rows_of_the_unsampled_ones(
    synth_csv: Path, tmp_path: Path, fmt: str
) -> None:
    """Pass 2 of a sampled run reads the rows pass 1 kept aside, not the source: the shards
    must be exactly the unsampled shards' rows that the sampling keeps, in order."""
    data = synth_csv
    if fmt == "parquet":
        data = tmp_path / "synth.parquet"
        pq.write_table(pacsv.read_csv(synth_csv), data, row_group_size=3_000)
    full_config = TrainConfig(model=DEFAULTS["lr"])
    sampled_config = TrainConfig(model=DEFAULTS["lr"], negative_sampling=0.3)
    source = open_source(data, batch_rows=1_000)  # many batches, so their order counts
    full = prepare(source, full_config, tmp_path / "cache")
    sampled = prepare(source, sampled_config, tmp_path / "cache")
    assert sampled.spec == full.spec  # the vocabularies count the dropped negatives too
    rule = split_rule(sampled_config)
    batches = list(source.batches())
    assigned = np.concatenate([rule.assign(batch) for batch in batches])
    plain = np.concatenate([rule.unsampled().assign(batch) for batch in batches])
    for split, name in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")):
        kept = assigned[plain == split] == split
        assert 0 < kept.sum() < len(kept)
        every, chosen = getattr(full, name).read(), getattr(sampled, name).read()
        np.testing.assert_array_equal(chosen.indices, every.indices[kept])
        np.testing.assert_array_equal(chosen.labels, every.labels[kept])
        if split != TRAIN:  # the generator's true probabilities, kept for val and test
            assert every.oracle is not None
            assert chosen.oracle is not None
            np.testing.assert_array_equal(chosen.oracle, every.oracle[kept])
    # nothing of pass 1's copy is left: the same files, and the sampled splits' weights
    weights = {"val.weights.npy", "test.weights.npy"}
    assert {p.name for p in sampled.directory.iterdir()} == {
        p.name for p in full.directory.iterdir()
    } | weights


def test_weighted_metrics_count_a_row_as_often_as_its_weight() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(4000) < 0.3).astype(np.float64)
    scores = np.clip(0.3 + 0.4 * (labels - 0.3) + rng.normal(0, 0.2, 4000), 0.01, 0.99)
    weights = rng.integers(1, 4, 4000).astype(np.float64)
    weighted = binary_metrics(labels, scores, weights)
    repeated = binary_metrics(
        np.repeat(labels, weights.astype(int)), np.repeat(scores, weights.astype(int))
    )
    for name in ("auc", "logloss", "ne", "calibration", "ece", "observed_rate"):
        assert weighted[name] == pytest.approx(repeated[name], rel=1e-9), name
    assert weighted["rows"] == 4000


@pytest.mark.parametrize("name", ["lr", "ffm", "deepfm", "nffm"])
def test_the_correction_is_the_published_one(name: str) -> None:
    field_dims = (5, 7, 4)
    config = DEFAULTS[name].model_copy(update={"embed_dim": 4, "mlp_dims": (8,)})
    torch.manual_seed(0)
    model = build_model(field_dims, config).eval()
    rows = torch.tensor([[2, 3, 2], [4, 6, 3], [0, 1, 2]])
    with torch.no_grad():
        sampled = torch.sigmoid(model(rows)).numpy()
        correct_for_sampling(model, 0.1)
        corrected = torch.sigmoid(model(rows)).numpy()
    expected = sampled / (sampled + (1 - sampled) / 0.1)  # He et al. 2014
    np.testing.assert_allclose(corrected, expected, rtol=1e-5)
    # the validation scores fit kept, corrected after it, are what the corrected model scores
    np.testing.assert_allclose(corrected_scores(sampled, 0.1), corrected, rtol=1e-5)
    assert corrected_scores(sampled, 0.1).dtype == sampled.dtype
    assert math.isclose(float(corrected.mean()), float(expected.mean()), rel_tol=1e-5)


def test_training_with_sampling_trains_on_fewer_rows_and_says_so(
    synth_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sampled"
    command = [sys.executable, "-m", "training", "train", "--data", str(synth_csv),
               "--model", "lr", "--epochs", "1", "--no-progress",
               "--negative-sampling", "0.3"]  # fmt: skip
    trained = subprocess.run(
        [*command, "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    manifest = json.loads((resolve_model_dir(out) / "spec.json").read_text())
    assert manifest["training"]["config"]["negative_sampling"] == 0.3
    assert manifest["training"]["rows"] < 0.8 * SYNTH_ROWS  # ~70% of the negatives left out
    # the test split is sampled like the others, its kept negatives weighted; `evaluate`
    # scores the split's every row, and the weighted metrics estimate those
    assert summary["test"]["rows"] < 0.07 * SYNTH_ROWS
    evaluated = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "--model-dir", str(out),
         "--data", str(synth_csv), "--split", "test"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    whole = json.loads(evaluated.stdout)
    assert whole["rows"] == pytest.approx(0.1 * SYNTH_ROWS, rel=0.1)
    assert summary["test"]["auc"] == pytest.approx(whole["auc"], abs=0.03)
    assert summary["test"]["observed_rate"] == pytest.approx(whole["observed_rate"], abs=0.03)
    assert summary["test"]["calibration"] == pytest.approx(whole["calibration"], abs=0.1)
    # drift and the next warm start count the rows as they were before sampling
    statistics = TrainingStatistics.load(resolve_model_dir(out))
    assert statistics is not None
    assert statistics.rows == pytest.approx(0.8 * SYNTH_ROWS, rel=0.05)
    for counts in statistics.field_counts.values():
        assert counts.sum() == pytest.approx(statistics.rows, rel=0.01)
    refused = subprocess.run(
        [*command, "--task", "regression", "--out", str(tmp_path / "r")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "--negative-sampling needs --task binary" in refused.stderr
