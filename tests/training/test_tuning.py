"""Defaults that follow the data, and the validation search (``ctrserve tune``)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")

from app.repository.manifest import ModelManifest
from app.repository.store import resolve_model_dir
from support.training_files import training_cli as cli
from training.config import build_config
from training.data import open_source
from training.dataset import prepare, split_rule
from training.defaults import SMALL_DATA_ROWS, size_defaults
from training.models import DEFAULTS
from training.split import TEST
from training.train import TrainConfig
from training.tuning import Budget, tune

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI


def test_small_files_get_small_tables_stronger_l2_and_enough_steps() -> None:
    small = build_config("nffm", 6_000)
    assert small.batch_size == 256  # ~20 steps an epoch, not one 4096-row batch
    assert small.min_count is None  # each field's own cut-off, from its counts
    assert small.model.embed_dim == 4
    assert small.l2 == 1e-3
    assert build_config("fm", 6_000).l2 == 1e-4
    assert build_config("fm", 6_000).model.embed_dim == 8
    assert build_config("ffm", 6_000).model.embed_dim == DEFAULTS["ffm"].embed_dim
    assert "embed_dim" not in size_defaults("lr", 6_000)


def test_large_files_keep_the_published_settings_and_cap_the_epochs() -> None:
    large = build_config("nffm", 2 * SMALL_DATA_ROWS * 50)
    assert large.batch_size == 1024
    assert large.model == DEFAULTS["nffm"]
    assert large.l2 == 1e-4
    assert build_config("nffm", 200_000).batch_size == 1024  # the default job: at most 1024
    assert build_config("nffm", 200_000).epochs == 20
    assert build_config("nffm", 200_000).optimizer == "adagrad"  # measured: NFFM only
    assert build_config("fm", 200_000).optimizer == "adam"
    assert build_config("nffm", 20_000).batch_size == 512
    assert build_config("nffm", 10_000_000).epochs == 4  # ~40M samples at most
    assert build_config("nffm", 100_000_000).epochs == 1
    assert build_config("nffm", 10_000_000, flags={"epochs": 9}).epochs == 9  # a flag wins


def _quick(rows: int) -> TrainConfig:
    config = build_config("nffm", rows, flags={"epochs": 2})
    model = config.model.model_copy(update={"mlp_dims": (8,)})
    return config.model_copy(update={"model": model})


def _small(synth_csv: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    lines = synth_csv.read_text().splitlines()[:4001]
    data = tmp_path / "small.csv"
    data.write_text("\n".join(lines) + "\n")
    return data, lines


HELD = ("batch_size", "num_bins", "mlp_dims", "optimizer", "min_count")


def test_tune_starts_from_the_defaults_and_never_reads_the_test_rows(
    synth_csv: Path, tmp_path: Path
) -> None:
    data, lines = _small(synth_csv, tmp_path)
    start = _quick(4000)
    best, trials = tune(lambda c: prepare(open_source(data), c), start, Budget(4), HELD)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    first = trials[0].settings  # trial 0 is the starting configuration
    assert first["embed_dim"] == start.model.embed_dim
    assert first["l2"] == start.l2
    assert set(first) == {"learning_rate", "l2", "embed_dim", "dropout"}  # HELD stay put
    assert len({tuple(t.settings.values()) for t in trials}) == len(trials)
    winner = max(trials, key=lambda t: t.val_score)
    assert best.model.embed_dim == winner.settings["embed_dim"]
    assert best.l2 == winner.settings["l2"]
    assert best.batch_size == start.batch_size
    assert best.model.mlp_dims == (8,)

    # Flip every test row's label: the search must not notice.
    test_rows = split_rule(start).by_position(np.arange(4000)) == TEST
    flipped_lines = [lines[0]] + [
        (("1" if line[0] == "0" else "0") + line[1:]) if is_test else line
        for line, is_test in zip(lines[1:], test_rows, strict=True)
    ]
    flipped = tmp_path / "flipped.csv"
    flipped.write_text("\n".join(flipped_lines) + "\n")
    _, again = tune(lambda c: prepare(open_source(flipped), c), start, Budget(4), HELD)
    assert [t.val_score for t in again] == [t.val_score for t in trials]


def test_tune_cli_writes_configs_that_train_accepts_and_resumes(
    synth_csv: Path, tmp_path: Path
) -> None:
    data, _ = _small(synth_csv, tmp_path)
    out = tmp_path / "tuned"
    common = ["--data", str(data), "--epochs", "2", "--no-progress", "--mlp-dims", "8"]
    search = [*common, "--model", "nffm", "--min-count", "2", "--out", str(out)]
    result = cli("tune", *search, "--trials", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)["nffm"]
    assert summary["trials"] == 3
    assert "min_count" not in summary["best"]
    assert "mlp_width" not in summary["best"]
    tuned = yaml.safe_load((out / "nffm.yaml").read_text())
    assert tuned["min_count"] == 2
    assert tuned["model"]["mlp_dims"] == [8]
    assert (out / "trials.md").read_text().count("| nffm |") == 3

    resumed = cli("tune", *search, "--trials", "5")  # the journal holds 3: two more run
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["nffm"]["trials"] == 5

    model = tmp_path / "model"
    trained = cli("train", *common, "--config", str(out / "nffm.yaml"), "--out", str(model))
    assert trained.returncode == 0, trained.stderr[-2000:]
    used = ModelManifest.load(resolve_model_dir(model)).training["config"]
    assert used["model"]["embed_dim"] == tuned["model"]["embed_dim"]
    assert used["l2"] == tuned["l2"]


def test_tune_all_gives_every_model_the_same_budget(synth_csv: Path, tmp_path: Path) -> None:
    data, _ = _small(synth_csv, tmp_path)
    out = tmp_path / "ladder"
    result = cli(
        "tune", "--data", str(data), "--model", "all", "--trials", "2", "--epochs", "1",
        "--mlp-dims", "8", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert sorted(summary) == sorted(DEFAULTS)
    assert {s["trials"] for s in summary.values()} == {2}
    assert sorted(p.stem for p in out.glob("*.yaml")) == sorted(DEFAULTS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--timeout", "-1"], "--timeout must be positive"),
    ],
)
def test_bad_budgets_are_one_clear_line(
    synth_csv: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli("tune", "--data", str(synth_csv), "--out", str(tmp_path / "t"), *args)
    assert result.returncode == 2
    assert f"error: {message}" in result.stderr


def test_a_study_is_not_resumed_on_other_data(synth_csv: Path, tmp_path: Path) -> None:
    data, _ = _small(synth_csv, tmp_path)
    out = tmp_path / "tuned"
    common = ["--model", "lr", "--trials", "1", "--epochs", "1", "--no-progress"]
    first = cli("tune", "--data", str(data), *common, "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    other = cli("tune", "--data", str(synth_csv), *common, "--out", str(out))
    assert other.returncode == 2
    assert "give another --out to start a new search" in other.stderr
