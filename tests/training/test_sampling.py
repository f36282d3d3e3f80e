"""Negative down-sampling: every positive kept, a seeded share of the training negatives,
validation and test untouched, and the exported scores corrected for it."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from app.scoring.repository import resolve_model_dir  # noqa: E402
from training.data import Batch  # noqa: E402
from training.models import DEFAULTS, build_model  # noqa: E402
from training.split import DROPPED, TEST, TRAIN, VAL, SplitRule  # noqa: E402
from training.train import correct_for_sampling  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SYNTH_ROWS = 10_000  # the session's synthetic log (tests/conftest.py)


def _batch(rows: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.1).astype(np.float32)
    return Batch({}, {}, labels, None, np.arange(rows, dtype=np.int64), None, None)


def test_every_positive_and_a_share_of_the_training_negatives_are_kept() -> None:
    batch = _batch(200_000)
    plain = SplitRule(0.1, 0.1, seed=3).assign(batch)
    sampled = SplitRule(0.1, 0.1, seed=3, negative_sampling=0.25).assign(batch)
    held_out = (plain == VAL) | (plain == TEST)
    np.testing.assert_array_equal(sampled[held_out], plain[held_out])  # untouched
    positives = batch.labels > 0
    assert (sampled[positives & (plain == TRAIN)] == TRAIN).all()
    negatives = ~positives & (plain == TRAIN)
    kept = np.mean(sampled[negatives] == TRAIN)
    assert kept == pytest.approx(0.25, abs=0.01)
    assert set(np.unique(sampled[negatives])) == {TRAIN, DROPPED}
    again = SplitRule(0.1, 0.1, seed=3, negative_sampling=0.25).assign(batch)
    np.testing.assert_array_equal(again, sampled)  # the same rows on every pass


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
    assert summary["test"]["rows"] > 0.08 * SYNTH_ROWS  # the test split is whole (10%)
    refused = subprocess.run(
        [*command, "--task", "regression", "--out", str(tmp_path / "r")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "--negative-sampling needs --task binary" in refused.stderr
