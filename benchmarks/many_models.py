"""Many models in one server, measured -> docs/MANY_MODELS.md (``make bench-models``).

1. **Shadow scoring at 100%**: the default model at its SLO rate (distinct single rows, k6
   open loop), with and without a shadow version scoring every request again, the two
   taking turns over several rounds: p99 and CPU a request.
2. **Two models in one process**: each model alone, against the two served together, at
   the same total rate (two k6 runs at half the rate each, at once, in every setup): CPU a
   request and p99.
3. **A sticky split**: 20,000 requests of 2,000 users, 10% split to a canary, over HTTP to
   2 workers: the share that met the canary, and whether any user met both versions.

Every server is started from a temporary copy of the models; nothing is left behind.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx

from app.repository.store import ModelRepository
from app.request import in_share
from benchmarks.open_loop import MAX_VUS, _tree_cpu_s
from support.faults import second_version
from support.k6 import OpenLoopResult, run, write_slices
from support.payloads import load_spec, unique_rows
from support.prometheus import metric
from support.reports import machine, markdown_section, relative, run_and_report
from support.servers import ROOT, server

logger = logging.getLogger("benchmarks.many_models")


def _slices(model_dir: Path, folder: Path, seed: int) -> Path:
    spec = load_spec(model_dir)
    rows = unique_rows(spec, MAX_VUS * 400, seed=seed)
    return write_slices([{"features": r} for r in rows], MAX_VUS, folder)


def _repository(scratch: Path, models: dict[str, Path]) -> Path:
    root = scratch / "models"
    shutil.rmtree(root, ignore_errors=True)
    for name, source in models.items():
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("checkpoint.pt"))
    return root


# -- 1. shadow scoring ---------------------------------------------------------------------
def shadow_cost(
    scratch: Path, model_dir: Path, rates: list[int], rounds: int, seconds: int
) -> dict:
    root = _repository(scratch, {"ctr": model_dir})
    ctr = root / "ctr"
    candidate = ModelRepository(ctr).publish(second_version(ctr, scratch / "candidate"))
    ModelRepository(ctr).set_label("candidate", candidate)
    slices = _slices(model_dir, scratch / "shadow-slices", seed=31)
    runs: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for shadowed in (False, True) if round_ % 2 == 0 else (True, False):
            policy = ctr / "policy.yaml"
            if shadowed:
                policy.write_text("shadow: {version: candidate, sample: 1.0}\n")
            else:
                policy.unlink(missing_ok=True)
            env = {"CTR_MODEL_REPOSITORY": str(root), "CTR_CACHE_MAXSIZE": "100000"}
            with server([sys.executable, "-m", "app"], env) as base:
                cpu_s = _tree_cpu_s(base)
                url = f"{base}/models/ctr/predict"
                run(url, slices, rates[0], 2, MAX_VUS)  # warm-up
                for rate in rates:
                    before, counted = cpu_s(), _shadow_outcomes(base)
                    start = (round_ * len(rates) + rates.index(rate) + 1) * 7919
                    result = run(url, slices, rate, seconds, MAX_VUS, start)
                    cpu_us = (cpu_s() - before) / max(result.sent, 1) * 1e6
                    outcomes = {k: v - counted[k] for k, v in _shadow_outcomes(base).items()}
                    runs.append({"shadow": shadowed, "round": round_, "rate": rate,
                                 "cpu_us": cpu_us, **_figures(result), **outcomes})  # fmt: skip
                    logger.info("shadow %s, %d/s: p99 %.2f ms, %.0f µs a request, %s",
                                shadowed, rate, result.p99_ms, cpu_us, outcomes)  # fmt: skip
    return {"rates": rates, "rounds": rounds, "seconds": seconds, "runs": runs}


def _shadow_outcomes(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        f"shadow_{outcome}": metric(text, "ctr_shadow_requests_total", outcome=outcome)
        for outcome in ("scored", "dropped", "failed")
    }


def _figures(result: OpenLoopResult) -> dict[str, float]:
    return {"sent": result.sent, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "failed": result.failed, "dropped": result.dropped}  # fmt: skip


# -- 2. two models in one process ----------------------------------------------------------
SETUPS = {  # what each of the two halves of the traffic asks
    "ctr alone": ("ctr", "ctr"),
    "cvr alone": ("cvr", "cvr"),
    "ctr + cvr": ("ctr", "cvr"),
}


def two_models_cost(
    scratch: Path, model_dir: Path, cvr_dir: Path, rate: int, rounds: int, seconds: int
) -> dict:
    sources = {"ctr": model_dir, "cvr": cvr_dir}
    slices = {
        "ctr": _slices(model_dir, scratch / "ctr-slices", seed=41),
        "cvr": _slices(cvr_dir, scratch / "cvr-slices", seed=42),
    }
    runs: list[dict[str, Any]] = []
    names = list(SETUPS)
    for round_ in range(rounds):
        for setup in names if round_ % 2 == 0 else names[::-1]:
            asked = SETUPS[setup]
            models = {name: sources[name] for name in dict.fromkeys(asked)}
            root = _repository(scratch, models)
            env = {"CTR_MODEL_REPOSITORY": str(root),
                   "CTR_CACHE_MAXSIZE": str(100_000 * len(models))}  # fmt: skip
            with server([sys.executable, "-m", "app"], env) as base:
                cpu_s = _tree_cpu_s(base)
                halves = [(f"{base}/models/{name}/predict", slices[name]) for name in asked]
                for url, folder in halves:
                    run(url, folder, rate // 4, 2, MAX_VUS)  # warm-up
                before = cpu_s()
                starts = [(round_ + 1) * 7919, (round_ + 1) * 7919 + 3]
                with ThreadPoolExecutor(2) as pool:
                    futures = [
                        pool.submit(run, url, folder, rate // 2, seconds, MAX_VUS // 2, first)
                        for (url, folder), first in zip(halves, starts, strict=True)
                    ]
                    results = [future.result() for future in futures]
                sent = sum(r.sent for r in results)
                cpu_us = (cpu_s() - before) / max(sent, 1) * 1e6
            runs.append({"setup": setup, "round": round_, "cpu_us": cpu_us, "sent": sent,
                         "p99_ms": max(r.p99_ms for r in results),
                         "failed": sum(r.failed for r in results),
                         "dropped": sum(r.dropped for r in results)})  # fmt: skip
            logger.info("%s: %.0f µs a request, p99 %.2f ms", setup, cpu_us, runs[-1]["p99_ms"])
    return {"rate": rate, "rounds": rounds, "seconds": seconds, "runs": runs}


# -- 3. a sticky split -----------------------------------------------------------------------
def split_share(scratch: Path, model_dir: Path, users: int, rounds: int, percent: float) -> dict:
    root = _repository(scratch, {"ctr": model_dir})
    ctr = root / "ctr"
    canary = ModelRepository(ctr).publish(second_version(ctr, scratch / "canary"))
    ModelRepository(ctr).set_label("canary", canary)
    (ctr / "policy.yaml").write_text(
        f"split: {{to: canary, percent: {percent}, key: header:X-User-Id}}\n"
    )
    names = [f"user-{i}" for i in range(users)]
    env = {"CTR_MODEL_REPOSITORY": str(root), "CTR_WORKERS": "2"}
    with server([sys.executable, "-m", "app"], env) as base, httpx.Client(timeout=10) as client:

        def ask(user: str) -> tuple[str, str]:
            answer = client.post(f"{base}/models/ctr/predict", json={"features": {}},
                                 headers={"X-User-Id": user})  # fmt: skip
            return user, answer.json()["model_version"]

        met: dict[str, set[str]] = {name: set() for name in names}
        with ThreadPoolExecutor(8) as pool:
            for user, version in pool.map(ask, names * rounds):
                met[user].add(version)
    on_canary = Counter(canary in versions for versions in met.values())[True]
    many = 1_000_000  # the hash alone, in process, over many more users
    return {
        "hash_share_of_1m_users": sum(in_share(f"ctr/user-{i}", percent / 100) for i in range(many))
        / many,
        "users": users,
        "requests": users * rounds,
        "percent": percent,
        "share": on_canary / users,
        "users_on_both": sum(len(versions) > 1 for versions in met.values()),
        # the share's standard deviation over sets of this many independent keys
        "sigma": (percent / 100 * (1 - percent / 100) / users) ** 0.5,
    }


# -- the report ----------------------------------------------------------------------------
def report(results: dict, started: str) -> str:
    shadow, two, split = results["shadow"], results["two_models"], results["split"]

    def median(runs: list[dict], key: str, **match: object) -> float:
        return statistics.median(r[key] for r in runs if all(r[k] == v for k, v in match.items()))

    shadow_rows = [
        [f"{r['rate']:,}", str(r["round"] + 1), "on" if r["shadow"] else "off",
         f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['cpu_us']:.0f}",
         f"{r['shadow_scored']:.0f} / {r['shadow_dropped']:.0f} / {r['shadow_failed']:.0f}",
         f"{r['failed']} / {r['dropped']}"]
        for r in sorted(shadow["runs"], key=lambda r: (r["rate"], r["round"], r["shadow"]))
    ]  # fmt: skip
    summary = []
    for rate in shadow["rates"]:
        p99 = [median(shadow["runs"], "p99_ms", rate=rate, shadow=v) for v in (False, True)]
        cpu = [median(shadow["runs"], "cpu_us", rate=rate, shadow=v) for v in (False, True)]
        summary.append(
            f"at {rate:,}/s p99 {p99[0]:.2f} ms off, {p99[1]:.2f} ms on "
            f"(**{p99[1] / p99[0]:.2f}x**), CPU a request {cpu[0]:.0f} µs off, {cpu[1]:.0f} µs "
            f"on (**{cpu[1] / cpu[0]:.2f}x**)"
        )
    two_rows = [
        [str(r["round"] + 1), r["setup"], f"{r['cpu_us']:.0f}", f"{r['p99_ms']:.2f}",
         f"{r['failed']} / {r['dropped']}"]
        for r in two["runs"]
    ]  # fmt: skip
    cpu_by = {setup: median(two["runs"], "cpu_us", setup=setup) for setup in SETUPS}
    alone = (cpu_by["ctr alone"] + cpu_by["cvr alone"]) / 2
    p99_by = {setup: median(two["runs"], "p99_ms", setup=setup) for setup in SETUPS}
    sections = [
        "# Many models in one server",
        "",
        f"`make bench-models` on {machine()}, started {started}; models: "
        f"{results['model_dir']} (ctr), {results['cvr_dir']} (cvr). "
        "Generated by benchmarks/many_models.py; compare figures within one run only.",
        "",
        markdown_section(
            "Shadow scoring at 100% of the default model's requests",
            f"Distinct single rows, k6 open loop, {shadow['seconds']} s a run, shadow off "
            "and on taking turns over the rounds. The shadow is a second version of the "
            "model scoring every request again off its path (app/scoring/shadow.py: a bounded "
            "queue, one thread at nice +19 taking everything queued 10 ms after a job "
            "comes). Medians: " + "; ".join(summary) + ".",
            [
                "rate /s",
                "round",
                "shadow",
                "p50 ms",
                "p99 ms",
                "CPU µs a request",
                "shadow scored / dropped / failed",
                "failed / dropped",
            ],
            shadow_rows,
        ),
        markdown_section(
            f"Two models in one process, {two['rate']:,} requests/s in all",
            f"Two k6 runs at {two['rate'] // 2:,}/s each, at once, {two['seconds']} s: both to "
            "the click model (ctr alone), both to the conversion model (cvr alone), or one to "
            "each, served by one process, each model with its own cache (ctr + cvr). Medians: "
            f"CPU a request {cpu_by['ctr alone']:.0f} µs (ctr alone), "
            f"{cpu_by['cvr alone']:.0f} µs (cvr alone), {cpu_by['ctr + cvr']:.0f} µs together: "
            f"**{cpu_by['ctr + cvr'] / alone:.2f}x** "
            f"the mean of the two alone; p99 {p99_by['ctr alone']:.2f}, "
            f"{p99_by['cvr alone']:.2f} and {p99_by['ctr + cvr']:.2f} ms.",
            ["round", "served", "CPU µs a request", "p99 ms (worse half)", "failed / dropped"],
            two_rows,
        ),
        markdown_section(
            f"A sticky split of {split['percent']:g}%",
            f"{split['requests']:,} requests of {split['users']:,} users (`X-User-Id`) over "
            "HTTP to 2 workers; each user is hashed on its own (BLAKE2b of model/user), so "
            f"the share over {split['users']:,} users has a standard deviation of "
            f"{split['sigma'] * 100:.2f} points around the share asked for.",
            [
                "users on the canary",
                "users that met both versions",
                "the hash's share of 1,000,000 users",
            ],
            [
                [
                    f"{split['share'] * 100:.2f}%",
                    str(split["users_on_both"]),
                    f"{split['hash_share_of_1m_users'] * 100:.2f}%",
                ]
            ],
        ),
    ]
    return "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--cvr-dir", type=Path, default=ROOT / "models" / "cvr")
    parser.add_argument(
        "--rates",
        default="2500,3500",
        help="shadow runs at these rates (the default model's SLO rate is 3,500/s in "
        "docs/OPEN_LOOP.md)",
    )
    parser.add_argument("--rate", type=int, default=3000, help="two models: the total rate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()

    rates = [int(rate) for rate in args.rates.split(",")]

    def measure(scratch: Path) -> dict:
        return {
            "model_dir": relative(args.model_dir),
            "cvr_dir": relative(args.cvr_dir),
            "shadow": shadow_cost(scratch, args.model_dir, rates, args.rounds, args.seconds),
            "two_models": two_models_cost(scratch, args.model_dir, args.cvr_dir, args.rate,
                                          args.rounds, args.seconds),
            "split": split_share(scratch, args.model_dir, 2000, 10, 10.0),
        }  # fmt: skip

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for client in ("httpx", "httpx2"):  # no line a request
        logging.getLogger(client).setLevel(logging.WARNING)
    run_and_report(
        "ctrserve-models-",
        measure,
        report,
        ROOT / "docs" / "MANY_MODELS.md",
        ROOT / "docs" / "many_models.json",
    )


if __name__ == "__main__":
    main()
