"""Daily retraining: warm start against training from scratch, thirty days under a vocabulary
cap, and negative down-sampling on ten million rows.

Writes docs/DAILY.md and docs/daily.json. All data is the Criteo-shaped synthetic world
(``ctrserve synth --layout criteo``), generated for the run and deleted with it. Every
training command runs as a user runs it; its wall time and peak RSS (the process tree's,
sampled from outside every 0.1 s) are measured, and models are compared on rows none of
them trained on.

1. **Two days.** Day 1 is drawn; day 2 is another day of the same world in which three
   fields drift (their popular values change and 30% of their values are new that day).
   Warm: day 1's model continues on day 2 (``--warm-start``, one epoch). Cold: a model
   trained from scratch on days 1 + 2 (early stopping, as a user would). Both are scored on
   day-2 rows held out of every training file.
2. **Thirty days** of warm starts, one a day, each day's new values competing for a capped
   vocabulary (``--max-vocab``): the peak RSS, the rows of the model and its test AUC, day by
   day.
3. **Negative down-sampling**, w = 0.1, on a file of ten million rows with ~4% clicks: the
   same training without and with ``--negative-sampling 0.1``, end to end (both passes
   over the file, the epochs, the test rows, the export), then test AUC and calibration of
   each exported graph on every row of the test split (``ctrserve evaluate --split test``,
   not timed), with the correction baked into the sampled graph; where each run's time
   went (the passes, the epochs, the rest: validation, test, export). Each run starts with
   the disk synced and the earlier run's model and shards deleted.

``--sections`` runs some of the three; the others keep their figures from daily.json, and
each section says when it was measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from benchmarks.training import measure
from support.reports import machine, markdown_section, relative, run_and_report
from support.servers import ROOT

logger = logging.getLogger(__name__)
SEED = 7
SECTIONS = ("two_days", "thirty_days", "down_sampling")
RAW = ROOT / "docs" / "daily.json"
SHIFTED = ("C3", "C10", "C12")  # fields that drift on day 2 and every later day
MODEL = ["--model", "nffm", "--embed-dim", "4"]


def _synth(out: Path, rows: int, day: int = 0, *extra: str) -> Path:
    command = [
        sys.executable, "-m", "training", "synth", "--layout", "criteo", "--rows", str(rows),
        "--seed", str(SEED), "--out", str(out),
    ]  # fmt: skip
    if day:
        command += ["--day", str(day), "--shift", ",".join(SHIFTED)]
    run = measure(f"synth {out.name}", [*command, *extra])
    if run.returncode != 0:
        raise RuntimeError(f"synth failed: {run.note}")
    return out


def _split(path: Path, train_rows: int, holdout: Path) -> None:
    """Keep the first ``train_rows`` rows in ``path``; write the rest to ``holdout``."""
    table = pq.read_table(path)
    pq.write_table(table.slice(train_rows), holdout)
    pq.write_table(table.slice(0, train_rows), path)


def _train(label: str, data: Path, out: Path, cache: Path, *flags: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "training", "train", "--data", str(data), *MODEL,
        "--out", str(out), "--cache-dir", str(cache), "--no-progress", *flags,
    ]  # fmt: skip
    run = measure(label, command)
    if run.returncode != 0:
        raise RuntimeError(f"{label} failed: {run.note}")
    return {
        "seconds": run.seconds,
        "pass_seconds": sum(run.output["pass_seconds"].values()),
        "train_seconds": run.output["train_seconds"],
        "peak_rss_mb": run.peak_rss_mb,
        "test": run.output["test"],
        "epochs_run": run.output["epochs_run"],
        "parameters": run.output["parameters"],
        "warm_start": run.output.get("warm_start"),
    }


def _evaluate(model: Path, data: Path, split: str = "all") -> dict[str, float]:
    run = measure(
        f"evaluate {model.name}",
        [sys.executable, "-m", "training", "evaluate", "--model-dir", str(model),
         "--data", str(data), "--split", split],
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"evaluate failed: {run.note}")
    return {k: run.output[k] for k in ("rows", "auc", "logloss", "ne", "calibration", "ece")}


def two_days(scratch: Path, rows: int, holdout_rows: int, cap: int) -> dict[str, Any]:
    cache = scratch / "cache"
    day1 = _synth(scratch / "days" / "day1.parquet", rows)
    day2 = _synth(scratch / "day2.parquet", rows + holdout_rows, 1)
    holdout = scratch / "day2-holdout.parquet"
    _split(day2, rows, holdout)
    capped = ["--max-vocab", str(cap)]
    first = _train("day 1", day1, scratch / "daily", cache, *capped)
    warm = _train(
        "warm day 2", day2, scratch / "daily", cache, *capped, "--epochs", "1",
        "--warm-start", str(scratch / "daily"),
    )  # fmt: skip
    (scratch / "days" / "day2.parquet").write_bytes(day2.read_bytes())
    cold = _train("cold days 1+2", scratch / "days", scratch / "cold", cache, *capped)
    return {
        "rows_per_day": rows,
        "holdout_rows": holdout_rows,
        "cap": cap,
        "day1": first,
        "warm": {**warm, "holdout": _evaluate(scratch / "daily", holdout)},
        "cold": {**cold, "holdout": _evaluate(scratch / "cold", holdout)},
    }


def thirty_days(scratch: Path, days: int, rows: int, cap: int) -> list[dict[str, Any]]:
    cache = scratch / "cache30"
    repository = scratch / "thirty"
    results = []
    for day in range(days):
        data = _synth(scratch / f"d{day}.parquet", rows, day)
        flags = ["--max-vocab", str(cap)]
        if day:
            flags += ["--epochs", "1", "--warm-start", str(repository)]
        trained = _train(f"day {day + 1}", data, repository, cache, *flags)
        data.unlink()
        results.append({"day": day + 1, **trained})
    return results


def down_sampling(scratch: Path, rows: int, weight: float, epochs: int) -> dict[str, Any]:
    data = _synth(scratch / "ten-million.parquet", rows, 0, "--bias", "-5")
    fixed = ["--epochs", str(epochs), "--patience", str(epochs)]
    results = {}
    for name, flags in (("unsampled", []), (f"w = {weight}", ["--negative-sampling", str(weight)])):
        slug = name.replace(" ", "")
        out, cache = scratch / slug, scratch / f"cache-{slug}"
        trained = _train(name, data, out, cache, *fixed, *flags)
        # every row of the test split, after the timed run: the sampled run's own test
        # metrics are weighted estimates from a tenth of the negatives
        results[name] = {**trained, "unsampled_test": _evaluate(out, data, "test")}
        # the next run starts as the first did: no earlier run's model or shards on disk or
        # in the page cache (5.4 GB of export and the shards of 10M rows)
        shutil.rmtree(out)
        shutil.rmtree(cache)
    data.unlink()
    return {"rows": rows, "weight": weight, "epochs": epochs, "runs": results}


def _measured(section: dict[str, Any]) -> str:
    return f"<sub>Measured {section['measured']}.</sub>"


def report(results: dict, _started: str) -> str:
    """docs/DAILY.md from the sections' results (each with the date it was measured)."""
    text = [
        "# Daily retraining",
        "",
        f"On {machine()} with `python -m benchmarks.daily` (`make bench-daily`; "
        "`--sections` reruns some, each says when it ran). Raw figures: "
        "[daily.json](daily.json). NFFM k = 4 throughout; Criteo-shaped synthetic data, "
        "generated for the run and deleted after it.",
        "",
    ]
    two = results["two_days"]
    warm, cold = two["warm"], two["cold"]
    rows = [
        [
            name,
            f"{run['seconds']:.0f}",
            f"{run['epochs_run']}",
            f"{run['peak_rss_mb']:,.0f}",
            f"{run['holdout']['auc']:.4f}",
            f"{run['holdout']['logloss']:.4f}",
            f"{run['holdout']['calibration']:.3f}",
        ]
        for name, run in (("warm: day 1's model, 1 epoch of day 2", warm),
                          ("cold: from scratch on days 1 + 2", cold))
    ]  # fmt: skip
    moved = warm["warm_start"]
    text.append(
        markdown_section(
            "Two days: warm start against training from scratch",
            f"{two['rows_per_day']:,} rows a day; on day 2, {', '.join(SHIFTED)} drift. Both "
            f"models are scored on {two['holdout_rows']:,} day-2 rows held out of every "
            f"training file (`ctrserve evaluate --split all`). **AUC gap (cold - warm): "
            f"{cold['holdout']['auc'] - warm['holdout']['auc']:+.4f}; warm wall time = "
            f"{warm['seconds'] / cold['seconds']:.2f} x cold.** The warm start kept "
            f"{moved['kept_values']:,} values' rows and gave {moved['new_values']:,} values "
            f"seen on day 2 rows of their own (vocabulary capped at {two['cap']:,} a field).",
            ["run", "wall s", "epochs", "peak RSS MB", "holdout AUC", "log loss", "calibration"],
            rows,
        )
    )
    text += [_measured(two), ""]
    thirty = results["thirty_days"]
    text.append(
        markdown_section(
            "Thirty days under a vocabulary cap",
            "One warm start a day from the day before, on that day's rows; the same three "
            "fields bring new values every day. `parameters` is the model's size: the "
            "vocabulary grows to the cap and stays there, and so does the memory.",
            ["day", "wall s", "peak RSS MB", "parameters", "new values", "test AUC"],
            [
                [
                    f"{d['day']}",
                    f"{d['seconds']:.0f}",
                    f"{d['peak_rss_mb']:,.0f}",
                    f"{d['parameters']:,}",
                    "" if not d["warm_start"] else f"{d['warm_start']['new_values']:,}",
                    f"{d['test']['auc']:.4f}",
                ]
                for d in thirty["days"]
            ],
        )
    )
    text += [_measured(thirty), ""]
    sampling = results["down_sampling"]
    runs = sampling["runs"]
    base = runs["unsampled"]
    text.append(
        markdown_section(
            "Negative down-sampling",
            f"{sampling['rows']:,} rows (Parquet, ~4% clicks: `--bias -5`), "
            f"{sampling['epochs']} epochs each, end to end (both passes over the file, the "
            "epochs, scoring validation and test, the export). Sampling keeps a tenth of "
            "the negatives of every split; the kept validation and test negatives weigh 10, "
            "so the run's own test metrics (`run's AUC`) estimate the unsampled ones. The "
            "sampled model's exported graph carries the correction (ln w added to its "
            "bias). After each timed run, `ctrserve evaluate --split test` scores the "
            "exported graph on every row of the test split (the same rows for both): the "
            "test AUC, AUC gap, mean predicted / observed and ECE columns. `passes`: "
            "reading, counting and encoding the file twice; `epochs`: the training steps; "
            "`rest`: validation after each epoch, the calibration, the test rows, the "
            "export and the process's start. Each run starts from the same machine: the "
            "disk synced, no earlier run's model or shards left on it.",
            ["training", "wall s", "speed-up", "passes s", "epochs s", "rest s",
             "peak RSS MB", "test rows", "test AUC", "AUC gap", "mean predicted / observed",
             "ECE", "run's AUC"],
            [
                [
                    name,
                    f"{run['seconds']:.0f}",
                    f"{base['seconds'] / run['seconds']:.1f}x",
                    f"{run['pass_seconds']:.0f}",
                    f"{run['train_seconds']:.0f}",
                    f"{run['seconds'] - run['pass_seconds'] - run['train_seconds']:.0f}",
                    f"{run['peak_rss_mb']:,.0f}",
                    f"{run['unsampled_test']['rows']:,.0f}",
                    f"{run['unsampled_test']['auc']:.4f}",
                    f"{run['unsampled_test']['auc'] - base['unsampled_test']['auc']:+.4f}",
                    f"{run['unsampled_test']['calibration']:.3f}",
                    f"{run['unsampled_test']['ece']:.4f}",
                    f"{run['test']['auc']:.4f}",
                ]
                for name, run in runs.items()
            ],
        )
    )  # fmt: skip
    text += [_measured(sampling), ""]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000, help="rows a day (two days)")
    parser.add_argument("--holdout", type=int, default=200_000)
    parser.add_argument("--cap", type=int, default=20_000, help="--max-vocab of every run")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--day-rows", type=int, default=100_000, help="rows a day (30 days)")
    parser.add_argument("--sampled-rows", type=int, default=10_000_000)
    parser.add_argument("--sampled-epochs", type=int, default=2)
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"which to run (default all): {','.join(SECTIONS)}; the others keep their "
        "figures from docs/daily.json",
    )
    args = parser.parse_args()
    chosen = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    kept = json.loads(RAW.read_text()) if RAW.is_file() else {}
    missing = [name for name in SECTIONS if name not in chosen and name not in kept]
    if missing:
        parser.error(f"no earlier figures for {missing} in {relative(RAW)}: run them too")

    def run(scratch: Path) -> dict[str, Any]:
        sections = {
            "two_days": lambda: two_days(scratch, args.rows, args.holdout, args.cap),
            "thirty_days": lambda: {
                "days": thirty_days(scratch, args.days, args.day_rows, args.cap)
            },
            "down_sampling": lambda: down_sampling(
                scratch, args.sampled_rows, 0.1, args.sampled_epochs
            ),
        }
        results = dict(kept)
        for name in chosen:
            started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            results[name] = {**sections[name](), "measured": started}
        return results

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_and_report("ctrserve-daily-", run, report, ROOT / "docs" / "DAILY.md", RAW)


if __name__ == "__main__":
    main()
