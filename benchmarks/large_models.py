"""Models past 2 GiB: one copy of the tables per replica, whole-version checks, compact tables.

Writes docs/LARGE_MODELS.md and docs/large_models.json. Three parts, each side by side in
one run:

1. **A 2+ GiB NFFM** (39 fields x 25,000 values, k = 16: 2.27 GiB of table parameters),
   made with the export API from seeded random weights (training it would take hours here),
   exported, verified and served by 1 and then 2 uvicorn workers. Every worker is driven
   until it has read every row of every table; memory is read from outside (psutil:
   RSS, PSS, USS of every process of the server). A replica's cost is the sum of PSS: pages
   shared by N processes count 1/N in each.
2. **The mechanism on a model below 2 GiB**: the same graph with its weights inside
   ``model.onnx`` (what every export under 2 GiB was before) against its weights in
   ``model.onnx.data`` (every export now), each loaded by two processes.
3. **Compact tables and int8 dense layers**: an NFFM trained on the default synthetic data
   and on Criteo-shaped data, exported with float32, float16 and int8 tables and with its
   MLP in float32 and int8: bytes, test AUC and log loss (onnxruntime), the parity the
   export measured, and scoring speed; then the float32 and int8-MLP exports served by one
   ctrserve worker each, taking turns under wrk: requests a second and CPU a request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import psutil

from benchmarks.workloads import ours, requests_for, turns
from support.payloads import load_spec
from support.reports import machine, markdown_section, run_and_report
from support.servers import ROOT, server
from support.wrk import write_bodies, wrk

logger = logging.getLogger(__name__)
GIB = 1 << 30
MIB = 1 << 20


# -- 1. the big model --------------------------------------------------------------------------
def make_big_model(out: Path, fields: int, values: int, embed_dim: int) -> dict[str, Any]:
    """Export a seeded random NFFM of ``fields`` x ``values`` through the real export path."""
    import torch

    from app.features.spec import CategoricalField, FeatureSpec
    from training.export import write_artifact
    from training.memory import plan
    from training.models import DEFAULTS, build_model

    spec = FeatureSpec(
        fields=tuple(
            CategoricalField(name=f"f{i}", vocabulary=tuple(f"v{j}" for j in range(values - 2)))
            for i in range(fields)
        )
    )
    config = DEFAULTS["nffm"].model_copy(update={"embed_dim": embed_dim, "mlp_dims": (64,)})
    torch.manual_seed(0)
    model = build_model(spec.field_dims, config)
    parameters = sum(p.numel() for p in model.parameters()) * 4
    started = time.perf_counter()
    manifest = write_artifact(model, spec, config, "binary", out, {}, {}, checkpoint=False)
    seconds = time.perf_counter() - started
    planned = plan(spec.field_dims, config, 1024, "adam")
    return {
        "parameters_gib": parameters / GIB,
        "planned_replica": {workers: planned.replica(workers) for workers in (1, 2)},
        "export_s": seconds,
        "version": manifest.version,
        "files": {name: entry.bytes for name, entry in manifest.files.items()},
    }


def verify_seconds(version_dir: Path) -> float:
    from app.repository.manifest import CHECKPOINT_FILE, ModelManifest, verify_files

    manifest = ModelManifest.load(version_dir)
    started = time.perf_counter()
    verify_files(version_dir, manifest.files, skip=[CHECKPOINT_FILE])
    return time.perf_counter() - started


def refuse_flipped_bit(version_dir: Path, scratch: Path) -> dict[str, Any]:
    """A copy of the version with one bit of its weights flipped, loaded as a worker would:
    how long the refusal takes and what it says."""
    import shutil

    from app.features.errors import SpecError
    from app.model.scorer import Scorer

    copy = Path(shutil.copytree(version_dir, scratch / "flipped"))
    with (copy / "model.onnx.data").open("r+b") as weights:
        weights.seek((copy / "model.onnx.data").stat().st_size // 2)
        byte = weights.read(1)[0]
        weights.seek(-1, os.SEEK_CUR)
        weights.write(bytes([byte ^ 0x10]))
    started = time.perf_counter()
    try:
        Scorer.load(copy)
        message = "LOADED (not refused)"
    except SpecError as exc:
        message = str(exc).replace(str(scratch), "<scratch>")
    seconds = time.perf_counter() - started
    shutil.rmtree(copy)
    return {"refused_s": seconds, "message": message}


def _sweep_bodies(fields: int, values: int, batch: int) -> list[bytes]:
    """Requests whose rows, together, read every value of every field."""
    bodies = []
    for start in range(0, values - 2, batch):
        rows = [
            {f"f{i}": f"v{j}" for i in range(fields)}
            for j in range(start, min(start + batch, values - 2))
        ]
        bodies.append(json.dumps({"instances": rows}).encode())
    return bodies


def _probe_body(fields: int, values: int) -> bytes:
    rng = np.random.default_rng(5)
    rows = [
        {f"f{i}": f"v{int(rng.integers(0, values + 50))}" for i in range(fields)}  # some unseen
        for _ in range(200)
    ]
    return json.dumps({"instances": rows}).encode()


def _memory(root: psutil.Process) -> dict[str, Any]:
    processes = [root, *root.children(recursive=True)]
    rows = []
    for process in processes:
        info = process.memory_full_info()
        rows.append({"pid": process.pid, "rss": info.rss, "pss": info.pss, "uss": info.uss})
    return {
        "processes": rows,
        "rss_sum": sum(r["rss"] for r in rows),
        "pss_sum": sum(r["pss"] for r in rows),
    }


def serve_big_model(
    repository: Path, workers: int, fields: int, values: int, table_bytes: int
) -> dict[str, Any]:
    """Serve with ``workers``; sweep until each worker has mapped ~every table page."""
    env = {
        "CTR_MODEL_REPOSITORY": str(repository),
        "CTR_WORKERS": str(workers),
        "CTR_CACHE_MAXSIZE": "0",
        "CTR_REQUEST_TIMEOUT_S": "120",
    }
    command = [sys.executable, "-m", "app", "serve"]
    sweep = _sweep_bodies(fields, values, 500)
    headers = {"content-type": "application/json", "connection": "close"}
    started = time.perf_counter()
    with server(command, env=env, health="/readyz") as base:
        ready_s = time.perf_counter() - started
        root = next(  # the server this benchmark started: the supervisor and its workers
            child
            for child in psutil.Process().children()
            if child.cmdline()[1:4] == ["-m", "app", "serve"]
        )
        sweeps = 0
        for sweeps in range(1, 9):  # noqa: B007 - the count is reported
            for body in sweep:  # a fresh connection each: the kernel spreads them
                response = httpx.post(f"{base}/predict", content=body, headers=headers, timeout=120)
                response.raise_for_status()
            workers_rss = [
                p["rss"] for p in _memory(root)["processes"] if p["rss"] > table_bytes / 4
            ]
            if len(workers_rss) >= workers and min(workers_rss) > 0.9 * table_bytes:
                break
        memory = _memory(root)
        probe = httpx.post(
            f"{base}/predict", content=_probe_body(fields, values), headers=headers, timeout=120
        )
        probe.raise_for_status()
    return {
        "workers": workers,
        "ready_s": ready_s,
        "sweeps": sweeps,
        "memory": memory,
        "scores": probe.json()["predictions"],
    }


# -- 2. the mechanism ------------------------------------------------------------------------
_LOADER = """
import sys, time, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
fields, values = int(sys.argv[2]), int(sys.argv[3])
for start in range(0, values, 250):
    rows = np.arange(start, min(start + 250, values))
    session.run(None, {"indices": np.repeat(rows[:, None], fields, axis=1).astype(np.int64)})
print("ready", flush=True)
time.sleep(60)
"""


def inline_against_mapped(scratch: Path, fields: int, values: int, embed_dim: int) -> dict:
    """The same graph with weights inside model.onnx and beside it, two processes each."""
    import onnx

    from app.repository.store import resolve_model_dir

    made = make_big_model(scratch / "mid", fields, values, embed_dim)
    mapped = resolve_model_dir(scratch / "mid") / "model.onnx"
    inline = scratch / "inline" / "model.onnx"
    inline.parent.mkdir()
    onnx.save(onnx.load(str(mapped)), str(inline))  # every weight inside the protobuf
    results: dict[str, Any] = {"parameters_gib": made["parameters_gib"]}
    for layout, path in (("inline (before)", inline), ("mapped (now)", mapped)):
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", _LOADER, str(path), str(fields), str(values)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            for process in processes:
                assert process.stdout is not None
                process.stdout.readline()
            infos = [psutil.Process(p.pid).memory_full_info() for p in processes]
            results[layout] = {
                "rss": [i.rss for i in infos],
                "pss_sum": sum(i.pss for i in infos),
                "uss": [i.uss for i in infos],
            }
        finally:
            for process in processes:
                process.kill()
                process.wait()
    return results


# -- 3. compact tables -----------------------------------------------------------------------
def _cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"training {args[0]} failed: {result.stderr[-2000:]}")
    return result.stdout


def _speed(version_dir: Path, batch: int, seconds: float) -> float:
    """Rows scored per second by one onnxruntime thread (in this process)."""
    from app.model.scorer import Scorer
    from training.export import fixture_rows

    scorer = Scorer.load(version_dir)
    rows = fixture_rows(scorer.manifest.features.field_dims, batch * 64, seed=1)
    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    scorer.score_indices(batches[0])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for part in batches:
            scorer.score_indices(part)
        done += len(rows)
    return done / (time.perf_counter() - started)


# (tables, dense layers) exported from the float32 model's checkpoint, beside it.
COMPACT_EXPORTS = (
    ("float16", "float32"),
    ("int8", "float32"),
    ("float32", "int8"),
    ("int8", "int8"),
)


def compact_tables(scratch: Path, name: str, synth_args: list[str], train_args: list[str]) -> dict:
    from app.repository.manifest import ModelManifest
    from app.repository.store import resolve_model_dir

    data = scratch / f"{name}.tsv"
    _cli("synth", *synth_args, "--out", str(data))
    repo = scratch / name
    _cli("train", "--data", str(data), "--model", "nffm", "--out", str(repo), *train_args)
    dirs = {"float32/float32": resolve_model_dir(repo)}
    for tables, dense in COMPACT_EXPORTS:
        out = scratch / f"{name}-{tables}-{dense}"
        _cli(
            "export", "--model-dir", str(repo), "--out", str(out),
            "--table-dtype", tables, "--dense-dtype", dense,
        )  # fmt: skip
        dirs[f"{tables}/{dense}"] = resolve_model_dir(out)
    rows = {}
    for dtype, version_dir in dirs.items():
        evaluated = json.loads(
            _cli(
                "evaluate", "--model-dir", str(version_dir), "--data", str(data), "--split", "test"
            )
        )
        manifest = ModelManifest.load(version_dir)
        rows[dtype] = {
            "data_bytes": manifest.files["model.onnx.data"].bytes,
            "auc": evaluated["auc"],
            "logloss": evaluated["logloss"],
            "parity_max": manifest.training.get("compact_parity_max_abs_diff", 0.0),
            "parity_p99": manifest.training.get("compact_parity_p99_abs_diff", 0.0),
        }
    for batch in (1, 100):  # rounds, alternating, for a noisy machine
        speeds: dict[str, list[float]] = {dtype: [] for dtype in dirs}
        for _ in range(3):
            for dtype, version_dir in dirs.items():
                speeds[dtype].append(_speed(version_dir, batch, 1.5))
        for dtype in dirs:
            rows[dtype][f"rows_per_s_batch_{batch}"] = statistics.median(speeds[dtype])
    data.unlink()
    return rows


SERVED_WORKLOADS = ("distinct single rows", "batches of 100 distinct rows")


def served_dense(float_repo: Path, dense_repo: Path, rounds: int = 3, seconds: int = 5) -> dict:
    """The float32 and the int8-MLP export each served by one ctrserve worker with its score
    cache off (every request scored), wrk (16 connections) on each in turn, every other
    round in reverse order: requests a second and CPU µs a request outside wrk."""
    spec = load_spec(float_repo)
    repos = {"float32": float_repo, "int8": dense_repo}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with ExitStack() as stack:
        bases = {
            dense: stack.enter_context(
                server(
                    [sys.executable, "-m", "app"],
                    {
                        "CTR_MODEL_REPOSITORY": str(repo),
                        "CTR_CACHE_MAXSIZE": "0",
                        "CTR_LOG_LEVEL": "WARNING",
                    },
                )
            )
            for dense, repo in repos.items()
        }
        for workload in SERVED_WORKLOADS:
            bodies = write_bodies([ours(rows) for rows in requests_for(spec, workload)])
            for base in bases.values():  # warm: the first calls of a shape cost more
                wrk(f"{base}/predict", bodies, 2)
            runs: dict[str, list[dict[str, float]]] = {dense: [] for dense in bases}
            for _, dense in turns(list(bases), rounds):
                result = wrk(f"{bases[dense]}/predict", bodies, seconds)
                if result.errors:
                    raise RuntimeError(f"{workload}, {dense}: {result.errors} errors")
                runs[dense].append({"req_per_s": result.req_per_s, "cpu_us": result.server_cpu_us})
            results[workload] = runs
    return results


# -- the report ------------------------------------------------------------------------------
def report(results: dict, started: str) -> str:
    big = results["big"]
    one, two = big["served"]
    one_worker = max(p["rss"] for p in one["memory"]["processes"])
    replica = two["memory"]["pss_sum"]
    same = one["scores"] == two["scores"]
    files = big["model"]["files"]
    rows = [
        [
            f"{served['workers']}",
            f"{served['ready_s']:.0f}",
            " / ".join(f"{p['rss'] / GIB:.2f}" for p in served["memory"]["processes"]),
            " / ".join(f"{p['uss'] / MIB:,.0f}" for p in served["memory"]["processes"]),
            f"{served['memory']['rss_sum'] / GIB:.2f}",
            f"**{served['memory']['pss_sum'] / GIB:.2f}**",
        ]
        for served in (one, two)
    ]
    text = [
        "# Models past 2 GiB",
        "",
        f"Measured {started} on {machine()} with `python -m benchmarks.large_models` "
        "(`make bench-large`). Raw figures: [large_models.json](large_models.json).",
        "",
        markdown_section(
            "One copy of the tables per replica",
            f"An NFFM of {big['fields']} fields x {big['values']:,} values, k = "
            f"{big['embed_dim']} ({big['model']['parameters_gib']:.2f} GiB of parameters), "
            f"exported in {big['model']['export_s']:.0f} s (graph {files['model.onnx']:,} bytes, "
            f"weights {files['model.onnx.data'] / GIB:.2f} GiB in `model.onnx.data`), every "
            f"file verified (sha256) in {big['verify_s']:.1f} s (a copy with one bit of "
            f"`model.onnx.data` flipped was refused in {big['flipped']['refused_s']:.1f} s: "
            f"\"{big['flipped']['message']}\"), then served by 1 and by 2 "
            "uvicorn workers, each driven until it had read every row of every table. RSS "
            "counts a shared page in every process that maps it; PSS splits it between them, "
            "so the sum of PSS is what the replica holds. "
            f"**Replica (2 workers, sum of PSS) = {replica / GIB:.2f} GiB = "
            f"{replica / one_worker:.2f} x one worker's RSS ({one_worker / GIB:.2f} GiB)**; "
            f"the 2-worker service's scores equal the 1-worker service's on 200 probe rows: "
            f"{'yes' if same else 'NO'}. The training run's memory plan "
            f"(`training/memory.py`) put a replica at "
            f"{big['model']['planned_replica'][1] / GIB:.2f} GiB with 1 worker and "
            f"{big['model']['planned_replica'][2] / GIB:.2f} GiB with 2 (measured above: "
            f"{one['memory']['pss_sum'] / GIB:.2f} and {replica / GIB:.2f}).",
            ["workers", "ready (s)", "RSS per process (GiB)", "USS per process (MiB)",
             "sum of RSS (GiB)", "sum of PSS (GiB)"],
            rows,
        ),
    ]  # fmt: skip
    mechanism = results["mechanism"]
    mech_rows = [
        [
            layout,
            " / ".join(f"{r / GIB:.2f}" for r in mechanism[layout]["rss"]),
            " / ".join(f"{u / GIB:.2f}" for u in mechanism[layout]["uss"]),
            f"**{mechanism[layout]['pss_sum'] / GIB:.2f}**",
        ]
        for layout in ("inline (before)", "mapped (now)")
    ]
    text.append(
        markdown_section(
            "Why: weights inside the graph are copied, weights beside it are mapped",
            f"The same {mechanism['parameters_gib']:.2f} GiB graph, loaded by two processes "
            "that each read every table row. With the weights inside `model.onnx` (what every "
            "export below 2 GiB was before this change) onnxruntime parses them into each "
            "process's own memory; from `model.onnx.data` it maps the file read-only and every "
            "process reads the page cache's one copy.",
            ["weights", "RSS per process (GiB)", "USS per process (GiB)", "sum of PSS (GiB)"],
            mech_rows,
        )
    )
    compact_rows = []
    for data_name, by_dtype in results["compact"].items():
        base = by_dtype["float32/float32"]
        for dtype, row in by_dtype.items():
            tables, dense = dtype.split("/")
            compact_rows.append(
                [
                    data_name,
                    tables,
                    dense,
                    f"{row['data_bytes'] / MIB:,.1f} "
                    f"({row['data_bytes'] / base['data_bytes']:.2f}x)",
                    f"{row['auc']:.4f} ({row['auc'] - base['auc']:+.4f})",
                    f"{row['logloss']:.4f}",
                    f"{row['parity_p99']:.1e} / {row['parity_max']:.1e}",
                    f"{row['rows_per_s_batch_1']:,.0f}",
                    f"{row['rows_per_s_batch_100']:,.0f}",
                ]
            )
    text.append(
        markdown_section(
            "Compact tables and int8 dense layers",
            "NFFM trained once per data set, exported five ways from the same checkpoint "
            "(`ctrserve export --table-dtype --dense-dtype`): the weights file's size, test "
            "AUC and log loss served by onnxruntime (`ctrserve evaluate --split test`), how "
            "far the export measured the compact graph from the float one on its fixture rows "
            "(99th percentile / max of |score difference|; the export refuses a 99th "
            "percentile above 1e-3 for float16 tables, 2e-2 for int8 tables and 1e-2 for int8 "
            "dense layers, their sum for both), and rows scored per second by one onnxruntime "
            "thread (median of 3 alternating rounds).",
            ["data", "tables", "dense layers", "weights MiB", "test AUC", "log loss",
             "parity p99 / max", "rows/s batch 1", "rows/s batch 100"],
            compact_rows,
        )
    )  # fmt: skip
    served_rows = []
    for data_name, by_workload in results["served_dense"].items():
        for workload, runs in by_workload.items():
            rate = {
                dense: statistics.median(r["req_per_s"] for r in rs) for dense, rs in runs.items()
            }
            cpu = {dense: statistics.median(r["cpu_us"] for r in rs) for dense, rs in runs.items()}
            served_rows.append(
                [
                    data_name,
                    workload,
                    f"{rate['float32']:,.0f}",
                    f"{rate['int8']:,.0f} ({rate['int8'] / rate['float32']:.2f}x)",
                    f"{cpu['float32']:,.0f}",
                    f"{cpu['int8']:,.0f} ({cpu['int8'] / cpu['float32']:.2f}x)",
                    " / ".join(f"{r['req_per_s']:,.0f}" for r in runs["float32"]),
                    " / ".join(f"{r['req_per_s']:,.0f}" for r in runs["int8"]),
                ]
            )
    text.append(
        markdown_section(
            "int8 dense layers, served",
            "The float32 export and the int8-MLP one of the table above, each served by one "
            "ctrserve worker with its score cache off (every request scored); wrk (1 thread, "
            "16 connections, 5 s) on each in turn, every other round in reverse order, after a "
            "2 s warm-up. Medians of 3 rounds; CPU a request is the machine's outside wrk.",
            ["data", "workload", "float32 req/s", "int8 req/s", "float32 CPU µs a request",
             "int8 CPU µs a request", "float32 rounds", "int8 rounds"],
            served_rows,
        )
    )  # fmt: skip
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=39)
    parser.add_argument("--values", type=int, default=25_000)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--mid-values", type=int, default=8_000)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of each compact run")
    args = parser.parse_args()

    def measure(scratch: Path) -> dict:
        from app.repository.store import resolve_model_dir

        results: dict[str, Any] = {}
        compact_train = ["--epochs", "3", "--no-progress"]
        results["compact"] = {
            "default": compact_tables(
                scratch, "default", ["--rows", str(args.rows)], compact_train
            ),
            "criteo-shaped": compact_tables(
                scratch, "criteo", ["--layout", "criteo", "--rows", str(args.rows), "--seed", "7"],
                [*compact_train, "--embed-dim", "16", "--mlp-dims", "100", "--max-vocab", "20000"],
            ),
        }  # fmt: skip
        results["served_dense"] = {
            name: served_dense(scratch / repo, scratch / f"{repo}-float32-int8")
            for name, repo in (("default", "default"), ("criteo-shaped", "criteo"))
        }
        results["mechanism"] = inline_against_mapped(
            scratch, args.fields, args.mid_values, args.embed_dim
        )
        for leftover in ("mid", "inline"):
            subprocess.run(["rm", "-rf", str(scratch / leftover)], check=True)
        repository = scratch / "big"
        model = make_big_model(repository, args.fields, args.values, args.embed_dim)
        version_dir = resolve_model_dir(repository)
        table_bytes = model["files"]["model.onnx.data"]
        results["big"] = {
            "fields": args.fields,
            "values": args.values,
            "embed_dim": args.embed_dim,
            "model": model,
            "verify_s": verify_seconds(version_dir),
            "flipped": refuse_flipped_bit(version_dir, scratch),
            "served": [
                serve_big_model(repository, workers, args.fields, args.values, table_bytes)
                for workers in (1, 2)
            ],
        }
        return results

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for client in ("httpx", "httpx2"):
        logging.getLogger(client).setLevel(logging.WARNING)
    os.environ.setdefault("CTRSERVE_CACHE_DIR", str(Path.home() / ".cache" / "ctrserve" / "shards"))
    run_and_report(
        "ctrserve-large-",
        measure,
        report,
        ROOT / "docs" / "LARGE_MODELS.md",
        ROOT / "docs" / "large_models.json",
    )


if __name__ == "__main__":
    main()
