"""ctrserve at this tree against ctrserve at an earlier revision, closed loop, side by side.

The revision is checked out in a temporary git worktree and serves the default model that
its own trainer fits on the same data (a later spec.json need not be readable by an older
tree). Both serve with the closed-loop suite's cache settings (benchmarks/workloads.py),
plus ``--env`` for the revision (settings this tree no longer has, such as the response
cache 0168c04's suite gave it). wrk (1 thread, 16 connections) takes turns between the two,
every other round in reverse order, so a drift of this machine's speed falls on both; each
server's CPU a request is read from its process. Writes docs/VERSUS.md.

    python -m benchmarks.versus --revision 0168c04 --env CTR_RESPONSE_CACHE_MAX_BYTES=1066666
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from benchmarks.workloads import CACHE_ENTRIES, ours, requests_for, turns
from support.payloads import load_spec
from support.reports import relative
from support.servers import ROOT, listening_process, server
from support.wrk import write_bodies, wrk

logger = logging.getLogger("benchmarks")
WORKLOADS = ("distinct single rows", "repeated single row", "batches of 100 distinct rows")
DATA = ROOT / "data" / "synth.csv"
# The revision's trainer, run from its own tree: ctrserve.py dispatches to its training.
_TRAIN = (
    "import runpy, sys; tree = sys.argv[1]; sys.path.insert(0, tree); "
    "sys.argv = ['ctrserve', 'train', '--data', sys.argv[2], '--model', sys.argv[3], "
    "'--out', sys.argv[4], '--no-progress']; runpy.run_path(tree + '/ctrserve.py', "
    "run_name='__main__')"
)


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """``revision`` checked out in a temporary worktree, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="ctrserve-versus-") as scratch:
        tree = Path(scratch) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), revision], check=True)
        try:
            yield tree
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False)


def train(tree: Path, model: str) -> Path:
    """The default model fitted by ``tree``'s own trainer on :data:`DATA`; its folder."""
    out = tree / "models" / "default"
    command = [sys.executable, "-c", _TRAIN, str(tree), str(DATA), model, str(out)]
    subprocess.run(command, check=True, cwd=tree, stdout=subprocess.DEVNULL)
    return out


def serving(tree: Path, model_dir: Path, env: dict[str, str]) -> AbstractContextManager[str]:
    """``tree``'s service on ``model_dir`` until the block ends, its URL."""
    settings = {
        "CTR_MODEL_REPOSITORY": str(model_dir),
        "CTR_MODEL_DIR": str(model_dir),  # what older trees read
        "CTR_CACHE_MAXSIZE": str(CACHE_ENTRIES),
        "CTR_CACHE_TTL_S": "3600",
        **env,
    }
    return server([sys.executable, "-m", "app"], settings, tree=tree)


def measure(
    servers: dict[str, str], duration_s: int, rounds: int
) -> dict[tuple[str, str], list[tuple[float, float, float, int]]]:
    """(workload, server) -> per round: req/s, server CPU µs a request, p99 ms, errors."""
    spec = load_spec(ROOT / "models" / "default")
    results: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}
    for workload in WORKLOADS:
        bodies = write_bodies([ours(rows) for rows in requests_for(spec, workload)])
        for round_, name in turns(list(servers), rounds):
            base = servers[name]
            if round_ == 0:
                wrk(f"{base}/predict", bodies, max(2, duration_s // 2))  # warm-up
            process = listening_process(base)
            before = sum(process.cpu_times()[:2])
            run = wrk(f"{base}/predict", bodies, duration_s)
            cpu_us = (sum(process.cpu_times()[:2]) - before) / max(run.requests, 1) * 1e6
            results.setdefault((workload, name), []).append(
                (run.req_per_s, cpu_us, run.p99_ms, run.errors)
            )
            logger.info("%s, %s: %.0f req/s, %.0f µs", workload, name, run.req_per_s, cpu_us)
    return results


def report(
    results: dict[tuple[str, str], list[tuple[float, float, float, int]]],
    names: tuple[str, str],
    command: str,
) -> str:
    ours_, theirs = names
    lines = [
        "# Closed loop: this tree against an earlier revision",
        "",
        f"`{command}`: wrk, 1 thread, 16 connections; the two servers take turns, every "
        "other round in reverse order (medians of the rounds). The ratio is the median of "
        "the rounds' ratios, each of two runs back to back, with their range: the machine's "
        "speed drifts between rounds more than between two adjacent runs. CPU: the server "
        "process's user + system time a request.",
        "",
        f"| workload | {theirs} req/s | {ours_} req/s | ratio | rounds' ratios | "
        f"{theirs} CPU µs | {ours_} CPU µs | {theirs} p99 ms | {ours_} p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload in WORKLOADS:
        a, b = results[workload, ours_], results[workload, theirs]
        rate_a, rate_b = (statistics.median(r[0] for r in x) for x in (a, b))
        cpu_a, cpu_b = (statistics.median(r[1] for r in x) for x in (a, b))
        p99_a, p99_b = (statistics.median(r[2] for r in x) for x in (a, b))
        ratios = [ra[0] / rb[0] for ra, rb in zip(a, b, strict=True)]
        errors = sum(r[3] for r in a + b)
        lines.append(
            f"| {workload} | {rate_b:,.0f} | {rate_a:,.0f} | "
            f"**{statistics.median(ratios):.2f}** | {min(ratios):.2f} to {max(ratios):.2f} | "
            f"{cpu_b:,.0f} | {cpu_a:,.0f} | {p99_b:.2f} | {p99_a:.2f} | {errors} |"
        )
    lines += ["", "Rounds (req/s):", ""]
    for workload in WORKLOADS:
        for name in (theirs, ours_):
            rounds = ", ".join(f"{r[0]:,.0f}" for r in results[workload, name])
            lines.append(f"- {workload}, {name}: {rounds}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="0168c04", help="the earlier revision")
    parser.add_argument("--model", default="nffm", help="the default model's type")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the revision's service"
    )
    parser.add_argument("--duration", type=int, default=6, help="seconds a round")
    # two runs of 3 rounds read 0.72 and 0.94 on distinct single rows, the same two trees
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "VERSUS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not DATA.is_file() or not (ROOT / "models" / "default" / "CURRENT").is_file():
        raise SystemExit("run `make model` first: the data and this tree's default model")
    revision_env = dict(item.split("=", 1) for item in args.env)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    names = (f"this tree ({head})", args.revision)
    with ExitStack() as stack:
        tree = stack.enter_context(worktree(args.revision))
        model_dir = train(tree, args.model)
        servers = {
            names[0]: stack.enter_context(serving(ROOT, ROOT / "models" / "default", {})),
            names[1]: stack.enter_context(serving(tree, model_dir, revision_env)),
        }
        results = measure(servers, args.duration, args.rounds)
    flags = " ".join(f"--env {item}" for item in args.env)
    command = (
        f"python -m benchmarks.versus --revision {args.revision} {flags} "
        f"--rounds {args.rounds} --duration {args.duration}"
    )
    args.out.write_text(report(results, names, command))
    logger.info("wrote %s", relative(args.out))


if __name__ == "__main__":
    main()
