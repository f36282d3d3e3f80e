"""The trainer CLI end to end, as a user runs it."""

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from app.repository.manifest import ModelManifest
from app.repository.store import resolve_model_dir
from support.training_files import training_cli as cli
from support.training_files import write_criteo

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI

ROOT = Path(__file__).resolve().parents[2]


def test_synth_train_evaluate(synth_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "fm"
    trained = cli(
        "train",
        "--data",
        str(synth_csv),
        "--model",
        "fm",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--no-progress",
        "--batch-size",
        "512",
    )
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["model"] == "fm"
    assert 0.5 < summary["test"]["auc"] <= summary["oracle_test"]["auc"] + 0.05
    evaluated = cli("evaluate", "--model-dir", str(out), "--data", str(synth_csv))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert {"auc", "logloss", "calibration"} <= metrics.keys()
    assert metrics["rows"] == 10_000
    test_split = cli(
        "evaluate", "--model-dir", str(out), "--data", str(synth_csv), "--split", "test"
    )
    assert test_split.returncode == 0, test_split.stderr
    assert json.loads(test_split.stdout)["auc"] == pytest.approx(summary["test"]["auc"], abs=1e-4)

    other = tmp_path / "other.csv"
    other.write_text(synth_csv.read_text().replace("\n0,", "\n1,", 5))
    refused = cli("evaluate", "--model-dir", str(out), "--data", str(other), "--split", "test")
    assert refused.returncode == 2
    assert "not the data this model was trained on" in refused.stderr

    # rows without a click leave AUC, NE and calibration undefined: null, never NaN (not JSON)
    lines = synth_csv.read_text().splitlines()
    no_clicks = tmp_path / "no_clicks.csv"
    no_clicks.write_text("\n".join([lines[0], *(x for x in lines[1:] if x.startswith("0,"))]))
    undefined = cli("evaluate", "--model-dir", str(out), "--data", str(no_clicks))
    assert undefined.returncode == 0, undefined.stderr
    strict = json.loads(undefined.stdout, parse_constant=_not_json)
    assert (strict["auc"], strict["ne"], strict["calibration"]) == (None, None, None)
    assert strict["observed_rate"] == 0.0


def test_int8_dense_layers_from_train_and_export(synth_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "nfm"
    trained = cli(
        "train", "--data", str(synth_csv), "--model", "nfm", "--out", str(out),
        "--epochs", "1", "--no-progress", "--dense-dtype", "int8",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert ModelManifest.load(resolve_model_dir(out)).onnx.dense_dtype == "int8"
    # served by onnxruntime, the int8 graph scores the test split as the float model did
    evaluated = cli(
        "evaluate", "--model-dir", str(out), "--data", str(synth_csv), "--split", "test"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    auc = json.loads(trained.stdout)["test"]["auc"]
    assert json.loads(evaluated.stdout)["auc"] == pytest.approx(auc, abs=5e-3)
    wide = cli("export", "--model-dir", str(out), "--dense-dtype", "float32")
    assert wide.returncode == 0, wide.stderr
    assert ModelManifest.load(resolve_model_dir(out)).onnx.dense_dtype == "float32"


def test_time_split_and_gzip_shards(tmp_path: Path) -> None:
    day = tmp_path / "day"
    day.mkdir()
    for hour in range(3):
        lines = ["label,site,hour"] + [f"{i % 2},s{i % 11},{hour}" for i in range(600)]
        with gzip.open(day / f"part-{hour}.csv.gz", "wt") as handle:
            handle.write("\n".join(lines) + "\n")
    result = cli(
        "train", "--data", str(day), "--model", "lr", "--out", str(tmp_path / "m"),
        "--time-column", "hour", "--val-from", "1", "--test-from", "2", "--epochs", "1",
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["test"]["rows"] == 600  # the last hour, held out


def _hours(path: Path, hours: range, rows: int = 200) -> Path:
    lines = ["label,site,hour"] + [
        f"{(i + hour) % 2},s{i % 13},{hour}" for hour in hours for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_time_column_alone_splits_at_the_fractions(tmp_path: Path) -> None:
    """Ten hours of rows: the first eight train, the ninth validates, the tenth tests; a
    warm start on the next day splits by the same column without being told."""
    common = ["--model", "lr", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "m")]
    first = cli("train", "--data", str(_hours(tmp_path / "d1.csv", range(10))), *common,
                "--time-column", "hour")  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["test"]["rows"] == 200
    config = ModelManifest.load(resolve_model_dir(tmp_path / "m")).training["config"]
    assert (config["time_column"], config["val_from"], config["test_from"]) == ("hour", "8", "9")

    day2 = _hours(tmp_path / "d2.csv", range(10, 20))
    warm = cli("train", "--data", str(day2), *common, "--warm-start", str(tmp_path / "m"))
    assert warm.returncode == 0, warm.stderr[-2000:]
    config = ModelManifest.load(resolve_model_dir(tmp_path / "m")).training["config"]
    assert (config["time_column"], config["val_from"], config["test_from"]) == ("hour", "18", "19")

    one_hour = cli("train", "--data", str(_hours(tmp_path / "d3.csv", range(1))), *common,
                   "--time-column", "hour")  # fmt: skip
    assert one_hour.returncode == 2
    assert "too few distinct times" in one_hour.stderr


def test_a_model_too_large_for_the_budget_is_refused(synth_csv: Path, tmp_path: Path) -> None:
    result = cli(
        "train", "--data", str(synth_csv), "--model", "nffm", "--out", str(tmp_path / "m"),
        "--max-memory", "100M", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--max-memory" in result.stderr
    assert "--max-vocab" in result.stderr
    assert not (tmp_path / "m").exists()


def test_ladder_prints_a_table(synth_csv: Path, tmp_path: Path) -> None:
    report = tmp_path / "ladder.md"
    result = cli(
        "ladder",
        "--data",
        str(synth_csv),
        "--models",
        "lr,fm",
        "--epochs",
        "1",
        "--no-progress",
        "--batch-size",
        "512",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| model | test AUC")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["lr", "fm", "oracle (p_true)"]
    assert "samples/s" in report.read_text()


def test_criteo_format(tmp_path: Path) -> None:
    data = write_criteo(tmp_path / "criteo.txt", rows=300)
    out = tmp_path / "criteo-lr"
    result = cli(
        "train",
        "--data",
        str(data),
        "--format",
        "criteo",
        "--model",
        "lr",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--no-progress",
        "--batch-size",
        "512",
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads((resolve_model_dir(out) / "spec.json").read_text())
    assert len(spec["features"]["fields"]) == 39


def test_regression_on_aggregates(tmp_path: Path) -> None:
    data = tmp_path / "agg.csv"
    assert cli("synth", "--rows", "20000", "--aggregate", "--out", str(data)).returncode == 0
    result = cli(
        "train",
        "--data",
        str(data),
        "--task",
        "regression",
        "--model",
        "nffm",
        "--embed-dim",
        "4",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "reg"),
        "--no-progress",
        "--batch-size",
        "512",
    )
    assert result.returncode == 0, result.stderr
    test = json.loads(result.stdout)["test"]
    assert {"rmse", "weighted_rmse"} <= test.keys()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "missing.csv", "--out", "x"], "missing.csv: no such file"),
        (["train", "--data", "{bad}", "--out", "x"], "line 3: expected 2 columns"),
        (["train", "--data", "{bad}", "--out", "x", "--dropout", "1.5"], "dropout"),
        (
            ["train", "--data", "{bad}", "--out", "x", "--binning", "log", "--num-bins", "8"],
            "--num-bins sets quantile bins",
        ),
        (["synth", "--rows", "0", "--out", "x.csv"], "--rows must be a positive number"),
        (
            ["train", "--data", "{bad}", "--out", "x", "--time-column", "site", "--val-from", "a"],
            "give both --val-from and --test-from, or neither",
        ),
        (
            ["train", "--data", "{bad}", "--out", "x", "--val-from", "a", "--test-from", "b"],
            "--val-from and --test-from need --time-column",
        ),
        (
            ["train", "--data", "{bad}", "--out", "x", "--config", "{config}"],
            "config: model.name is 'nfm' but --model is 'nffm'; pass --model nfm",
        ),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,site\n0,a\n1,b,c\n")
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: nfm, embed_dim: 8}\n")
    result = cli(*[a.replace("{bad}", str(bad)).replace("{config}", str(config)) for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_crash_in_native_code_says_where_the_process_was(tmp_path: Path) -> None:
    """A rank that dies of a signal (in torch's or onnxruntime's C++) prints its Python
    stacks, so torchrun's "SIGSEGV received" is not the only trace left."""
    out = tmp_path / "big.csv"
    job = subprocess.Popen(
        [sys.executable, "-m", "training", "synth", "--rows", "20000000", "--out", str(out)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not out.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the file appears once the command is running
    job.send_signal(signal.SIGSEGV)
    _, stderr = job.communicate(timeout=60)
    out.unlink(missing_ok=True)
    assert job.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in stderr
    assert "training/synth.py" in stderr


def _not_json(constant: str) -> object:
    raise AssertionError(f"{constant} is not JSON")
