"""The offline half of the feedback loop, through the CLI: `ctrserve predict` scores a file
without labels, `ctrserve join` turns a prediction log and label events into training rows
with the right labels and counts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from app.features.encoder import FeatureEncoder
from app.features.spec import CategoricalField, FeatureSpec
from app.model.scorer import Scorer
from app.prediction_log.log import PredictionLog
from app.repository.store import resolve_model_dir
from support.training_files import training_cli as cli
from training.data import open_source

pytestmark = pytest.mark.slow  # runs the training CLI


def test_predict_scores_every_row_and_keeps_the_ids(
    model_dir: Path, synth_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    done = cli("predict", "--model-dir", str(model_dir), "--data", str(synth_csv), "--out",
               str(out), "--keep", "label")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    table = pq.read_table(out)
    rows = pacsv.read_csv(synth_csv)
    assert summary["rows"] == table.num_rows == rows.num_rows
    assert table.column_names == ["label", "score"]
    assert table.column("label").to_pylist() == [str(v) for v in rows.column("label").to_pylist()]
    evaluated = cli("evaluate", "--model-dir", str(model_dir), "--data", str(synth_csv))
    scores = table.column("score").to_numpy()
    labels = rows.column("label").to_numpy()
    # the same scores evaluate computes its metrics from: its log loss, recomputed
    log_loss = -np.mean(labels * np.log(scores) + (1 - labels) * np.log(1 - scores))
    metrics = json.loads(evaluated.stdout)
    assert metrics["logloss"] == pytest.approx(log_loss, rel=1e-4)
    assert metrics["mean_predicted"] == pytest.approx(scores.mean(), rel=1e-5)


def test_predict_names_what_is_wrong(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("c0,n0\nc0_1,1.5\n")
    done = cli("predict", "--model-dir", str(model_dir), "--data", str(data), "--out",
               str(tmp_path / "out.parquet"))  # fmt: skip
    assert done.returncode == 2
    assert "columns not in the file" in done.stderr
    assert "c1" in done.stderr
    done = cli("predict", "--model-dir", str(model_dir), "--data", str(data), "--out",
               str(tmp_path / "out.json"))  # fmt: skip
    assert done.returncode == 2
    assert not (tmp_path / "out.json").exists()


def test_join_labels_rows_by_request_row_and_window(model_dir: Path, tmp_path: Path) -> None:
    scorer = Scorer.load(resolve_model_dir(model_dir))
    log = PredictionLog(str(tmp_path / "log"))
    served = time.time()

    def request(request_id: str, values: list[str]) -> None:
        from app.request import CURRENT_REQUEST, RequestContext

        token = CURRENT_REQUEST.set(RequestContext(request_id))
        scores = np.full(len(values), 0.5, dtype=np.float32)
        log.add("ctr", "v1", scores, np.zeros(len(values), bool), scorer.encoder,
                lambda encoder: {"c0": values})  # fmt: skip
        CURRENT_REQUEST.reset(token)

    request("clicked", ["c0_1"])
    request("late", ["c0_2"])
    request("batch", ["c0_3", "c0_4"])
    request("ignored", ["c0_5"])
    request("clicked", ["c0_1"])  # the client retried with the same id
    log.close()
    events = pa.table(
        {
            "request_id": ["clicked", "clicked", "late", "batch", "nobody"],
            "row": [0, 0, 0, 1, 0],
            "time": [served + 10, served + 20, served + 7200, served + 60, served + 5],
        }
    )
    pacsv.write_csv(events, tmp_path / "clicks.csv")
    out = tmp_path / "train.parquet"
    done = cli("join", "--log", str(tmp_path / "log"), "--labels", str(tmp_path / "clicks.csv"),
               "--out", str(out), "--window", "1h")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["rows"], summary["labelled"], summary["duplicates"]) == (5, 2, 1)
    assert (summary["late_events"], summary["unmatched_events"]) == (1, 1)
    assert summary["label_share"] == pytest.approx(0.4)
    table = pq.read_table(out)
    assert table.column_names == ["label", *scorer.encoder.categorical_names,
                                  *scorer.encoder.numeric_names]  # fmt: skip
    labelled = dict(
        zip(table.column("c0").to_pylist(), table.column("label").to_pylist(), strict=True)
    )
    assert labelled == {"c0_1": 1, "c0_2": 0, "c0_3": 0, "c0_4": 1, "c0_5": 0}
    # the trainer reads it as it is: the label found, every field in the model's role
    source = open_source(out)
    assert source.label == "label"
    assert source.categorical == scorer.encoder.categorical_names
    assert source.numeric == scorer.encoder.numeric_names


def test_join_and_drift_read_one_model_of_a_log_of_two(
    model_dir: Path, cvr_model_dir: Path, tmp_path: Path
) -> None:
    """A click and a conversion model of other fields asked for every impression under one
    request id: each model's records in a folder of their own, joined and compared alone."""
    from app.request import CURRENT_REQUEST, RequestContext

    models = {"ctr": Scorer.load(resolve_model_dir(model_dir))}
    models["cvr"] = Scorer.load(resolve_model_dir(cvr_model_dir))
    log = PredictionLog(str(tmp_path / "log"))
    served = time.time()
    for i in range(40):
        for name, scorer in models.items():
            token = CURRENT_REQUEST.set(RequestContext(f"imp{i}"))
            log.add(name, "v1", np.full(1, 0.5, np.float32), np.zeros(1, bool), scorer.encoder,
                    {"c0": f"c0_{i}", "n0": 1.0})  # fmt: skip
            CURRENT_REQUEST.reset(token)
    log.close()
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["ctr", "cvr"]
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(f"request_id,time\nimp3,{served + 10}\n")
    out = tmp_path / "cvr.parquet"
    join = ["join", "--labels", str(clicks), "--out", str(out), "--window", "1h"]
    both = cli(*join, "--log", str(tmp_path / "log"))
    assert both.returncode == 2
    assert "a prediction log of models ctr, cvr, one folder each: name one" in both.stderr
    done = cli(*join, "--log", str(tmp_path / "log" / "cvr"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["rows"], summary["labelled"], summary["duplicates"]) == (40, 1, 0)
    encoder = models["cvr"].encoder
    assert pq.read_table(out).column_names == [
        "label",
        *encoder.categorical_names,
        *encoder.numeric_names,
    ]
    drift = ["drift", "--model-dir", str(cvr_model_dir), "--data"]
    both = cli(*drift, str(tmp_path / "log"))
    assert both.returncode == 2
    assert "one folder each: name one" in both.stderr
    alone = cli(*drift, str(tmp_path / "log" / "cvr"))
    assert "Drift of 40 rows" in alone.stdout, alone.stderr
    # A file left at the top by the log's older layout is never skipped without a word.
    (older,) = (tmp_path / "log" / "ctr").glob("*.parquet")
    older.rename(tmp_path / "log" / older.name)
    mixed = cli(*join, "--log", str(tmp_path / "log"))
    assert mixed.returncode == 2
    assert "files beside the prediction log's model folders (cvr)" in mixed.stderr


def test_join_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    labels = tmp_path / "clicks.csv"
    labels.write_text("request_id,time\nr1,5\n")
    done = cli("join", "--log", str(tmp_path / "log"), "--labels", str(labels), "--out",
               str(tmp_path / "t.parquet"))  # fmt: skip
    assert done.returncode == 2
    assert "no prediction log files" in done.stderr
    done = cli("join", "--log", str(tmp_path / "log"), "--labels", str(labels), "--out",
               str(tmp_path / "t.parquet"), "--window", "soon")  # fmt: skip
    assert done.returncode == 2
    assert "expected a duration" in done.stderr
    done = cli("join", "--log", str(labels), "--labels", str(labels), "--out",
               str(tmp_path / "t.parquet"))  # fmt: skip
    assert done.returncode == 2
    assert "clicks.csv: not a prediction log file" in done.stderr


def _day(tmp_path: Path, name: str, *options: str) -> Path:
    path = tmp_path / f"{name}.csv"
    done = cli("synth", "--rows", "8000", "--seed", "3", "--out", str(path), *options)
    assert done.returncode == 0, done.stderr
    return path


def test_drift_flags_the_shifted_fields_and_only_them(model_dir: Path, tmp_path: Path) -> None:
    same = cli("drift", "--model-dir", str(model_dir), "--data",
               str(_day(tmp_path, "day1", "--day", "1")))  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert "**yes**" not in same.stdout
    shifted = _day(tmp_path, "day2", "--day", "2", "--shift", "c1,c3")
    chart = tmp_path / "drift.png"
    moved = cli("drift", "--model-dir", str(model_dir), "--data", str(shifted),
                "--plot", str(chart))  # fmt: skip
    assert moved.returncode == 1, moved.stderr
    flagged = {
        line.split("|")[1].strip() for line in moved.stdout.splitlines() if "**yes**" in line
    }
    assert flagged - {"(score)"} == {"c1", "c3"}  # the scores may move with them
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_drift_reads_a_prediction_log(model_dir: Path, tmp_path: Path) -> None:
    """The served rows of a shifted day, as the service logged them, drift as the file did."""
    scorer = Scorer.load(resolve_model_dir(model_dir))
    rows = pacsv.read_csv(_day(tmp_path, "day2", "--day", "2", "--shift", "c1,c3"))
    log = PredictionLog(str(tmp_path / "log"))
    for start in range(0, rows.num_rows, 1000):
        part = rows.slice(start, 1000)
        values = {name: part.column(name).to_pylist() for name in scorer.encoder.names}
        log.add("ctr", "v1", np.zeros(part.num_rows, np.float32),
                np.zeros(part.num_rows, bool), scorer.encoder, lambda e, v=values: v)  # fmt: skip
    # A canary that adds a field: its records fill files of their own in the model's folder.
    added = CategoricalField(name="c9", min_count=1, vocabulary=("c9_1",))
    wider = FeatureEncoder(FeatureSpec(fields=(*scorer.encoder.spec.fields, added)))
    canary = {name: rows.column(name).to_pylist()[:500] for name in scorer.encoder.names}
    log.add("ctr", "v2", np.zeros(500, np.float32), np.zeros(500, bool), wider,
            lambda e: {**canary, "c9": ["c9_1"] * 500})  # fmt: skip
    log.close()
    assert len(list((tmp_path / "log" / "ctr").glob("*.parquet"))) == 2
    moved = cli("drift", "--model-dir", str(model_dir), "--data", str(tmp_path / "log"))
    assert moved.returncode == 1, moved.stderr
    assert "Drift of 8,500 rows" in moved.stdout


def test_drift_names_what_is_wrong(model_dir: Path, tmp_path: Path) -> None:
    done = cli("drift", "--model-dir", str(model_dir), "--data", str(tmp_path / "none.csv"))
    assert done.returncode == 2
    assert "no such file" in done.stderr
    done = cli("synth", "--rows", "10", "--out", str(tmp_path / "x.csv"), "--shift", "c99")
    assert done.returncode == 2
    assert "--shift names no categorical field" in done.stderr
