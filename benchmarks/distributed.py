"""Distributed training on this machine: docs/DISTRIBUTED.md from one command (``make
bench-dist``).

On a Criteo-shaped synthetic file (generated, then deleted) the same NFFM job runs as one
process and as a 2-process torchrun job (gloo), on one shard cache prepared once:

* samples/s of the training loop, wall time, peak RSS of the process tree (sampled from
  outside), held-out AUC of both (the goal: within 0.005);
* the communication cost of one step, so multi-node scaling can be predicted: under
  torchrun each rank times the same DDP steps with the gradient all-reduce on and off
  (``DistributedDataParallel.no_sync``), and counts the bytes its gradients put on the wire.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.training import MAX_VOCAB, generate, measure, train_command
from support.reports import machine, markdown_section, run_and_report
from support.servers import ROOT

logger = logging.getLogger("bench.distributed")
DOCS = ROOT / "docs"
ROWS = 1_000_000
EPOCHS = 2
EMBED_DIM = 4
PROBE_STEPS = 60
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def probe(data: Path, cache: Path, rows: int) -> int:
    """One rank of the communication probe (run under torchrun): DDP steps with and
    without the gradient all-reduce on the same batches; rank 0 prints JSON."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.config import build_config
    from training.data import open_source
    from training.dataset import prepare
    from training.optim import SparseOptimizer
    from training.train import batch_loss, new_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    config = build_config(
        "nffm", rows, flags={"embed_dim": EMBED_DIM, "max_vocab": MAX_VOCAB, "epochs": 1}
    )
    prepared = prepare(open_source(data), config, cache)
    model = new_model(prepared, config)
    ddp = DistributedDataParallel(model)
    optimizer = SparseOptimizer(
        model, prepared.spec.field_dims, config.learning_rate, config.l2, config.optimizer
    )
    per_rank = config.batch_size // world
    rng = np.random.default_rng(rank)
    batches = [
        (torch.from_numpy(b.indices.astype(np.int64)), torch.from_numpy(b.labels))
        for _, b in zip(range(PROBE_STEPS), prepared.train.shuffled(per_rank, rng), strict=False)
    ]

    def step(indices: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad()
        batch_loss(ddp(indices), labels, None, "binary").backward()

    def timed(sync: bool) -> float:
        dist.barrier()
        started = time.perf_counter()
        for indices, labels in batches:
            if sync:
                step(indices, labels)
            else:
                with ddp.no_sync():
                    step(indices, labels)
        return (time.perf_counter() - started) / len(batches)

    timed(True)  # warm-up: page in the tables, grow the heap
    with_sync, without = timed(True), timed(False)
    step(*batches[0])  # one more local backward, to count what a rank sends
    sent = 0
    for parameter in model.parameters():
        grad = parameter.grad
        if grad is None:
            continue
        if grad.is_sparse:  # gloo coalesces, then all-gathers indices and values
            grad = grad.coalesce()
            sent += grad.indices().numel() * 8 + grad.values().numel() * 4
        else:
            sent += grad.numel() * grad.element_size()
    result = {"rank": rank, "sync_ms": with_sync * 1e3, "no_sync_ms": without * 1e3, "bytes": sent}
    results: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(result, results, dst=0)
    if rank == 0:
        print(json.dumps({"ranks": results, "batch_per_rank": per_rank}))
    dist.destroy_process_group()
    return 0


def run(workdir: Path, rows: int) -> dict[str, Any]:
    data, cache = workdir / "criteo.tsv", workdir / "cache"
    results: dict[str, Any] = {"rows": rows, "synth": asdict(generate(rows, data))}
    job = train_command(data, cache, workdir / "models", "nffm", embed_dim=EMBED_DIM)
    job[job.index("--epochs") + 1] = str(EPOCHS)
    module_args = job[job.index("-m") + 1 :]  # training train ...
    out_at = module_args.index("--out")
    prepare = [sys.executable, "-m", "training", "prepare", *module_args[2:out_at]]
    prepare += module_args[out_at + 2 :]
    results["prepare"] = asdict(measure("prepare (once, shared by both runs)", prepare))
    results["one"] = asdict(measure("1 process", job))
    two = [*TORCHRUN, "2", "-m", *module_args]
    results["two"] = asdict(measure("2 processes (torchrun, gloo)", two))
    results["probe"] = asdict(
        measure(
            "communication probe",
            [*TORCHRUN, "2", "-m", "benchmarks.distributed", "--probe", "--rows", str(rows),
             "--data", str(data), "--cache-dir", str(cache)],
        )
    )  # fmt: skip
    data.unlink()
    return results


def report(results: dict[str, Any], started: str) -> str:
    one, two = results["one"], results["two"]
    rows = []
    for label, run_ in (("1 process", one), ("2 processes (torchrun, gloo)", two)):
        out = run_["output"]
        rows.append(
            [
                label,
                f"{out.get('samples_per_s', 0):,}",
                f"{out.get('train_seconds', 0):.0f}",
                f"{run_['seconds']:.0f}",
                f"{run_['peak_rss_mb']:,.0f}",
                f"{out.get('test', {}).get('auc', float('nan')):.4f}",
                run_["note"],
            ]
        )
    auc_one = one["output"].get("test", {}).get("auc", float("nan"))
    auc_two = two["output"].get("test", {}).get("auc", float("nan"))
    speed = markdown_section(
        f"NFFM k={EMBED_DIM}, {EPOCHS} epochs, 1 vs 2 processes",
        f"`python -m training train --model nffm --embed-dim {EMBED_DIM} --epochs {EPOCHS} "
        f"--max-vocab {MAX_VOCAB}` on "
        f"{results['rows']:,} Criteo-shaped rows, alone and as `torchrun --standalone "
        "--nproc_per_node 2 -m training train ...` (same data, seed, epochs and global batch "
        "1024: 512 rows a rank a step). Shards prepared once beforehand "
        f"({results['prepare']['seconds']:.0f} s). samples/s = training rows seen / training "
        "loop seconds, over all ranks; peak RSS is the whole process tree's. "
        f"Held-out AUC difference: **{abs(auc_one - auc_two):.4f}** (goal < 0.005).",
        ["run", "samples/s", "train s", "wall s", "peak RSS MB", "test AUC", "note"],
        rows,
    )
    probe_out = results["probe"]["output"]
    ranks = probe_out.get("ranks", [])
    probe_rows = [
        [
            str(r["rank"]),
            f"{r['sync_ms']:.1f}",
            f"{r['no_sync_ms']:.1f}",
            f"{r['sync_ms'] - r['no_sync_ms']:.1f}",
            f"{r['bytes'] / 2**20:.1f}",
        ]
        for r in ranks
    ]
    communication = markdown_section(
        "Communication per step",
        f"Each rank of a 2-process job runs the same {PROBE_STEPS} forward/backward passes "
        f"({probe_out.get('batch_per_rank', '?')} rows a rank) with DDP's gradient all-reduce "
        "and inside `no_sync()` (no all-reduce); the difference is what one step spends "
        "communicating. MB sent: the rank's gradients as gloo sends them (the tables' sparse "
        "gradients coalesced, indices and values; the dense layers whole). Across machines, "
        "a step costs about the local compute plus MB sent / link bandwidth per peer "
        "(gloo's sparse all-reduce all-gathers), which is how to predict multi-node scaling.",
        ["rank", "ms/step with all-reduce", "ms/step without", "communication ms", "MB sent"],
        probe_rows,
    )
    cores = os.cpu_count() or 1
    speeds = [run_["output"].get("samples_per_s", 0) for run_ in (one, two)]
    ratio = speeds[1] / speeds[0] if speeds[0] else float("nan")
    why = f"2 processes trained at {ratio:.2f}x the samples/s of one."
    if ratio < 1.8:
        why += (
            f" Why not 2x: this machine has {cores} cores, and one process already keeps "
            "them busy (torch's intra-op threads run the MLP's GEMMs and the gathers on "
            f"{cores} threads); torchrun gives each rank one thread, so two ranks split the "
            "same cores and add the all-reduce above. Scaling out pays when each rank has "
            "cores (or a GPU) of its own, as on the PyTorchJob's nodes."
        )
    return "\n".join(
        [
            "# Distributed training",
            "",
            f"Generated by `make bench-dist` (`python -m benchmarks.distributed`) on {started}; "
            f"{machine()}. Criteo-shaped synthetic data, generated for the run and deleted "
            "after it.",
            "",
            speed,
            communication,
            why,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS / "DISTRIBUTED.md")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe(args.data, args.cache_dir, args.rows)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_and_report(
        "ctrserve-dist-bench-",
        lambda scratch: run(scratch, args.rows),
        report,
        args.out,
        DOCS / "distributed.json",
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
