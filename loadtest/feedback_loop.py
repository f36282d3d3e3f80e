"""The feedback loop on one machine, end to end (``make loop``):

```
 day 1 impressions ─► locust ─► ctrserve (prediction log 100%) ─► log/day1 ┐
                        └─► clicks (delayed, some past the window) ────────┴─► ctrserve join
 day 2, c1 and c3 shifted ─► locust ─► ctrserve ─► log/day2 ─► ctrserve drift (exit 1)
 joined day 1 ─► ctrserve train --warm-start (the served model) ─► the next model
                ─► evaluate on day 2, beside the served one
```

Every step is the command a user runs; the figures go to docs/LOOP.md and the drift chart
to docs/loop/. The work files are generated under data/loop/ and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from app.repository.store import resolve_model_dir
from support.reports import machine, relative
from support.servers import ROOT, metric_values, server

SHIFTED = ("c1", "c3")
WINDOW = "30m"


def ctrserve(*args: str, allowed: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run one ``ctrserve`` command as a user would; stop the loop if it fails."""
    sys.stdout.write(f"$ ctrserve {' '.join(args)}\n")
    sys.stdout.flush()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ctrserve"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in allowed:
        raise SystemExit(f"ctrserve {args[0]} failed ({done.returncode}):\n{done.stderr}")
    return done


def serve_day(model_dir: Path, day: str, day_file: Path, work: Path, users: int) -> dict:
    """Serve ``day_file``'s impressions through locust with the log at 100%."""
    log = work / "log" / day
    clicks = work / f"clicks-{day}.csv"
    env = {
        "CTR_MODEL_REPOSITORY": str(model_dir),
        "CTR_PREDICTION_LOG": str(log),
        "CTR_PREDICTION_LOG_SAMPLE": "1.0",
    }
    with server([sys.executable, "-m", "app"], env) as base:
        started = time.perf_counter()
        locust = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(ROOT / "loadtest/replay.py"),
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                "600s",
                "--host",
                base,
                "--only-summary",
                "--stop-timeout",
                "5",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "LOOP_DAY": day,
                "LOOP_DAY_FILE": str(day_file),
                "LOOP_CLICKS": str(clicks),
            },
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if locust.returncode != 0:
            raise SystemExit(f"locust failed ({locust.returncode}):\n{locust.stderr[-3000:]}")
        (dropped,) = metric_values(base, "ctr_prediction_log_dropped_total")
    # the server has stopped: its open file is published
    logged = pq.ParquetDataset(log).read(columns=["request_id"]).num_rows
    return {
        "rows": pq.ParquetFile(day_file).metadata.num_rows,
        "logged": logged,
        "dropped": int(dropped),
        "seconds": seconds,
        "log": log,
        "clicks": clicks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument("--rows", type=int, default=20_000, help="impressions a day")
    parser.add_argument("--seed", type=int, default=0, help="the world (the default data's: 0)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--work", type=Path, default=ROOT / "data/loop")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/LOOP.md")
    args = parser.parse_args()
    model_dir = args.model_dir.resolve()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    charts = args.out.parent / "loop"
    charts.mkdir(parents=True, exist_ok=True)
    try:
        days = {}
        for day, options in (("d1", ()), ("d2", ("--shift", ",".join(SHIFTED)))):
            day_file = work / f"{day}.parquet"
            ctrserve("synth", "--rows", str(args.rows), "--seed", str(args.seed), "--day",
                     day[1:], *options, "--out", str(day_file))  # fmt: skip
            days[day] = {**serve_day(model_dir, day, day_file, work, args.users), "file": day_file}
        joined = work / "d1-train.parquet"
        join = json.loads(
            ctrserve("join", "--log", str(days["d1"]["log"]), "--labels",
                     str(days["d1"]["clicks"]), "--out", str(joined), "--window", WINDOW).stdout
        )  # fmt: skip
        drift = {}
        for day in ("d1", "d2"):
            report = charts / f"drift-{day}.md"
            done = ctrserve("drift", "--model-dir", str(model_dir), "--data",
                            str(days[day]["log"]), "--report", str(report), "--plot",
                            str(charts / f"drift-{day}.png"), allowed=(0, 1))  # fmt: skip
            drift[day] = (done.returncode, report.read_text())
        next_model = work / "models/next"
        trained = json.loads(
            ctrserve("train", "--data", str(joined), "--warm-start", str(model_dir),
                     "--epochs", "1", "--out", str(next_model), "--no-progress").stdout
        )  # fmt: skip
        quality = {
            name: json.loads(
                ctrserve(
                    "evaluate", "--model-dir", str(directory), "--data", str(days["d2"]["file"])
                ).stdout
            )
            for name, directory in (("served", model_dir), ("next", next_model))
        }
        _report(args, model_dir, days, join, drift, trained, quality)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _report(
    args: argparse.Namespace,
    model_dir: Path,
    days: dict,
    join: dict,
    drift: dict,
    trained: dict,
    quality: dict,
) -> None:
    served = resolve_model_dir(model_dir).name
    warm = trained["warm_start"]
    lines = [
        "# The feedback loop, run on this machine",
        "",
        f"`make loop` ({relative(Path(__file__))}), {datetime.now(UTC):%Y-%m-%d}, "
        f"{machine()}. Model served: {relative(model_dir)} version {served}; "
        f"{args.rows:,} impressions a day, {args.users} locust users, prediction log at 100%.",
        "",
        "## Serving with the log on",
        "",
        "| day | impressions | records logged | dropped | seconds | clicks |",
        "|---|---|---|---|---|---|",
    ]
    for day, d in days.items():
        clicks = len(d["clicks"].read_text().splitlines()) - 1
        lines.append(
            f"| {day} | {d['rows']:,} | {d['logged']:,} | {d['dropped']} | "
            f"{d['seconds']:.1f} | {clicks:,} |"
        )
    lines += [
        "",
        f"## Label join (day 1, window {WINDOW})",
        "",
        f"{join['rows']:,} training rows, {join['labelled']:,} with a click in the window "
        f"(label share {join['label_share']:.2%}); {join['late_events']:,} clicks came after "
        f"the window (their rows are 0), {join['unmatched_events']:,} matched no logged row, "
        f"{join['duplicates']} duplicate records; {join['seconds']:.1f} s.",
        "",
        "## Drift against the served model's training data",
        "",
    ]
    for day, (code, table) in drift.items():
        shifted = f" ({' and '.join(SHIFTED)} shifted)" if day == "d2" else ""
        lines += [
            f"### {day}{shifted}: exit {code}",
            "",
            table.strip(),
            "",
            f"![drift {day}](loop/drift-{day}.png)",
            "",
        ]
    lines += [
        "## The next model: the served one, continued on the joined day 1",
        "",
        f"One warm-start epoch on {join['rows']:,} joined rows "
        f"({trained['train_seconds']:.1f} s; {warm['kept_values']:,} values kept, "
        f"{warm['new_values']:,} new; optimizer {warm['optimizer']}). "
        "Both models scored on day 2's impressions (its labels from the generator):",
        "",
        "| model | AUC | log loss |",
        "|---|---|---|",
        *(f"| {name} | {q['auc']:.4f} | {q['logloss']:.4f} |" for name, q in quality.items()),
        "",
    ]
    args.out.write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
