"""Size-aware defaults and the validation search behind them."""

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")

from app.scoring.manifest import ModelManifest
from app.scoring.repository import resolve_model_dir
from support.training_files import training_cli as cli
from training.config import build_config
from training.data import open_source
from training.dataset import prepare, split_rule
from training.models import DEFAULTS
from training.split import TEST
from training.train import TrainConfig
from training.tuning import SMALL_DATA_ROWS, size_defaults, tune

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI


SMALL_GRID = {"embed_dim": (2, 4), "l2": (1e-4, 1e-2)}


def test_small_files_get_small_tables_and_enough_steps() -> None:
    small = build_config("nffm", 6_000)
    assert small.batch_size == 256  # ~20 steps an epoch, not one 4096-row batch
    assert small.min_count == 5
    assert small.model.embed_dim == 4
    assert build_config("fm", 6_000).model.embed_dim == 8
    assert build_config("ffm", 6_000).model.embed_dim == DEFAULTS["ffm"].embed_dim
    assert "embed_dim" not in size_defaults("lr", 6_000)


def test_large_files_keep_the_published_settings() -> None:
    large = build_config("nffm", 2 * SMALL_DATA_ROWS * 50)
    assert large.batch_size == 1024
    assert large.model == DEFAULTS["nffm"]
    assert large.min_count == 1
    assert build_config("nffm", 200_000).batch_size == 1024  # the default job: at most 1024
    assert build_config("nffm", 200_000).optimizer == "adagrad"  # measured: NFFM only
    assert build_config("fm", 200_000).optimizer == "adam"
    assert build_config("nffm", 20_000).batch_size == 512


def _quick(rows: int) -> TrainConfig:
    config = build_config("nffm", rows, flags={"epochs": 2})
    model = config.model.model_copy(update={"mlp_dims": (8,)})
    return config.model_copy(update={"model": model})


def test_tune_picks_its_best_trial_and_never_reads_the_test_rows(
    synth_csv: Path, tmp_path: Path
) -> None:
    lines = synth_csv.read_text().splitlines()[:4001]
    data = tmp_path / "small.csv"
    data.write_text("\n".join(lines) + "\n")
    start = _quick(4000)
    best, trials = tune(lambda c: prepare(open_source(data), c), start, SMALL_GRID)
    assert 3 <= len(trials) <= 4  # coordinate search: start, other k, then other L2
    assert len({tuple(t.settings.values()) for t in trials}) == len(trials)
    winner = max(trials, key=lambda t: t.val_score)
    assert winner.settings == {"embed_dim": best.model.embed_dim, "l2": best.l2}

    # Flip every test row's label: the search must not notice.
    test_rows = split_rule(start).by_position(np.arange(4000)) == TEST
    flipped_lines = [lines[0]] + [
        (("1" if line[0] == "0" else "0") + line[1:]) if is_test else line
        for line, is_test in zip(lines[1:], test_rows, strict=True)
    ]
    flipped = tmp_path / "flipped.csv"
    flipped.write_text("\n".join(flipped_lines) + "\n")
    _, again = tune(lambda c: prepare(open_source(flipped), c), start, SMALL_GRID)
    assert [t.val_score for t in again] == [t.val_score for t in trials]


def test_tune_cli_writes_a_config_that_train_accepts(synth_csv: Path, tmp_path: Path) -> None:
    config = tmp_path / "tuned.yaml"
    common = ["--data", str(synth_csv), "--model", "ffm", "--epochs", "1", "--no-progress"]
    result = cli("tune", *common, "--min-count", "2", "--write-config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = yaml.safe_load(result.stdout)
    assert {tuple(t["settings"]) for t in summary["trials"]} == {("embed_dim", "l2")}
    assert yaml.safe_load(config.read_text())["min_count"] == 2

    out = tmp_path / "model"
    trained = cli("train", *common, "--config", str(config), "--out", str(out))
    assert trained.returncode == 0, trained.stderr[-2000:]
    used = ModelManifest.load(resolve_model_dir(out)).training["config"]
    assert used["model"]["embed_dim"] == summary["best"]["embed_dim"]
    assert used["l2"] == summary["best"]["l2"]


def test_tune_refuses_when_every_knob_is_held(synth_csv: Path) -> None:
    held = ["--min-count", "1", "--embed-dim", "4", "--l2", "0.001"]
    result = cli("tune", "--data", str(synth_csv), *held)
    assert result.returncode == 2
    assert "nothing to tune" in result.stderr
