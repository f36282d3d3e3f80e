"""The comparison and inspection commands, on a tiny Criteo-layout file made here."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("lightgbm")
pytest.importorskip("deepctr_torch")

from tests.training.test_cli import cli
from tests.training.test_data import write_criteo
from training.compare import bootstrap_auc


def test_bootstrap_interval_brackets_the_auc() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = labels * 0.3 + rng.uniform(size=400)
    low, high = bootstrap_auc(labels.astype(float), scores, rounds=300)
    from sklearn.metrics import roc_auc_score

    assert low < roc_auc_score(labels, scores) < high
    assert high - low < 0.15


def test_compare_on_a_criteo_layout_file(tmp_path: Path) -> None:
    data = write_criteo(tmp_path / "criteo.txt", rows=600)
    report = tmp_path / "compare.md"
    result = cli(
        "compare",
        "--data",
        str(data),
        "--format",
        "criteo",
        "--models",
        "lr,nffm",
        "--no-tune",
        "--repeats",
        "2",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines()[2:] if line.startswith("|")]
    names = [line.split("|")[1].strip() for line in rows]
    assert sorted(names) == sorted(
        ["lr", "nffm", "LightGBM", "DeepCTR-Torch DeepFM", "DeepCTR-Torch ONN"]
    )
    assert "[" in result.stdout  # every AUC carries its interval
    assert all(" ± " in line for line in rows)  # and its spread over the two splits
    assert json.loads(report.read_text().splitlines()[0].removeprefix("Set-up: "))["seed"] == 0


def test_inspect_draws_a_field_map(model_dir: Path, synth_csv: Path, tmp_path: Path) -> None:
    plot = tmp_path / "c0.png"
    result = cli(
        "inspect",
        "--model-dir",
        str(model_dir),
        "--field",
        "c0",
        "--plot",
        str(plot),
        "--data",
        str(synth_csv),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["values"] > 10
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = cli("inspect", "--model-dir", str(model_dir), "--field", "nope", "--plot", str(plot))
    assert bad.returncode == 2
    assert "unknown field 'nope'" in bad.stderr
