"""Training at scale: docs/TRAINING.md from one command (``make bench-train``).

Criteo-shaped synthetic files (13 integer + 26 categorical fields, cardinalities up to 10^6)
of 1M, 3M and 10M rows are generated into a temporary directory, trained on, and deleted.
Every run is a separate process -- the real CLI, as a user runs it -- whose peak resident
memory (the process tree's, sampled from outside with psutil) and wall time are measured:

* end to end: ``python -m training train`` on a fresh cache (read, spec, encode, one epoch
  of NFFM k=4, validation, test, ONNX export): peak RSS and rows/s;
* training loop: samples/s of one epoch for NFFM k=4 and k=16, FFM and DeepFM on the 1M
  file (shards from the cache, so the loop is what is timed), next to DeepCTR-Torch's ONN
  and DeepFM with the same settings on the same encoded rows, in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from support.reports import machine, markdown_section, run_and_report
from support.servers import ROOT

logger = logging.getLogger("bench.training")
DOCS = ROOT / "docs"
SIZES = (1_000_000, 3_000_000, 10_000_000)
# Every model's tables are capped so memory cannot grow with the rows: the 50k most frequent
# values of each field keep a row, the rest share the unseen row (the field average).
MAX_VOCAB = 50_000
EMBED_DIM = 4
PEER_TIMEOUT_S = 1500
END_TO_END_COLUMNS = [
    "rows", "file MB", "peak RSS MB", "pass 1 / pass 2 s", "epoch s", "wall s",
    "rows/s end to end", "loop samples/s", "test AUC", "oracle AUC", "test NE",
    "mean predicted / observed", "ECE", "planned MiB", "note",
]  # fmt: skip
GOALS = {"rss_gb": 3.0, "nffm_k4_samples_s": 20_000, "end_to_end_rows_s": 10_000}


@dataclass
class Run:
    """One measured process."""

    label: str
    returncode: int
    seconds: float
    peak_rss_mb: float
    output: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def measure(label: str, command: list[str], timeout: float | None = None) -> Run:
    """Run ``command``; sample the RSS of it and its children every 0.1 s from outside."""
    os.sync()  # an earlier run's gigabytes of writes are flushed before this one, not during it
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(process.pid)
        while not done.is_set():
            try:
                family = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in family))
            except psutil.Error:
                pass
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    note = ""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        note = f"stopped after {timeout:.0f} s"
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    output: dict[str, Any] = {}
    if process.returncode == 0:
        output = json.loads(stdout[stdout.index("{") :]) if "{" in stdout else {}
    elif not note:
        note = (stderr.strip().splitlines() or ["failed"])[-1][:200]
    logger.info("%s: %.1f s, peak RSS %.0f MB %s", label, seconds, peak / 2**20, note)
    return Run(label, process.returncode, seconds, peak / 2**20, output, note)


def train_command(data: Path, cache: Path, out: Path, model: str, **flags: object) -> list[str]:
    command = [
        sys.executable, "-m", "training", "train", "--data", str(data), "--model", model,
        "--out", str(out), "--cache-dir", str(cache), "--epochs", "1", "--no-progress",
        "--max-vocab", str(MAX_VOCAB),
    ]  # fmt: skip
    for name, value in flags.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def peer_epoch(args: argparse.Namespace) -> int:
    """One epoch of DeepCTR-Torch's model on the shards ctrserve prepared (a subprocess of
    the benchmark, so its memory is measured alone); prints samples/s as JSON."""
    import torch

    from benchmarks.compare import _deepctr_inputs, _deepctr_model, _deepctr_offline
    from training.config import build_config
    from training.data import open_source
    from training.dataset import prepare

    torch.set_num_threads(2)
    config = build_config(
        args.ours, 10**6, flags={"embed_dim": EMBED_DIM, "max_vocab": MAX_VOCAB, "epochs": 1}
    )
    prepared = prepare(open_source(args.data), config, args.cache_dir)
    train = prepared.train.load()
    with _deepctr_offline():
        model = _deepctr_model(args.peer, prepared, config)
        model.compile(
            torch.optim.Adam(model.parameters(), lr=config.learning_rate), "binary_crossentropy"
        )
        inputs = _deepctr_inputs(train.indices)
        started = time.perf_counter()
        model.fit(inputs, train.labels, batch_size=config.batch_size, epochs=1, verbose=0)
        seconds = time.perf_counter() - started
    print(json.dumps({"samples_per_s": len(train) / seconds, "rows": len(train)}))
    return 0


def generate(rows: int, path: Path) -> Run:
    command = [
        sys.executable, "-m", "training", "synth", "--layout", "criteo", "--rows", str(rows),
        "--seed", "0", "--out", str(path),
    ]  # fmt: skip
    return measure(f"synth {rows:,}", command)


def run(sizes: tuple[int, ...], workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"end_to_end": [], "loop": [], "peers": []}
    first_file: Path | None = None
    for rows in sizes:
        data = workdir / f"criteo_{rows}.tsv"
        made = generate(rows, data)
        cache = workdir / f"cache_{rows}"
        run_ = measure(
            f"train nffm k={EMBED_DIM}, {rows:,} rows",
            train_command(data, cache, workdir / "models", "nffm", embed_dim=EMBED_DIM),
        )
        meta = _meta(cache)
        results["end_to_end"].append(
            {
                "rows": rows,
                "file_mb": data.stat().st_size / 2**20,
                "synth_s": made.seconds,
                "meta": meta,
                "run": asdict(run_),
            }
        )
        if first_file is None:
            first_file = data
            results["loop"] = loop_runs(data, cache, workdir)
            results["peers"] = peer_runs(data, cache)
        else:
            data.unlink()
        shutil.rmtree(cache, ignore_errors=True)
    return results


def loop_runs(data: Path, cache: Path, workdir: Path) -> list[dict[str, Any]]:
    """One epoch per model on the 1M file's cached shards: the loop's samples/s."""
    runs = []
    for label, model, flags in (
        ("NFFM k=4", "nffm", {"embed_dim": 4}),
        ("NFFM k=16", "nffm", {"embed_dim": 16}),
        ("FFM k=4", "ffm", {"embed_dim": 4}),
        ("DeepFM k=4", "deepfm", {"embed_dim": 4}),
        ("NFFM k=4, lazy Adam", "nffm", {"embed_dim": 4, "optimizer": "adam", "lr": 0.005}),
    ):
        measured = measure(label, train_command(data, cache, workdir / "models", model, **flags))
        runs.append(asdict(measured))
    return runs


def peer_runs(data: Path, cache: Path) -> list[dict[str, Any]]:
    runs = []
    for peer, ours in (("ONN", "nffm"), ("DeepFM", "deepfm")):
        command = [
            sys.executable, "-m", "benchmarks.training", "--peer", peer, "--ours", ours,
            "--data", str(data), "--cache-dir", str(cache),
        ]  # fmt: skip
        runs.append(asdict(measure(f"DeepCTR-Torch {peer} k={EMBED_DIM}", command, PEER_TIMEOUT_S)))
    return runs


def _meta(cache: Path) -> dict[str, Any]:
    found = sorted(cache.glob("*/meta.json"))
    return json.loads(found[0].read_text()) if found else {}


def report(results: dict[str, Any], started: str) -> str:
    rows = []
    for entry in results["end_to_end"]:
        run_ = entry["run"]
        out = run_["output"]
        seconds = entry["meta"].get("seconds", {})
        rows.append(
            [
                f"{entry['rows']:,}",
                f"{entry['file_mb']:,.0f}",
                f"{run_['peak_rss_mb']:,.0f}",
                f"{seconds.get('spec', 0):.0f} / {seconds.get('encode', 0):.0f}",
                f"{out.get('train_seconds', 0):.0f}",
                f"{run_['seconds']:.0f}",
                f"{entry['rows'] / run_['seconds']:,.0f}" if run_["returncode"] == 0 else "failed",
                f"{out.get('samples_per_s', 0):,}",
                f"{out.get('test', {}).get('auc', float('nan')):.4f}",
                f"{out.get('oracle_test', {}).get('auc', float('nan')):.4f}",
                f"{out.get('test', {}).get('ne', float('nan')):.4f}",
                f"{out.get('test', {}).get('calibration', float('nan')):.3f}",
                f"{out.get('test', {}).get('ece', float('nan')):.4f}",
                f"{out.get('memory', {}).get('planned_mib', 0):,}",
                run_["note"],
            ]
        )
    end_to_end = markdown_section(
        "End to end: NFFM k=4, one epoch",
        "`python -m training train --model nffm --embed-dim 4 --epochs 1 --max-vocab "
        f"{MAX_VOCAB:,}` on a fresh shard cache: read + spec (pass 1), encode (pass 2), one "
        "epoch, validation, test, ONNX export. Peak RSS of the process, sampled from outside "
        "every 0.1 s. rows/s = rows in the file / wall time of the whole command.",
        END_TO_END_COLUMNS,
        rows,
    )
    loop_rows = []
    for run_ in results["loop"]:
        out = run_["output"]
        loop_rows.append(
            [
                run_["label"],
                "ctrserve",
                f"{out.get('samples_per_s', 0):,}",
                f"{run_['peak_rss_mb']:,.0f}",
                f"{out.get('test', {}).get('auc', float('nan')):.4f}",
                f"{out.get('parameters', 0):,}",
                run_["note"],
            ]
        )
    for run_ in results["peers"]:
        out = run_["output"]
        speed = f"{out['samples_per_s']:,.0f}" if "samples_per_s" in out else "—"
        loop_rows.append(
            [
                run_["label"],
                "DeepCTR-Torch",
                speed,
                f"{run_['peak_rss_mb']:,.0f}",
                "",
                "",
                run_["note"],
            ]
        )
    first = results["end_to_end"][0]["rows"] if results["end_to_end"] else 0
    loop = markdown_section(
        f"Training loop: samples/s on the {first:,}-row file",
        "One epoch each on the same cached shards (80% of the rows train), the size defaults "
        "(batch 1024; NFFM: Adagrad on the tables, lr 0.02; the others: lazy Adam, lr 0.005; "
        "dense layers Adam), L2 1e-4 on the embedding rows a batch touched, 2 threads. "
        "ctrserve's figure is the epoch's loop (validation excluded); DeepCTR-Torch's is its "
        "`fit` for one epoch on the same encoded rows, held in memory, with the same batch, "
        "learning rate, k, MLP and L2, and dense Adam over every table (its only optimiser "
        "path).",
        ["model", "trainer", "samples/s", "peak RSS MB", "test AUC", "parameters", "note"],
        loop_rows,
    )
    return "\n".join(
        [
            "# Training at scale",
            "",
            f"Generated by `make bench-train` (`python -m benchmarks.training`) on {started}; "
            f"{machine()}. Criteo-shaped synthetic data (`python -m training synth --layout "
            "criteo`), generated for the run and deleted after it.",
            "",
            f"Goals: peak RSS flat in the rows (10M within 20% of 1M) and <= "
            f"{GOALS['rss_gb']} GB at k=4; NFFM k=4 >= {GOALS['nffm_k4_samples_s']:,} samples/s "
            f"in the loop; >= {GOALS['end_to_end_rows_s']:,} rows/s end to end.",
            "",
            end_to_end,
            loop,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=lambda t: tuple(int(x) for x in t.split(",")), default=SIZES)
    parser.add_argument("--out", type=Path, default=DOCS / "TRAINING.md")
    parser.add_argument("--peer", choices=["ONN", "DeepFM"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ours", default="nffm", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer is not None:
        return peer_epoch(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_and_report(
        "ctrserve-train-bench-",
        lambda scratch: run(args.rows, scratch),
        report,
        args.out,
        DOCS / "training.json",
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
