"""The feedback loop's costs, measured side by side -> docs/FEEDBACK.md (``make bench-loop``).

1. The prediction log at 100%: p99 at fixed request rates (k6, open loop) and CPU per
   request, and the closed-loop maximum (wrk), with the log off and on, the two taking
   turns over several rounds so that the machine's drift falls on both.
2. ``ctrserve join`` of a day's log (1M records written by the service's own log writer)
   with its clicks: peak RSS of the process tree, measured from outside, and whether the
   rows and the label share are the ones the generator's clicks imply.
3. ``ctrserve predict`` on Criteo-shaped files of growing size: peak RSS (flat in rows) and
   rows/s, against a raw onnxruntime loop over the same encoded rows.

Generated files live in a temporary directory and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from app.model.scorer import Scorer
from app.prediction_log.log import PredictionLog
from app.repository.store import resolve_model_dir
from app.request import CURRENT_REQUEST, RequestContext
from benchmarks.open_loop import MAX_VUS, _tree_cpu_s
from support.k6 import run, write_slices
from support.payloads import load_spec, unique_rows
from support.reports import machine, markdown_section, relative, run_and_report
from support.servers import ROOT, server
from support.wrk import write_bodies, wrk
from training import synth
from training.batch_predict import SCORE_ROWS, model_source
from training.data import BadRowLog
from training.dataset import encode_batch

logger = logging.getLogger("benchmarks.feedback")
CTRSERVE = str(Path(sys.executable).parent / "ctrserve")
WINDOW_S = 1800.0


def peak_rss_mb(command: list[str]) -> tuple[float, float, str]:
    """Run ``command``; its process tree's peak RSS (MB, polled every 20 ms from outside),
    its seconds and its stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak = 0
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.02)
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode})")
    return peak / 2**20, time.perf_counter() - started, "".join(output)


# -- 1. the prediction log's cost --------------------------------------------------------
def _columns(values: dict[str, list[Any]], encoder: object) -> dict[str, list[Any]]:
    """A batch's values for the log, given as they were decoded."""
    return values


def log_cost(
    scratch: Path, model_dir: Path, shares: list[float], rounds: int, seconds: int
) -> dict:
    """Log off against on, taking turns; the open-loop rates are ``shares`` of the
    closed-loop maximum with the log off, measured first on this machine."""
    spec = load_spec(model_dir)
    slices = write_slices(
        [{"features": r} for r in unique_rows(spec, MAX_VUS * 400, seed=21)],
        MAX_VUS,
        scratch / "slices",
    )
    bodies = write_bodies([{"features": r} for r in unique_rows(spec, 100_000, seed=22)])
    env = {"CTR_MODEL_REPOSITORY": str(model_dir), "CTR_CACHE_MAXSIZE": "100000"}
    with server([sys.executable, "-m", "app"], env) as base:
        wrk(f"{base}/predict", bodies, 3, 16)  # warm-up
        maximum = wrk(f"{base}/predict", bodies, seconds, 16).req_per_s
    rates = [int(round(maximum * share, -2)) for share in shares]
    logger.info("closed-loop maximum %.0f req/s: rates %s", maximum, rates)
    runs: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for logged in (False, True) if round_ % 2 == 0 else (True, False):
            log = {"CTR_PREDICTION_LOG": str(scratch / f"log-{round_}")} if logged else {}
            with server([sys.executable, "-m", "app"], {**env, **log}) as base:
                cpu_s = _tree_cpu_s(base)
                run(f"{base}/predict", slices, rates[0], 2, MAX_VUS)  # warm-up
                for rate in rates:
                    before = cpu_s()
                    start = (round_ * len(rates) + rates.index(rate)) * 7919
                    result = run(f"{base}/predict", slices, rate, seconds, MAX_VUS, start)
                    cpu_us = (cpu_s() - before) / max(result.sent, 1) * 1e6
                    runs.append({"log": logged, "round": round_, "rate": rate,
                                 "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                                 "cpu_us": cpu_us, "failed": result.failed,
                                 "dropped": result.dropped})  # fmt: skip
                    logger.info("log %s, %d/s: p99 %.2f ms, %.0f µs CPU a request",
                                logged, rate, result.p99_ms, cpu_us)  # fmt: skip
                closed = wrk(f"{base}/predict", bodies, seconds, 16)
                runs.append({"log": logged, "round": round_, "rate": 0,
                             "req_per_s": closed.req_per_s})  # fmt: skip
    return {"maximum": maximum, "shares": shares, "rates": rates, "rounds": rounds,
            "seconds": seconds, "runs": runs}  # fmt: skip


# -- 2. the label join ---------------------------------------------------------------------
def join_cost(scratch: Path, model_dir: Path, records: int) -> dict:
    """A day's log written by the service's own writer, its clicks, then ``ctrserve join``."""
    scorer = Scorer.load(resolve_model_dir(model_dir))
    log_dir = scratch / "join-log"
    log = PredictionLog(str(log_dir), max_queued_rows=records)
    rng = np.random.default_rng(5)
    clicks_ids, clicks_times, expected = [], [], 0
    written = time.perf_counter()
    for chunk, start in enumerate(range(0, records, 1000)):
        frame = synth.generate(min(1000, records - start), seed=0, chunk=chunk + 1)
        values = {name: frame[name].tolist() for name in scorer.encoder.names}
        request_id = f"r{chunk}"
        token = CURRENT_REQUEST.set(RequestContext(request_id))
        served = time.time()  # the record's served_at is taken a few µs after this
        log.add("ctr", "v1", frame["p_true"].to_numpy(np.float32),
                np.zeros(len(frame), bool), scorer.encoder, partial(_columns, values))  # fmt: skip
        CURRENT_REQUEST.reset(token)
        rows = np.flatnonzero(frame["label"].to_numpy() == 1)
        # no click in the first millisecond: its record may be stamped after it
        delays = 0.001 + rng.exponential(600.0, len(rows))
        expected += int((delays <= WINDOW_S).sum())
        clicks_ids += [request_id] * len(rows)
        clicks_times.append(np.column_stack([rows, served + delays]))
    log.close()
    write_s = time.perf_counter() - written
    times = np.concatenate(clicks_times)
    clicks = scratch / "clicks.parquet"
    table = pa.table({"request_id": clicks_ids, "row": times[:, 0].astype(np.int32),
                      "time": times[:, 1]})  # fmt: skip
    pq.write_table(table, clicks)
    out = scratch / "joined.parquet"
    command = [CTRSERVE, "join", "--log", str(log_dir), "--labels", str(clicks),
               "--out", str(out), "--window", "30m"]  # fmt: skip
    rss, seconds, stdout = peak_rss_mb(command)
    summary = json.loads(stdout)
    return {
        "records": records,
        "write_s": write_s,
        "log_mb": sum(p.stat().st_size for p in log_dir.rglob("*.parquet")) / 2**20,
        "events": len(table),
        "expected_labelled": expected,
        "peak_rss_mb": rss,
        "seconds": seconds,
        **{k: summary[k] for k in ("rows", "labelled", "late_events", "label_share")},
    }


# -- 3. batch scoring ----------------------------------------------------------------------
def predict_cost(scratch: Path, model_dir: Path, sizes: list[int]) -> dict:
    runs = []
    for rows in sizes:
        data = scratch / f"criteo-{rows}.tsv"
        synth.write(data, rows, seed=7, layout="criteo")
        out = scratch / "scores.parquet"
        rss, seconds, stdout = peak_rss_mb([CTRSERVE, "predict", "--model-dir", str(model_dir),
                                            "--data", str(data),
                                            "--out", str(out)])  # fmt: skip
        summary = json.loads(stdout)
        runs.append({"rows": rows, "peak_rss_mb": rss, "seconds": seconds,
                     "rows_per_s": summary["rows_per_s"],
                     "file_mb": data.stat().st_size / 2**20})  # fmt: skip
        logger.info("predict %d rows: %.0f MB peak, %.0f rows/s", rows, rss,
                    summary["rows_per_s"])  # fmt: skip
        if rows == sizes[0]:
            runs[-1]["raw_ort_rows_per_s"] = _raw_ort(model_dir, data)
        data.unlink()
        out.unlink()
    return {"runs": runs}


def _raw_ort(model_dir: Path, data: Path) -> float:
    """onnxruntime alone over the file's rows, encoded beforehand, SCORE_ROWS a call."""
    scorer = Scorer.load(resolve_model_dir(model_dir))
    source = model_source(scorer, data)
    encoded = [encode_batch(scorer.encoder, b) for b in source.batches(BadRowLog())]
    started = time.perf_counter()
    rows = 0
    for indices in encoded:
        for start in range(0, len(indices), SCORE_ROWS):
            rows += len(scorer.score_indices(indices[start : start + SCORE_ROWS]))
    return rows / (time.perf_counter() - started)


# -- the report ----------------------------------------------------------------------------
def report(results: dict, started: str) -> str:
    cost, join, predict = results["log"], results["join"], results["predict"]
    sections = [
        "# The feedback loop's costs",
        "",
        f"`make bench-loop` ({relative(Path(__file__))}), {started}, {machine()}. Default "
        f"model ({results['model']}) for serving and the join; {results['production']} "
        "(Criteo-shaped, 39 fields) for batch scoring.",
        "",
    ]
    table = []
    verdict = []
    for rate in [*cost["rates"], 0]:
        mine = [r for r in cost["runs"] if r["rate"] == rate]
        off = [r for r in mine if not r["log"]]
        on = [r for r in mine if r["log"]]
        if rate:
            p99 = [statistics.median(r["p99_ms"] for r in side) for side in (off, on)]
            cpu = [statistics.median(r["cpu_us"] for r in side) for side in (off, on)]
            failed = " / ".join(str(sum(r["failed"] for r in side)) for side in (off, on))
            unsent = " / ".join(str(sum(r["dropped"] for r in side)) for side in (off, on))
            table.append([f"{rate:,}/s", f"{p99[0]:.2f}", f"{p99[1]:.2f}",
                          f"{p99[1] / p99[0]:.2f}x", f"{cpu[0]:.0f}", f"{cpu[1]:.0f}",
                          f"{cpu[1] / cpu[0]:.2f}x", failed, unsent])  # fmt: skip
            verdict.append((rate, p99[1] / p99[0], cpu[1] / cpu[0]))
        else:
            rps = [statistics.median(r["req_per_s"] for r in side) for side in (off, on)]
            table.append(["closed loop (wrk)", f"{rps[0]:,.0f} req/s", f"{rps[1]:,.0f} req/s",
                          f"{rps[1] / rps[0]:.2f}x", "", "", "", "", ""])  # fmt: skip
    sections.append(
        markdown_section(
            "The prediction log at 100%: off against on",
            f"Distinct single rows to /predict, one worker. Open loop: k6 at a fixed rate "
            f"for {cost['seconds']} s, the rates "
            + " and ".join(f"{share:.0%}" for share in cost["shares"])
            + f" of the closed-loop maximum with the log off ({cost['maximum']:,.0f} req/s, "
            f"measured first); closed loop: wrk, 16 connections. {cost['rounds']} rounds, off "
            "and on taking turns (off first, then on first); medians over the rounds (every "
            "run is in docs/feedback.json). CPU: the CPU seconds of the server's process tree "
            "(the worker and its log writer) over the run ÷ requests. Failed: error answers, "
            "all rounds; not sent in time: k6 iterations it dropped because every one of its "
            f"{MAX_VUS} VUs was still waiting for an answer (the client side of a slow tail).",
            [
                "load",
                "p99 ms, off",
                "p99 ms, on",
                "on ÷ off",
                "CPU µs, off",
                "CPU µs, on",
                "on ÷ off",
                "failed, off / on",
                "not sent in time, off / on",
            ],
            table,
        )
    )
    sections.append(
        markdown_section(
            f"Joining a day's log: {join['records']:,} records",
            f"The log written by the service's own writer ({join['write_s']:.1f} s, "
            f"{join['records'] / join['write_s']:,.0f} records/s gathered, sent and written by "
            "its writer process; "
            f"{join['log_mb']:.0f} MB of Parquet), {join['events']:,} clicks with exponential "
            "delays (mean 10 min), window 30 min. Peak RSS of `ctrserve join` from outside "
            "(psutil, every 20 ms). Expected: the rows the generator clicked inside the window.",
            [
                "rows",
                "labelled",
                "expected",
                "late clicks",
                "label share",
                "seconds",
                "peak RSS MB",
            ],
            [
                [
                    f"{join['rows']:,}",
                    f"{join['labelled']:,}",
                    f"{join['expected_labelled']:,}",
                    f"{join['late_events']:,}",
                    f"{join['label_share']:.2%}",
                    f"{join['seconds']:.1f}",
                    f"{join['peak_rss_mb']:,.0f}",
                ]
            ],
        )
    )
    runs = predict["runs"]
    sections.append(
        markdown_section(
            "Batch scoring: `ctrserve predict` on Criteo-shaped files",
            "TSV files written by `ctrserve synth --layout criteo` (39 fields), scored to "
            f"Parquet by {results['production']}. Raw ORT: onnxruntime alone over the first "
            "file's rows, encoded beforehand (the ceiling: reading, parsing, encoding and "
            "writing are the rest).",
            ["rows", "file MB", "seconds", "rows/s", "raw ORT rows/s", "peak RSS MB"],
            [
                [
                    f"{r['rows']:,}",
                    f"{r['file_mb']:,.0f}",
                    f"{r['seconds']:.1f}",
                    f"{r['rows_per_s']:,.0f}",
                    f"{r['raw_ort_rows_per_s']:,.0f}" if "raw_ort_rows_per_s" in r else "",
                    f"{r['peak_rss_mb']:,.0f}",
                ]
                for r in runs
            ],
        )
    )
    worst_p99 = max(v[1] for v in verdict)
    worst_cpu = max(v[2] for v in verdict)
    rps_ratio = float(table[-1][3].rstrip("x"))
    sections += [
        "## Against the goals",
        "",
        f"- Log on ÷ off, p99 at a fixed rate (worst rate): {worst_p99:.2f}x (goal ≤ 1.05). "
        "Single runs' p99 ranged "
        + "; ".join(
            f"{min(r['p99_ms'] for r in side):.1f} to {max(r['p99_ms'] for r in side):.1f} ms "
            f"{'on' if logged else 'off'} at {rate:,}/s"
            for rate in cost["rates"]
            for logged in (False, True)
            for side in [[r for r in cost["runs"] if r["rate"] == rate and r["log"] == logged]]
        )
        + ": the medians over the rounds are the figure.",
        f"- Log on ÷ off, CPU per request (worst rate): {worst_cpu:.2f}x.",
        f"- Log on ÷ off, closed-loop req/s: {rps_ratio:.2f}x (goal ≥ 0.95).",
        f"- Join of {join['records']:,} records: peak RSS {join['peak_rss_mb']:,.0f} MB "
        "(goal ≤ 1,024).",
        f"- Predict: peak RSS {runs[0]['peak_rss_mb']:,.0f} MB at {runs[0]['rows']:,} rows, "
        f"{runs[-1]['peak_rss_mb']:,.0f} MB at {runs[-1]['rows']:,}.",
        "",
    ]
    return "\n".join(sections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument(
        "--predict-model",
        type=Path,
        default=ROOT / "models/production/deepfm",
        help="the model of the batch-scoring runs (Criteo-shaped)",
    )
    parser.add_argument(
        "--shares",
        default="0.4,0.6",
        help="open-loop rates as shares of the closed-loop maximum with the log off",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--join-records", type=int, default=1_000_000)
    parser.add_argument("--predict-rows", default="1000000,3000000,10000000")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/FEEDBACK.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_dir, production = args.model_dir.resolve(), args.predict_model.resolve()

    def measure(scratch: Path) -> dict:
        return {
            "model": relative(model_dir),
            "production": relative(production),
            "log": log_cost(scratch, model_dir, [float(r) for r in args.shares.split(",")],
                            args.rounds, args.seconds),
            "join": join_cost(scratch, model_dir, args.join_records),
            "predict": predict_cost(scratch, production,
                                    [int(r) for r in args.predict_rows.split(",")]),
        }  # fmt: skip

    run_and_report(
        "ctrserve-feedback-", measure, report, args.out, args.out.with_name("feedback.json")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
