"""The serving benchmark suite: every comparison side by side, in one run, on 127.0.0.1.

    make bench            # or: .venv/bin/python -m benchmarks.serving [--duration 8]

Writes docs/BENCHMARKS.md (tables), docs/benchmarks.json (raw numbers) and
docs/latency_*.png (latency distributions). Durations are bounded; nothing is asserted --
the ratios are reported against their goals.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path

import httpx2 as httpx
import numpy as np

from app.features.spec import FeatureSpec
from app.model.scorer import Scorer
from app.protocol.predict_json import decode
from app.repository.store import POINTER_FILE, ModelRepository, resolve_model_dir
from benchmarks.timing import interleaved_medians, median_seconds
from benchmarks.workloads import (
    CACHE_ENTRIES,
    DISABLED,
    ROUNDS,
    WORKLOADS,
    Measured,
    best_ours,
    measure,
    servers,
    turns,
)
from support.payloads import (
    Row,
    bytes_tensor,
    load_spec,
    random_rows,
    unique_rows,
    v2_json_body,
    v2_tensors,
)
from support.reports import machine, markdown_section, relative
from support.servers import ROOT, metric_values, server
from support.wrk import write_bodies, wrk

logger = logging.getLogger("benchmarks")
APP = [sys.executable, "-m", "app"]
UVICORN = [
    sys.executable,
    "-m",
    "uvicorn",
    "--factory",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--log-level",
    "warning",
    "--no-access-log",
]
BARE = [*UVICORN, "benchmarks.variants:create_bare_app"]
BARE_NAME = "bare FastAPI, constant JSON"
SECTIONS = (
    "peers",
    "ceiling",
    "batches",
    "protocol",
    "model_cost",
    "cache_effect",
    "workers",
    "profile",
)


@dataclass(frozen=True)
class Run:
    """One server of a side-by-side comparison: how it starts, what it is sent, where."""

    command: list[str]
    env: dict[str, str] | None
    bodies: Sequence[Path]  # the warm-up's file, then each round's (cycling)
    path: str = "/predict"
    hot: Sequence[object] = ()  # bodies posted once before its warm-up (a hot set to cache)
    counted: bool = False  # read its counters around its measured runs (ctrserve only)


class Suite:
    def __init__(
        self, model_dir: Path, ladder_dir: Path, production_dir: Path, duration_s: int
    ) -> None:
        self.model_dir = model_dir
        self.ladder_dir = ladder_dir
        self.production_dir = production_dir
        self.duration_s = duration_s
        self.spec = load_spec(model_dir)
        self.env = {
            "CTR_MODEL_REPOSITORY": str(model_dir),
            "CTR_CACHE_TTL_S": "3600",
            "CTR_CACHE_MAXSIZE": "1000000",
        }
        self.sections: list[str] = []
        self.raw: dict[str, object] = {}
        self.distributions: dict[str, dict[str, dict[float, float]]] = {}
        self.stages_ms: dict[int, tuple[float, float, float]] = {}
        self.costs: dict[str, dict[str, float]] = {}
        self.versus_disabled: dict[str, float] = {}
        # "label: workload" -> server name -> its runs (the servers that ran)
        self.measured: dict[str, dict[str, Measured]] = {}
        # the sections beside the peers' whose servers took turns: section -> run -> rounds
        self.side_by_side: dict[str, dict[str, Measured]] = {}
        self.profile_us: dict[str, float] = {}

    # -- helpers -------------------------------------------------------------------------
    def _single_bodies(self, count: int, seed: int) -> Path:
        return write_bodies([{"features": r} for r in unique_rows(self.spec, count, seed)])

    def _table(self, title: str, intro: str, header: list[str], rows: list[list[str]]) -> None:
        section = markdown_section(title, intro, header, rows)
        self.sections.append(section)
        logger.info("\n%s", section)

    @staticmethod
    def _row(name: str, result: Measured) -> list[str]:
        """req/s: the rounds' mean; p50: their median; p99: the worst."""
        return [
            name,
            f"{result.req_per_s:,.0f}",
            f"{np.median([r.p50_ms for r in result.rounds]):.2f}",
            f"{result.p99_ms:.2f}",
            str(result.errors),
        ]

    def _side_by_side(self, runs: dict[str, Run]) -> dict[str, Measured]:
        """Every run's server started at once (idle ones cost nothing), a warm-up run each,
        then ``ROUNDS`` rounds taking turns (every other round in reverse order), so a drift
        of this machine's speed falls on all of them alike. A counted run's hit ratio and
        rows an onnxruntime call come from its own counters over its measured runs."""
        results = {name: Measured(name, "") for name in runs}
        counted = {name: np.zeros(4) for name in runs}  # hits, misses, calls, rows
        with ExitStack() as running:
            bases = {
                name: running.enter_context(server(run.command, run.env))
                for name, run in runs.items()
            }
            for round_, name in turns(list(runs), ROUNDS):
                run, base = runs[name], bases[name]
                url = f"{base}{run.path}"
                if round_ == 0:
                    for body in run.hot:
                        httpx.post(url, json=body, timeout=5)
                    wrk(url, run.bodies[0], max(2, self.duration_s // 2))
                before = _counters(base) if run.counted else 0.0
                bodies = run.bodies[(round_ + 1) % len(run.bodies)]
                results[name].rounds.append(wrk(url, bodies, self.duration_s))
                if run.counted:
                    counted[name] += _counters(base) - before
        for name, run in runs.items():
            if run.counted:
                hits, misses, calls, rows = counted[name].tolist()
                results[name].hit_ratio = hits / max(hits + misses, 1.0)
                results[name].rows_per_call = rows / max(calls, 1.0)
        return results

    @staticmethod
    def _worst_percentiles(result: Measured) -> dict[float, float]:
        """Each latency percentile at its worst round (the plots' curves)."""
        return {
            p: max(r.percentiles_ms[p] for r in result.rounds)
            for p in result.rounds[0].percentiles_ms
        }

    @staticmethod
    def _raw(results: dict[str, Measured]) -> dict[str, object]:
        return {
            name: {
                "hit_ratio": m.hit_ratio,
                "rows_per_call": m.rows_per_call,
                "rounds": [r.__dict__ for r in m.rounds],
            }
            for name, m in results.items()
        }

    # -- sections ------------------------------------------------------------------------
    def _models(self) -> dict[str, Path]:
        """The default model, and the production-size NFFM and DeepFM where `make bench`
        built them."""
        models = {"default": self.model_dir}
        for label, name in (("production NFFM", "nffm"), ("production DeepFM", "deepfm")):
            production = self.production_dir / name
            if (production / POINTER_FILE).is_file():
                models[label] = production
            else:
                logger.warning("%s missing: the production-size model is left out", production)
        return models

    def peers(self) -> dict[str, float]:
        """ctrserve vs the peers on the four workloads, per model; ctrserve ÷ best peer.

        Also fills ``self.versus_disabled`` (ctrserve ÷ itself with the cache disabled) and
        ``self.costs`` (what one request costs in process, for the goals' reasons)."""
        ratios: dict[str, float] = {}
        raw: dict[str, list[dict[str, object]]] = {}
        for label, model_dir in self._models().items():
            spec = load_spec(model_dir)
            self.costs[label] = _request_costs(model_dir, spec)
            results = list(measure(model_dir, spec, self.duration_s))
            raw[label] = [
                {"server": r.server, "workload": r.workload, "skipped": r.skipped,
                 "rounds": [x.__dict__ for x in r.rounds]}
                for r in results
            ]  # fmt: skip
            rows = []
            for workload in WORKLOADS:
                here = [r for r in results if r.workload == workload]
                self.measured[f"{label}: {workload}"] = {r.server: r for r in here if r.rounds}
                ours = best_ours(here)
                best = _best_peer(here)
                if ours is not None and best is not None:
                    ratios[f"{label}: {workload}"] = ours.req_per_s / best.req_per_s
                # the cache's effect: one worker with it on and off
                one = next(r for r in here if r.server == "ctrserve")
                disabled = next(r for r in here if r.server == DISABLED)
                if one.rounds and disabled.rounds and workload != "repeated single row":
                    self.versus_disabled[f"{label}: {workload}"] = (
                        one.req_per_s / disabled.req_per_s
                    )
                for r in here:
                    hits = "" if r.hit_ratio is None else f" ({r.hit_ratio:.0%} hits)"
                    rows.append(
                        [
                            workload,
                            r.server + hits,
                            f"{r.req_per_s:,.0f}" if r.rounds else r.skipped,
                            f"{r.p99_ms:.2f}" if r.rounds else "",
                            str(r.errors) if r.rounds else "",
                            f"{r.cpu_us('server_cpu_us'):,.0f}" if r.rounds else "",
                            f"{ours.req_per_s / r.req_per_s:.2f}x" if ours and r.rounds else "",
                        ]
                    )
            self._table(
                f"ctrserve vs peers: {label} model ({len(spec.fields)} fields)",
                f"wrk, 1 thread, 16 connections; a warm-up run, then {ROUNDS} rounds of "
                f"{self.duration_s} s, servers taking turns (req/s: their mean; p99: the "
                "worst). Each server in its best honest configuration with the whole machine "
                "(the open-loop benchmark's servers), onnxruntime with one thread a call, the "
                "same model; ctrserve ÷ this: ctrserve's better configuration (one worker or "
                "two) over this server. CPU µs/req: the CPU the "
                "machine spent a request outside wrk (the server's, kernel networking "
                "included), from /proc/stat and wrk's own rusage. Peers: "
                + "; ".join(f"{s.name}: {s.note}" for s in servers(model_dir, spec) if s.note)
                + ".",
                [
                    "workload",
                    "server",
                    "req/s",
                    "p99 ms",
                    "errors",
                    "CPU µs/req",
                    "ctrserve ÷ this",
                ],
                rows,
            )
        self.raw["peers"] = raw
        return ratios

    def ceiling(self) -> dict[str, float]:
        """Bare constant endpoint vs /predict hit, miss and cache-disabled (single rows)."""
        misses = self._single_bodies(400_000, seed=1)
        hit = write_bodies([{"features": random_rows(self.spec, 1, seed=2)[0]}])
        # A row cache of CACHE_ENTRIES: a distinct row has long left it when wrk's file comes
        # round again, so every round's misses miss.
        cached = {**self.env, "CTR_CACHE_MAXSIZE": str(CACHE_ENTRIES)}
        results = self._side_by_side(
            {
                BARE_NAME: Run(BARE, None, [hit]),
                "/predict, cache hit": Run(APP, cached, [hit], counted=True),
                "/predict, cache miss": Run(APP, cached, [misses], counted=True),
                "/predict, cache disabled": Run(
                    APP, {**self.env, "CTR_CACHE_MAXSIZE": "0"}, [misses]
                ),
            }
        )
        self.distributions["ceiling"] = {k: self._worst_percentiles(v) for k, v in results.items()}
        self._table(
            "HTTP ceiling (single-row requests)",
            f"wrk, 1 thread, 16 connections; one uvicorn worker each, all started at once; a "
            f"warm-up run, then {ROUNDS} rounds of {self.duration_s} s taking turns (req/s: "
            "their mean; p50: their median; p99: the worst). Misses use distinct rows, so every "
            "request is scored by onnxruntime; hits: the share of rows the service's own "
            "counters answered from its cache.",
            ["server", "req/s", "p50 ms", "p99 ms", "errors", "hits"],
            [
                [*self._row(k, v), "" if v.hit_ratio is None else f"{v.hit_ratio:.1%}"]
                for k, v in results.items()
            ],
        )
        bare = results[BARE_NAME].req_per_s
        self.raw["ceiling"] = self._raw(results)
        self.side_by_side["ceiling"] = results
        return {
            "bare": bare,
            "hit_vs_bare": results["/predict, cache hit"].req_per_s / bare,
            "miss_vs_bare": results["/predict, cache miss"].req_per_s / bare,
            "disabled_vs_bare": results["/predict, cache disabled"].req_per_s / bare,
        }

    def batches(self) -> dict[str, float]:
        """Server time per batch vs raw onnxruntime on the same (pre-encoded) rows."""
        scorer = Scorer.load(resolve_model_dir(self.model_dir))
        rows_out, ratios = [], {}
        with server(APP, {**self.env, "CTR_CACHE_MAXSIZE": "0"}) as base, httpx.Client() as client:
            for size in (1, 100, 1000, 10_000):
                rows = random_rows(self.spec, size, seed=size)
                payload = json.dumps({"instances": rows}).encode()
                repeats = max(5, min(200, 20_000 // size))
                post = partial(
                    client.post,
                    f"{base}/predict",
                    content=payload,
                    headers={"content-type": "application/json"},
                )
                server_s = median_seconds(partial(_raise_for_status, post), repeats)
                parse_s, encode_s, ort_s = _stage_seconds(scorer, rows, repeats)
                ratios[str(size)] = server_s / ort_s
                self.stages_ms[size] = (parse_s * 1e3, encode_s * 1e3, ort_s * 1e3)
                rows_out.append(
                    [
                        f"{size:,}",
                        f"{server_s * 1e3:.2f}",
                        f"{parse_s * 1e3:.3f}",
                        f"{encode_s * 1e3:.3f}",
                        f"{ort_s * 1e3:.3f}",
                        f"{server_s / ort_s:.1f}x",
                        f"{size / server_s:,.0f}",
                    ]
                )
        self._table(
            "Batch scoring: server time vs raw onnxruntime",
            "Median of repeated requests over one keep-alive connection, cache disabled. "
            "Server time is the client-measured round trip (JSON, validation, encoding, ORT, "
            "response); raw ORT is `session.run` on the already-encoded rows. The parse and "
            "encode columns time those two stages alone, in process: the profile of the gap.",
            [
                "rows",
                "server ms",
                "parse + validate ms",
                "encode ms",
                "raw ORT ms",
                "server / ORT",
                "rows/s",
            ],
            rows_out,
        )
        self.raw["batches"] = ratios
        return ratios

    def protocol(self) -> dict[str, float]:
        """The Open Inference Protocol (V2) against /predict: batch server time, single rows."""
        import tritonclient.http as triton

        scorer = Scorer.load(resolve_model_dir(self.model_dir))
        name = ModelRepository(self.model_dir).name
        infer = f"/v2/models/{name}/infer"
        env = {**self.env, "CTR_CACHE_MAXSIZE": "0"}
        rows_out, ratios = [], {}
        with server(APP, env) as base, httpx.Client() as client:
            for size in (1, 100, 1000, 10_000):
                rows = random_rows(self.spec, size, seed=size)
                indices = scorer.encoder.encode_rows(rows)
                inputs = []
                for field, values in v2_tensors(self.spec, rows).items():
                    datatype = "BYTES" if values.dtype == object else "FP32"
                    tensor = triton.InferInput(field, [size], datatype)
                    tensor.set_data_from_numpy(values, binary_data=True)
                    inputs.append(tensor)
                # the stock client's own binary framing, binary scores back
                binary, json_size = triton.InferenceServerClient.generate_request_body(
                    inputs, outputs=[triton.InferRequestedOutput("score", binary_data=True)]
                )
                requests = {
                    "/predict (JSON rows)": ("/predict", json.dumps({"instances": rows}), {}),
                    "V2 JSON tensors": (infer, json.dumps(v2_json_body(self.spec, rows)), {}),
                    "V2 binary tensors": (
                        infer,
                        binary,
                        {"Inference-Header-Content-Length": str(json_size)},
                    ),
                }
                repeats = max(5, min(200, 50_000 // size))
                for label, (path, body, headers) in requests.items():
                    route = "/predict" if path == "/predict" else "/v2/models/{model_name}/infer"

                    def post(
                        p: str = path, b: str | bytes = body, h: dict[str, str] = headers
                    ) -> None:
                        client.post(
                            f"{base}{p}",
                            content=b,
                            headers={"content-type": "application/octet-stream", **h},
                        ).raise_for_status()

                    # onnxruntime's first call at a new batch size plans its memory (10+ ms):
                    # outside the mean, as it is outside the raw ORT median
                    for _ in range(3):
                        post()
                    before = _latency_totals(client, base, route)
                    round_trip_s, ort_s = interleaved_medians(
                        post, partial(scorer.score_indices, indices), repeats
                    )
                    after = _latency_totals(client, base, route)
                    server_s = (after[0] - before[0]) / (after[1] - before[1])
                    ratios[f"{label} {size}"] = server_s / ort_s
                    rows_out.append(
                        [
                            f"{size:,}",
                            label,
                            f"{round_trip_s * 1e3:.3f}",
                            f"{server_s * 1e3:.3f}",
                            f"{ort_s * 1e3:.3f}",
                            f"{server_s / ort_s:.2f}x",
                        ]
                    )
        self._table(
            "Open Inference Protocol (V2) vs /predict: batch server time",
            "Repeated requests over one keep-alive connection, cache disabled, the same rows "
            "each way. V2 binary bodies are built by tritonclient's own `generate_request_body` "
            "(BYTES length-prefixed, FP32 raw) and ask for binary scores back. Round trip: "
            "median as the client sees it. Server: mean time inside the server (body read to "
            "response sent), from its own `ctr_request_latency_seconds`. Raw ORT: median "
            "`session.run` on the already-encoded rows, in this process, one call after each "
            "request (this machine's speed drifts within minutes, so both sides of the ratio "
            "are timed in the same seconds).",
            ["rows", "request", "round trip ms", "server ms", "raw ORT ms", "server / ORT"],
            rows_out,
        )
        singles = unique_rows(self.spec, 200_000, seed=11)
        bodies = {
            "/predict": ("/predict", write_bodies([{"features": r} for r in singles])),
            "V2 JSON": (infer, write_bodies([v2_json_body(self.spec, [r]) for r in singles])),
        }
        cached = {**self.env, "CTR_CACHE_MAXSIZE": str(CACHE_ENTRIES)}
        disabled = {**self.env, "CTR_CACHE_MAXSIZE": "0"}
        singles_by = self._side_by_side(
            {
                f"{label}, {suffix}": Run(APP, env, [file], path)
                for suffix, env in (("distinct rows", cached), ("cache disabled", disabled))
                for label, (path, file) in bodies.items()
            }
        )
        single_rows = [self._row(k, v) for k, v in singles_by.items()]
        self._table(
            "Open Inference Protocol (V2) vs /predict: single rows",
            f"wrk, 16 connections, distinct rows (every request a score-cache miss), one "
            f"worker each, all started at once; a warm-up run, then {ROUNDS} rounds of "
            f"{self.duration_s} s taking turns (req/s: their mean; p99: the worst).",
            ["request", "req/s", "p50 ms", "p99 ms", "errors"],
            single_rows,
        )
        self._decode_costs()
        self._lookup_costs()
        self.raw["protocol"] = ratios
        return ratios

    def _decode_costs(self) -> None:
        """1,000-element BYTES tensors: the length-to-length scan against the numpy decoder,
        one tensor alone and a request's eight tensors together."""
        from app.protocol.tensors import _scan, decode_bytes, decode_bytes_tensors

        random = np.random.default_rng(5)
        ids = [f"c0_{n}".encode() for n in random.integers(0, 10**12, 1000) // 10 ** (
            random.integers(0, 11, 1000))]  # fmt: skip
        cases = {
            "ids of mixed lengths": [ids],
            "a fifth of them empty (missing)": [
                [b"" if i % 5 == 0 else v for i, v in enumerate(ids)]
            ],
            "equal lengths (hashed ids)": [[f"{n:016x}".encode() for n in range(1000)]],
            "8 tensors of mixed lengths, 3% empty (a 1,000-row request)": [
                [b"" if random.random() < 0.03 else v for v in random.permutation(ids).tolist()]
                for _ in range(8)
            ],
        }
        rows = []
        for label, tensors in cases.items():
            raws = [bytes_tensor(values) for values in tensors]
            given = [("c0", raw, 1000) for raw in raws]

            def scan_each(r: list[bytes] = raws) -> object:
                return [_scan("c0", raw, 1000) for raw in r]

            scan, ours = interleaved_medians(
                scan_each,
                partial(decode_bytes, *given[0])
                if len(given) == 1
                else partial(decode_bytes_tensors, given),
                500,
            )
            rows.append([label, f"{scan * 1e6:.0f}", f"{ours * 1e6:.0f}", f"{scan / ours:.1f}x"])
        self._table(
            "Decoding a BYTES tensor",
            "1,000 elements a tensor, median µs, the two timed in turns. Scan: stepping from "
            "length prefix to length prefix in Python, finding the places only (the first "
            "decoder, which then also cut the elements out). numpy: finding and cutting; several "
            "text tensors of one request are decoded as one chain (app/protocol/tensors.py: "
            "decode_bytes, decode_bytes_tensors).",
            ["tensors", "scan µs", "numpy µs", "speed-up"],
            rows,
        )

    def _lookup_costs(self) -> None:
        """One 1,000-element tensor looked up in its field's vocabulary: a binary search over
        the sorted strings (the lookup this replaced) against the hash lookup the encoder
        uses (app/features/fixed_width.py), timed in turns."""
        from app.features.fixed_width import FixedWidthVocabulary

        random = np.random.default_rng(6)
        rows = []
        for size in (30, 1_000, 20_000):
            vocabulary = [f"v{n:x}" for n in random.integers(0, 2**40, size)]
            vocabulary = list(dict.fromkeys(vocabulary))
            # 2% unseen, as the request generators send
            picks = random.integers(0, int(len(vocabulary) * 1.02), 1000)
            tokens = [vocabulary[i] if i < len(vocabulary) else f"unseen-{i}" for i in picks]
            for kind, label in (("S", "BYTES (binary)"), ("U", "str (JSON)")):
                arrays = (
                    (
                        np.array([t.encode() for t in tokens]),
                        np.sort([v.encode() for v in vocabulary]),
                    )
                    if kind == "S"
                    else (np.array(tokens), np.sort(np.array(vocabulary)))
                )
                given, keys = arrays
                hashed = FixedWidthVocabulary(vocabulary, kind)

                def search(g: np.ndarray = given, k: np.ndarray = keys) -> object:
                    place = np.minimum(np.searchsorted(k, g), len(k) - 1)
                    return np.where(k[place] == g, place, -1)

                sorted_s, hashed_s = interleaved_medians(search, partial(hashed.find, given), 500)
                rows.append(
                    [
                        f"{len(vocabulary):,}",
                        label,
                        f"{sorted_s * 1e6:.0f}",
                        f"{hashed_s * 1e6:.0f}",
                        f"{sorted_s / hashed_s:.1f}x",
                    ]
                )
        self._table(
            "Encoding a BYTES tensor",
            "1,000 values of one field (2% unseen) looked up in its vocabulary, median µs, the "
            "two timed in turns. Binary search: numpy's searchsorted over the sorted strings "
            "(the encoder's lookup before), comparing strings at every step. Hash: each value's "
            "64-bit words hashed, found among the sorted hashes and compared once "
            "(app/features/fixed_width.py).",
            ["vocabulary", "values", "binary search µs", "hash µs", "speed-up"],
            rows,
        )

    def model_cost(self) -> None:
        """onnxruntime vs torch eager per ladder model, batch 1 and 1,024."""
        try:
            import torch
            from torch import nn

            from training.export import load_checkpoint
        except ImportError:
            logger.warning("torch not installed: skipping the per-model section")
            return
        torch.set_num_threads(1)
        rows = []
        for model_dir in sorted(
            p for p in self.ladder_dir.iterdir() if (p / POINTER_FILE).is_file()
        ):
            scorer = Scorer.load(resolve_model_dir(model_dir))
            model, manifest = load_checkpoint(model_dir)
            model.eval()
            spec = manifest.features
            data = scorer.encoder.encode_rows(random_rows(spec, 1024, seed=5))
            cells = [manifest.model_type]
            for batch in (1, 1024):
                part = data[:batch]
                tensor = torch.from_numpy(part)
                repeats = 2000 if batch == 1 else 50
                ort_s = median_seconds(partial(scorer.score_indices, part), repeats)

                def torch_scores(t: torch.Tensor = tensor, m: nn.Module = model) -> torch.Tensor:
                    return torch.sigmoid(m(t))

                with torch.inference_mode():
                    torch_s = median_seconds(torch_scores, repeats)
                cells += [f"{ort_s * 1e6:,.0f}", f"{torch_s * 1e6:,.0f}", f"{torch_s / ort_s:.1f}x"]
            rows.append(cells)
        self._table(
            "Model cost: onnxruntime vs torch eager",
            "Microseconds per call, median; one intra-op thread for both.",
            [
                "model",
                "ORT µs (1)",
                "torch µs (1)",
                "ORT speed-up (1)",
                "ORT µs (1,024)",
                "torch µs (1,024)",
                "ORT speed-up (1,024)",
            ],
            rows,
        )

    def cache_effect(self) -> float:
        """Throughput with and without the cache at set hit ratios, side by side."""
        rng = np.random.default_rng(9)
        hot = [{"features": r} for r in random_rows(self.spec, 50, seed=10)]
        runs = ROUNDS + 1  # the warm-up and every round get cold rows of their own
        cold = [{"features": r} for r in unique_rows(self.spec, 80_000 * runs, seed=11)]
        rows, speedups = [], {}
        # The hot set fits the row cache (CACHE_ENTRIES); no cold row comes back within a run.
        cached = {**self.env, "CTR_CACHE_MAXSIZE": str(CACHE_ENTRIES)}
        for target in (0.0, 0.5, 0.9, 0.99):
            files = []
            for part in range(runs):
                mine = cold[part::runs]
                picks = rng.uniform(size=len(mine)) < target
                bodies = [
                    hot[int(rng.integers(len(hot)))] if p else c
                    for p, c in zip(picks, mine, strict=True)
                ]
                files.append(write_bodies(bodies))
            results = self._side_by_side(
                {
                    "cached": Run(APP, cached, files, hot=hot, counted=True),
                    "uncached": Run(
                        APP, {**self.env, "CTR_CACHE_MAXSIZE": "0"}, files, counted=True
                    ),
                }
            )
            with_cache, without = results["cached"], results["uncached"]
            speedups[target] = with_cache.req_per_s / without.req_per_s
            rows.append(
                [
                    f"{target:.0%}",
                    f"{with_cache.hit_ratio or 0.0:.1%}",
                    f"{with_cache.req_per_s:,.0f}",
                    f"{with_cache.p99_ms:.2f}",
                    f"{with_cache.rows_per_call or 0.0:.1f}",
                    f"{without.req_per_s:,.0f}",
                    f"{without.p99_ms:.2f}",
                    f"{without.rows_per_call or 0.0:.1f}",
                    f"{speedups[target]:.2f}x",
                ]
            )
            self.side_by_side[f"cache effect: {target:.0%}"] = results
        self._table(
            "Cache effect at set hit ratios",
            "Single rows: a hot set of 50 mixed with distinct cold rows (each run its own); one "
            f"worker with its cache ({CACHE_ENTRIES:,} rows) and one without, started at once; a "
            f"warm-up run, then {ROUNDS} rounds of {self.duration_s} s taking turns (req/s: their "
            "mean; p99: the worst). Hits and rows an onnxruntime call (the misses the Batcher "
            "put in one call) come from the service's own Prometheus counters.",
            [
                "target hits",
                "measured hits",
                "cached req/s",
                "cached p99 ms",
                "cached rows a call",
                "no-cache req/s",
                "no-cache p99 ms",
                "no-cache rows a call",
                "speed-up",
            ],
            rows,
        )
        self.raw["cache_effect"] = speedups
        return speedups[0.9]

    def profile(self) -> None:
        """Where a single-row request's time goes, in process (no network, no wrk)."""
        from app.core.config import Settings
        from app.main import create_app
        from benchmarks.asgi import per_request_us
        from benchmarks.variants import create_bare_app

        scorer = Scorer.load(resolve_model_dir(self.model_dir))
        row = random_rows(self.spec, 1, seed=21)[0]
        raw = json.dumps({"features": row}).encode()
        distinct = [
            json.dumps({"features": r}).encode() for r in unique_rows(self.spec, 30_000, 22)
        ]
        indices = scorer.encoder.encode_rows([row])
        settings = Settings(model_dir=self.model_dir, log_level="WARNING")
        stages = [
            ("bare FastAPI app, whole request", per_request_us(create_bare_app(), [raw])),
            (
                "ctrserve app, repeated body (score cache hit)",
                per_request_us(create_app(settings), [raw]),
            ),
            (
                "ctrserve app, distinct bodies (cache misses)",
                per_request_us(create_app(settings), distinct),
            ),
            (
                "  parse + validate body",
                median_seconds(lambda: decode(raw, scorer), 5000) * 1e6,
            ),
            ("  encode row", median_seconds(lambda: scorer.encoder.encode_rows([row]), 5000) * 1e6),
            (
                "  onnxruntime call (1 row)",
                median_seconds(lambda: scorer.score_indices(indices), 5000) * 1e6,
            ),
        ]
        self.profile_us = dict(stages)
        self._table(
            "Where the time goes (single row, in process)",
            "Each app driven through its ASGI interface with no network (so these are pure "
            "Python costs per request); the indented stages are timed alone. The framework "
            "around a request costs several times the model itself.",
            ["stage", "µs"],
            [[name, f"{value:,.1f}"] for name, value in stages],
        )

    def workers(self) -> None:
        misses = self._single_bodies(300_000, seed=13)
        disabled = {**self.env, "CTR_CACHE_MAXSIZE": "0"}
        results = self._side_by_side(
            {
                f"{workers} worker(s)": Run(
                    APP, {**disabled, "CTR_WORKERS": str(workers)}, [misses]
                )
                for workers in (1, 2)
            }
        )
        self._table(
            "1 vs 2 uvicorn workers",
            "Cache disabled, distinct single rows, both started at once; a warm-up run, then "
            f"{ROUNDS} rounds of {self.duration_s} s taking turns. wrk itself needs one of the "
            "two cores.",
            ["workers", "req/s", "p50 ms", "p99 ms", "errors"],
            [self._row(k, v) for k, v in results.items()],
        )

    # -- report --------------------------------------------------------------------------
    def write(self, goals: list[list[str]], why: list[str], out: Path) -> None:
        packages = ", ".join(
            f"{p} {version(p)}" for p in ("fastapi", "uvicorn", "onnxruntime", "pydantic", "numpy")
        )
        head = [
            "# ctrserve benchmarks",
            "",
            f"Generated by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
            f"Machine: {machine()}. {packages}. Model: `{relative(self.model_dir)}` "
            f"({len(self.spec.fields)} fields). Every comparison below ran in this one run.",
            "",
            "## Goals",
            "",
            "| ratio | goal | measured | round by round | met |",
            "|---|---|---|---|---|",
            *["| " + " | ".join(g) + " |" for g in goals],
            "",
            *why,
            "",
        ]
        plots = [f"![{name}](latency_{name}.png)" for name in self.distributions]
        out.write_text(
            "\n".join(head) + "\n" + "\n".join(self.sections) + "\n" + "\n".join(plots) + "\n"
        )
        (out.parent / "benchmarks.json").write_text(json.dumps(self.raw, indent=1, default=str))
        self._plot(out.parent)

    def _plot(self, folder: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for name, series in self.distributions.items():
            figure, axis = plt.subplots(figsize=(7, 4))
            for label, points in series.items():
                axis.plot(list(points.values()), list(points.keys()), marker="o", label=label)
            axis.set_xscale("log")
            axis.set_xlabel("latency (ms, log scale)")
            axis.set_ylabel("percentile")
            axis.set_title(f"Latency distribution: {name}")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
            figure.tight_layout()
            figure.savefig(folder / f"latency_{name}.png", dpi=110)
            plt.close(figure)


def _raise_for_status(post: Callable[[], httpx.Response]) -> httpx.Response:
    return post().raise_for_status()


def _latency_totals(client: httpx.Client, base: str, route: str) -> tuple[float, float]:
    """(seconds, requests) the server has counted for ``route``'s 2xx answers so far."""
    text = client.get(f"{base}/metrics").text
    totals = []
    for part in ("sum", "count"):
        prefix = f'ctr_request_latency_seconds_{part}{{endpoint="{route}",status="2xx"}} '
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), prefix + "0")
        totals.append(float(line.split()[-1]))
    return totals[0], totals[1]


def _calls(base: str) -> tuple[float, float]:
    """(onnxruntime calls, rows scored) from the service's ``ctr_scored_batch_rows``."""
    calls, rows = metric_values(base, "ctr_scored_batch_rows_count", "ctr_scored_batch_rows_sum")
    return calls, rows


def _request_costs(model_dir: Path, spec: FeatureSpec) -> dict[str, float]:
    """What a request of each workload costs in process (medians, this run): onnxruntime
    for 1, 10 and 100 rows, and parsing and encoding a 100-row body, which hold the GIL."""
    scorer = Scorer.load(resolve_model_dir(model_dir))
    scorer.warm([1, 10, 100])
    rows = unique_rows(spec, 100, seed=41)
    parse_s, encode_s, ort_s = _stage_seconds(scorer, rows, 200)
    indices = scorer.encoder.encode_rows(rows)
    costs = {
        f"ort_{n}_ms": median_seconds(partial(scorer.score_indices, indices[:n]), 200) * 1e3
        for n in (1, 10)
    }
    return {
        **costs,
        "ort_100_ms": ort_s * 1e3,
        "parse_100_ms": parse_s * 1e3,
        "encode_100_ms": encode_s * 1e3,
    }


def _stage_seconds(scorer: Scorer, rows: list[Row], repeats: int) -> tuple[float, float, float]:
    """Median seconds, in this process, to decode a /predict body of ``rows``, to encode
    them and to score them with onnxruntime, the three steps the service takes."""
    body = json.dumps({"instances": rows}).encode()
    decoded = decode(body, scorer)
    indices = decoded.encode(scorer.encoder)
    return (
        median_seconds(lambda: decode(body, scorer), repeats),
        median_seconds(lambda: decoded.encode(scorer.encoder), repeats),
        median_seconds(lambda: scorer.score_indices(indices), repeats),
    )


def _goal(
    name: str,
    goal: float,
    measured: float,
    higher_is_better: bool = True,
    rounds: Sequence[float] = (),
) -> list[str]:
    """A row of the goals table; ``rounds``: the ratio in each round, where there are rounds
    (shown as their range, so a goal met or missed within the run's own spread shows it)."""
    met = measured >= goal if higher_is_better else measured <= goal
    sign = "≥" if higher_is_better else "≤"
    spread = f"{min(rounds):.2f} to {max(rounds):.2f}" if rounds else ""
    return [name, f"{sign} {goal}", f"{measured:.2f}", spread, "yes" if met else "**no**"]


def _counters(base: str) -> np.ndarray:
    """A ctrserve's cache hits, misses, onnxruntime calls and rows scored so far."""
    return np.array(
        metric_values(
            base,
            "ctr_cache_hits_total",
            "ctr_cache_misses_total",
            "ctr_scored_batch_rows_count",
            "ctr_scored_batch_rows_sum",
        )
    )


def _by_round(one: Measured, other: Measured) -> list[float]:
    """``one`` ÷ ``other`` in req/s round by round: within a round they took turns, so a
    round's pair ran moments apart, and a drift of the machine's speed between rounds
    cancels out of it."""
    pairs = zip(one.rounds, other.rounds, strict=True)
    return [a.req_per_s / b.req_per_s for a, b in pairs]


def _round_ratios(runs: dict[str, Measured], versus: str | None = None) -> list[float]:
    """ctrserve ÷ ``versus`` (a server of ``runs``; the best peer by default), round by
    round (:func:`_by_round`)."""
    best = best_ours(runs.values()) if versus is None else runs.get("ctrserve")
    other = _best_peer(runs.values()) if versus is None else runs.get(versus)
    if best is None or other is None:
        return []
    return _by_round(best, other)


def _why(
    goals: list[list[str]],
    ceiling: dict[str, float],
    stages: dict[int, tuple[float, float, float]],
    profile: dict[str, float],
    fields: int,
    protocol: dict[str, float],
    at_90: dict[str, Measured],
) -> list[str]:
    """For each goal not met, the measured reason (numbers from this same run)."""
    unmet = {g[0] for g in goals if g[-1] != "yes"}
    lines = []
    if any("cache-miss" in g for g in unmet) and profile:
        bare, _hit, miss = (v for k, v in profile.items() if not k.startswith(" "))
        named = sum(v for k, v in profile.items() if k.startswith(" "))
        lines.append(
            "- **Cache miss vs bare.** In process (profile section below), the bare app's whole "
            f"request costs {bare:.0f} µs and a ctrserve miss {miss:.0f} µs. Parsing, encoding "
            f"and the onnxruntime call (whose fixed per-call cost dominates a one-row batch) "
            f"account for {named:.0f} µs of the {miss - bare:.0f} µs difference; the rest is the "
            "request's own work around them (the cache lookup and store, counters, NumPy "
            "result handling, handing the call to a scoring thread, building the response). "
            "With the cache disabled the ratio is "
            f"{ceiling['disabled_vs_bare']:.2f}."
        )
    if any("raw ORT" in g for g in unmet) and 1000 in stages:
        parse, encode, ort = stages[1000]
        lines.append(
            "- **Batch overhead.** At 1,000 rows, parsing and validating the JSON "
            f"({parse:.1f} ms) and encoding ({encode:.1f} ms) alone take "
            f"{(parse + encode) / ort:.1f}x the "
            f"onnxruntime call ({ort:.1f} ms): Python work per value ({1000 * fields:,} of "
            f"them) against a model that needs {ort:.1f} µs a row. The columnar V2 protocol "
            "avoids the per-value work: its 1,000-row binary request measured "
            f"{protocol.get('V2 binary tensors 1000', float('nan')):.2f}x raw ORT in this run."
        )
    if any("V2 binary" in g for g in unmet):
        lines.append(
            "- **V2 at 1,000 rows.** Decoding the length-prefixed BYTES tensors is a scan in "
            "Python (each element's place depends on the lengths before it), one step per "
            f"categorical value; numeric tensors are one `np.frombuffer` each. The V2 JSON "
            f"form measured {protocol.get('V2 JSON tensors 1000', float('nan')):.2f}x."
        )
    if any(g.startswith("req/s with cache") for g in unmet):
        bound = 1 / ceiling["disabled_vs_bare"]
        lines.append(
            "- **Cache speed-up.** A hit cannot beat the bare endpoint, so the speed-up is "
            f"bounded by bare ÷ no-cache = {bound:.2f}x on this machine: scoring a row costs "
            f"onnxruntime {stages[1][2] * 1000:.0f} µs, little next to HTTP. InMobi's cache "
            "paid off against a model server far slower than its cache; here the model is "
            "already cheap."
        )
        cached, uncached = at_90["cached"], at_90["uncached"]
        lines.append(
            "  Below that bound, at 90% hits the worker with the cache scored its misses "
            f"{cached.rows_per_call or 0:.1f} rows an onnxruntime call against "
            f"{uncached.rows_per_call or 0:.1f} without it, at "
            f"{cached.cpu_us('server_cpu_us'):,.0f} against "
            f"{uncached.cpu_us('server_cpu_us'):,.0f} µs of CPU a request: with every request "
            "a miss, the misses that queue while a call runs go in the next one; among hits "
            "each miss is a call of its own, and each call's thread takes the GIL from the "
            "event loop, which bounds the worker."
        )
    return lines


def _why_versus(
    goals: list[list[str]],
    costs: dict[str, dict[str, float]],
    versus_disabled: dict[str, float],
    measured: dict[str, dict[str, Measured]],
    http_ms: float,
) -> list[str]:
    """For each model with a peer or cache goal not met: the bound its in-process costs put
    on one process (``_request_costs``; ``http_ms``: the bare endpoint's time a request),
    and what each workload not met cost in CPU a request, measured from outside the
    processes in the same runs (``measured``); for distinct single rows, what the
    cache-disabled service measured against the same peer."""
    lines = []
    for label, cost in costs.items():
        unmet = [g[0] for g in goals if g[-1] != "yes" and f"{label}:" in g[0]]
        if not unmet:
            continue
        workloads = dict.fromkeys(name.split(": ", 1)[1] for name in unmet)
        ort_100, ort_10 = cost["ort_100_ms"], cost["ort_10_ms"]
        python_ms = cost["parse_100_ms"] + cost["encode_100_ms"] + http_ms
        # One process: onnxruntime runs on both cores (it releases the GIL); parsing and
        # encoding a batch hold the GIL, so they run one at a time.
        all_miss = 2000 / (ort_100 + python_ms)
        mostly_hits = min(1000 / python_ms, 2000 / (ort_10 + python_ms))
        parts = [
            f"- **{label}** ({', '.join(workloads)}). In process, "
            f"onnxruntime scores 100 rows in {ort_100:.2f} ms, 10 in {ort_10:.2f} ms and one "
            f"in {cost['ort_1_ms'] * 1000:.0f} µs; parsing a 100-row body costs "
            f"{cost['parse_100_ms']:.2f} ms and encoding it {cost['encode_100_ms']:.2f} ms, and "
            f"HTTP ~{http_ms:.2f} ms (the bare endpoint's time a request), all holding the "
            "GIL. From these stages alone (a request's other work and the client's CPU left "
            f"out), one process on two cores could serve ~{all_miss:,.0f} all-miss "
            f"batches/s and ~{mostly_hits:,.0f} batches/s at 90% hits."
        ]
        for workload, bound in (
            ("batches of 100 distinct rows", all_miss),
            ("batches of 100 rows, 90% hits", mostly_hits),
        ):
            peer = _best_peer(measured.get(f"{label}: {workload}", {}).values())
            if peer is not None and 2 * peer.req_per_s > bound:
                parts.append(
                    f" {workload}: 2x the best peer would be {2 * peer.req_per_s:,.0f} req/s, "
                    "above that bound."
                )
        for workload in workloads:
            parts.append(_measured_cpu(workload, measured.get(f"{label}: {workload}", {})))
        single = f"{label}: distinct single rows"
        versus_peer = next(
            (
                float(g[2])
                for g in goals
                if g[0] == f"ctrserve ÷ best peer, {single}" and g[-1] != "yes"
            ),
            None,
        )
        if versus_peer is not None and single in versus_disabled:
            on_off = versus_disabled[single]
            parts.append(
                f" distinct single rows: with the cache disabled ctrserve measured "
                f"{versus_peer / on_off:.2f}x the best peer, with it on {versus_peer:.2f}x: the "
                "cache's work on a miss is the difference. The rest is one event loop doing "
                "HTTP, parsing and encoding a request, and its scoring threads an onnxruntime "
                f"call (one row: {cost['ort_1_ms'] * 1000:.0f} µs; the misses queued meanwhile "
                "share one)."
            )
        lines.append("".join(parts))
    return lines


def _best_peer(results: Iterable[Measured]) -> Measured | None:
    """The peer that served the most requests a second, of those that ran."""
    peers = [r for r in results if r.rounds and not r.server.startswith("ctrserve")]
    return max(peers, key=lambda r: r.req_per_s, default=None)


def _measured_cpu(workload: str, by_server: dict[str, Measured]) -> str:
    """What a workload cost a request in CPU, measured from outside the processes in the
    peer runs: ctrserve with and without its cache, the best peer, wrk; and what that
    implies for the goals (with both cores saturated, req/s is the cores over the server's
    and the client's CPU a request, and the client's share does not shrink with ours)."""
    ours, off = by_server.get("ctrserve"), by_server.get(DISABLED)
    peer = _best_peer(by_server.values())
    if ours is None or np.isnan(ours.cpu_us("server_cpu_us")):
        return ""
    cores = os.cpu_count() or 1
    server_us, client_us = ours.cpu_us("server_cpu_us"), ours.cpu_us("client_cpu_us")
    busy = ours.cpu_us("machine_busy")
    text = (
        f" On {workload}, CPU a request measured from outside the processes in these runs: "
        f"ctrserve {server_us:,.0f} µs"
    )
    if off is not None:
        off_us = off.cpu_us("server_cpu_us")
        text += f" (cache disabled {off_us:,.0f}: the cache's share {server_us / off_us - 1:+.0%})"
    if peer is not None:
        text += f", {peer.server} {peer.cpu_us('server_cpu_us'):,.0f}"
    text += f", wrk {client_us:,.0f} against ctrserve; {busy:.2f} of {cores} cores busy."
    if busy < 0.9 * cores:
        return text + (
            " The cores were not saturated: one worker's event loop, holding the GIL for "
            "HTTP, parsing and encoding, sets the pace."
        )
    text += (
        " With the cores saturated, req/s is the cores over the server's and wrk's CPU a request."
    )
    if peer is not None:
        peer_total = peer.cpu_us("server_cpu_us") + peer.cpu_us("client_cpu_us")
        text += (
            f" 2x {peer.server} needs ctrserve at ≤ {peer_total / 2 - client_us:,.0f} µs a "
            "request with wrk's share unchanged."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument("--ladder-dir", type=Path, default=ROOT / "models/ladder")
    parser.add_argument("--production-dir", type=Path, default=ROOT / "models/production")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/BENCHMARKS.md")
    parser.add_argument(
        "--only", choices=SECTIONS, default=None, help="run one section, print it, write nothing"
    )
    args = parser.parse_args()
    # Checked before the hour of runs, not when the section that reads them comes up.
    if not args.only and not (args.ladder_dir / "nffm" / POINTER_FILE).is_file():
        parser.error(f"{relative(args.ladder_dir)}: no ladder of models (`make bench` trains it)")
    args.model_dir = args.model_dir.resolve()  # servers under test start in an empty directory
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.production_dir = args.production_dir.resolve()
    suite = Suite(args.model_dir, args.ladder_dir, args.production_dir, args.duration)
    if args.only:
        getattr(suite, args.only)()
        return
    versus_peers = suite.peers()
    ceiling = suite.ceiling()
    batches = suite.batches()
    protocol = suite.protocol()
    suite.model_cost()
    cache_90 = suite.cache_effect()
    suite.workers()
    suite.profile()
    overhead = max(batches["1000"], batches["10000"])
    ceiling_runs, at_90 = suite.side_by_side["ceiling"], suite.side_by_side["cache effect: 90%"]
    goals = [
        *(
            _goal(
                f"ctrserve ÷ best peer, {name}",
                2.0,
                ratio,
                rounds=_round_ratios(suite.measured[name]),
            )
            for name, ratio in versus_peers.items()
        ),
        *(
            _goal(
                f"cache on ÷ cache disabled, {name}",
                0.95,
                ratio,
                rounds=_round_ratios(suite.measured[name], DISABLED),
            )
            for name, ratio in suite.versus_disabled.items()
            if "90% hits" not in name
        ),
        *(
            _goal(
                f"cache on ÷ cache disabled, {name}",
                4.0,
                ratio,
                rounds=_round_ratios(suite.measured[name], DISABLED),
            )
            for name, ratio in suite.versus_disabled.items()
            if "90% hits" in name and name.startswith("production")
        ),
        _goal(
            "cache-hit /predict req/s ÷ bare endpoint",
            0.9,
            ceiling["hit_vs_bare"],
            rounds=_by_round(ceiling_runs["/predict, cache hit"], ceiling_runs[BARE_NAME]),
        ),
        _goal(
            "cache-miss /predict req/s ÷ bare endpoint",
            0.5,
            ceiling["miss_vs_bare"],
            rounds=_by_round(ceiling_runs["/predict, cache miss"], ceiling_runs[BARE_NAME]),
        ),
        _goal("server time ÷ raw ORT at ≥ 1,000 rows (worst)", 1.5, overhead, False),
        _goal(
            "req/s with cache ÷ without, at 90% hits",
            5.0,
            cache_90,
            rounds=_by_round(at_90["cached"], at_90["uncached"]),
        ),
        _goal(
            "V2 binary server time ÷ raw ORT at 1,000 rows",
            2.0,
            protocol["V2 binary tensors 1000"],
            False,
        ),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    reasons = _why(
        goals,
        ceiling,
        suite.stages_ms,
        suite.profile_us,
        len(suite.spec.fields),
        protocol,
        at_90,
    ) + _why_versus(
        goals,
        suite.costs,
        suite.versus_disabled,
        suite.measured,
        1000 / ceiling["bare"],
    )
    suite.write(goals, reasons, args.out)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
