"""Open-loop serving benchmark: the tail latency each server holds at a fixed request rate.

    make bench-open        # or: .venv/bin/python -m benchmarks.open_loop [--models default]

Requests arrive on k6's schedule (``constant-arrival-rate``) whatever the server does, as
a user's traffic does; a closed-loop client (wrk) instead waits for each answer and so never
meets the queue a slow server builds. Every server is started in its best honest
configuration, and they climb a ladder of rates together: at each rate each server still
climbing runs in turn, with the whole machine (the others idle), until its p99 passes twice
the SLO or requests fail or cannot be sent. Taking turns rung by rung matters here: this
machine's speed can halve within minutes, which, with each server's ladder run whole, fell
on one server and not another. A server's **SLO rate** is the highest rate whose
p99 ≤ 10 ms (single rows) or ≤ 50 ms (100-row batches) with nothing failed or dropped.

Every run sends rows no earlier run of that server sent to its cache: each k6 VU replays
its own slice of distinct rows from its own offset, and every cache is sized to
``CACHE_ENTRIES`` rows, so a row back after its VU's slice came round was evicted long
before. CPU a request is read from outside the processes: the server's process tree, and
k6's own (reported, so the load generator is never an unseen bottleneck). ctrserve's
single-row tail at 30%, 50% and 70% of its closed-loop maximum is set beside the floor's at
the same rates, each run right after ctrserve's (benchmarks/floor_app.py: the same uvicorn
answering a fixed body), which is what the machine, uvicorn and k6 cost there, so a tail no
server could beat on this machine is told apart from one that is ctrserve's.

Writes docs/OPEN_LOOP.md and docs/open_loop.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx2 as httpx
import numpy as np
import psutil

from app.core.config import Settings
from app.features.spec import FeatureSpec
from benchmarks.workloads import CACHE_ENTRIES, DISABLED, Server, installed, servers
from support.k6 import BODIES_PER_VU, OpenLoopResult, run, write_slices
from support.payloads import Row, load_spec, unique_rows
from support.reports import machine, markdown_section, relative
from support.servers import ROOT, listening_process, server
from support.wrk import write_bodies, wrk

logger = logging.getLogger("benchmarks.open_loop")
MAX_VUS = 64
# An overload run: FLOOD_VUS each open a connection as the run starts, for OVERLOAD_SECONDS.
FLOOD_VUS = 256
OVERLOAD_SECONDS = 20


@dataclass(frozen=True)
class Workload:
    name: str
    rows: int  # a request's rows
    repeats: float  # share of rows from a hot set of 1,000 (1.0 with one row: the same row)
    slo_ms: float
    rates: tuple[int, ...]


WORKLOADS = (
    Workload(
        "distinct single rows",
        1,
        0.0,
        10.0,
        (250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 7000, 8000),
    ),
    Workload(
        "repeated single row",
        1,
        1.0,
        10.0,
        (500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10000, 12000, 14000),
    ),
    Workload(
        "100-row batches",
        100,
        0.0,
        50.0,
        (25, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000, 2500),
    ),
    Workload(
        "100-row batches, 90% repeats",
        100,
        0.9,
        50.0,
        (50, 100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000),
    ),
)


@dataclass
class Ladder:
    server: str
    workload: str
    runs: list[OpenLoopResult] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)  # per run, a request
    skipped: str = ""

    def slo_rate(self, slo_ms: float) -> int:
        """The highest rate held within the SLO with nothing failed or dropped (0: none)."""
        held = [r.rate for r in self.runs if r.ok and r.p99_ms <= slo_ms]
        return max(held, default=0)


def _bodies_for(spec: FeatureSpec, workload: Workload, vus: int, seed: int) -> list[list[Row]]:
    """Each request's rows: ``vus * BODIES_PER_VU`` requests (batches: fewer a VU)."""
    per_vu = BODIES_PER_VU if workload.rows == 1 else BODIES_PER_VU // 4
    count = vus * per_vu
    if workload.repeats >= 1.0:
        return [unique_rows(spec, 1, seed)] * count
    rng = np.random.default_rng(seed)
    hot = unique_rows(spec, 1_000, seed + 1)
    fresh = iter(unique_rows(spec, count * workload.rows, seed + 2))
    return [
        [
            hot[int(rng.integers(len(hot)))] if rng.uniform() < workload.repeats else next(fresh)
            for _ in range(workload.rows)
        ]
        for _ in range(count)
    ]


def _tree_cpu_s(base: str) -> Callable[[], float]:
    """A reading of the CPU seconds of the server tree listening at ``base``."""
    process = listening_process(base)
    while process.parent() is not None and process.parent().pid != psutil.Process().pid:
        process = process.parent()  # a worker of a supervisor: measure the whole tree

    def cpu_s() -> float:
        total = 0.0
        for member in [process, *process.children(recursive=True)]:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    return cpu_s


@dataclass
class _Climber:
    """A server climbing one workload's ladder: where it listens, its bodies, its figures."""

    entry: Server
    url: str
    slices: Path
    cpu_s: Callable[[], float]
    ladder: Ladder

    def step(self, workload: Workload, rate: int, position: int, duration_s: int) -> bool:
        """One rung; whether the server climbs on (p99 within twice the SLO, ≤ 1% lost)."""
        before = self.cpu_s()
        result = run(self.url, self.slices, rate, duration_s, MAX_VUS, (position + 1) * 7919)
        self.ladder.server_cpu_us.append((self.cpu_s() - before) / max(result.sent, 1) * 1e6)
        self.ladder.runs.append(result)
        logger.info(
            "%s, %s @ %d/s: p50 %.2f p99 %.2f ms, failed %d, dropped %d, k6 %.0f µs a request",
            *(self.entry.name, workload.name, rate, result.p50_ms, result.p99_ms),
            *(result.failed, result.dropped, result.k6_cpu_s / max(result.sent, 1) * 1e6),
        )
        lost = result.failed + result.dropped
        return result.p99_ms <= 2 * workload.slo_ms and lost <= 0.01 * max(result.sent, 1)


def climb(climbers: list[_Climber], workload: Workload, duration_s: int) -> list[Ladder]:
    """Every server up the ladder together: at each rate each server still climbing runs in
    turn (the order reversed every rung), so a drift of the machine's speed, which here can
    halve it within minutes, falls on all of them alike. A server stops at its first rate
    whose p99 passes twice the SLO or that loses requests."""
    for climber in climbers:  # warm-up: caches, first calls
        run(climber.url, climber.slices, workload.rates[0], 2, MAX_VUS, start=0)
    climbing = list(climbers)
    for position, rate in enumerate(workload.rates):
        order = climbing if position % 2 == 0 else climbing[::-1]
        climbing = [c for c in order if c.step(workload, rate, position, duration_s)]
        if not climbing:
            break
    return [climber.ladder for climber in climbers]


def _floor_server() -> AbstractContextManager[str]:
    """benchmarks/floor_app.py on the uvicorn ctrserve runs on, with its event loop (uvicorn's
    own default is uvloop: 27 against 34 µs of CPU a request): the machine's own tail."""
    loop = Settings.model_fields["event_loop"].default
    command = [
        *(sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}"),
        *("--http", "httptools", "--loop", loop, "--log-level", "warning", "--no-access-log"),
        "benchmarks.floor_app:app",
    ]
    return server(command, {}, health="/")


def closed_loop_max(base: str, spec: FeatureSpec, duration_s: int) -> float:
    """wrk's req/s on distinct single rows, 16 connections: the closed-loop maximum."""
    bodies = write_bodies([{"features": r} for r in unique_rows(spec, 100_000, seed=99)])
    return wrk(f"{base}/predict", bodies, duration_s, 16).req_per_s


def overload(
    base: str, slices: Path, rate: int, duration_s: int
) -> tuple[OpenLoopResult, int, bool]:
    """``rate`` for ``duration_s``; then whether one normal request is answered at once."""
    result = run(f"{base}/predict", slices, rate, duration_s, FLOOD_VUS, start=104_729)
    after = httpx.post(f"{base}/predict", json={"features": {}}, timeout=5)
    return result, after.status_code, after.elapsed.total_seconds() < 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["default", "production/nffm"])
    parser.add_argument("--duration", type=int, default=8, help="seconds a rate")
    parser.add_argument(
        "--servers",
        nargs="*",
        default=None,
        help="measure only these servers again; the last run's figures of the others are kept",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/OPEN_LOOP.md")
    parser.add_argument(
        "--render",
        action="store_true",
        help="write the report again from its JSON, measure nothing",
    )
    parser.add_argument(
        "--settings",
        action="store_true",
        help="only the A/B of ctrserve's tuned settings -> docs/OPEN_LOOP_SETTINGS.md",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if args.settings:
        out = args.out.with_name("OPEN_LOOP_SETTINGS.md")
        out.write_text(settings_ab((ROOT / "models" / args.models[0]).resolve(), args.duration))
        logger.info("wrote %s", relative(out))
        return
    raw_path = args.out.with_name("open_loop.json")
    if args.render:
        raw = json.loads(raw_path.read_text())
    elif args.servers:  # measure these servers again, keep the others' figures
        raw = json.loads(raw_path.read_text())
        for model in args.models:
            kept = raw["models"][model]
            kept["ladders"] = [x for x in kept["ladders"] if x["server"] not in args.servers]
            fresh = measure(model, args.duration, args.servers)
            kept["ladders"] += fresh.pop("ladders")
            kept.update(fresh)
        raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    else:
        raw = {"machine": machine(), "models": {}}
        for model in args.models:
            raw["models"][model] = measure(model, args.duration, None)
        raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    sections = []
    for model, measured in raw["models"].items():
        model_dir = (ROOT / "models" / model).resolve()
        entries = servers(model_dir, load_spec(model_dir))
        ladders = [Ladder(**{**x, "runs": [OpenLoopResult(**r) for r in x["runs"]]})
                   for x in measured["ladders"]]  # fmt: skip
        extra = {k: v for k, v in measured.items() if k != "ladders"}
        names = {x.server for x in ladders}
        sections.append(_report(model_dir, [e for e in entries if e.name in names], ladders, extra))
    args.out.write_text(_document(str(raw["machine"]), sections))
    logger.info("wrote %s", relative(args.out))


def measure(model: str, duration_s: int, only: list[str] | None) -> dict[str, object]:
    """Every server's ladders on ``model`` (and ctrserve's extras), as JSON-ready data."""
    model_dir = (ROOT / "models" / model).resolve()
    spec = load_spec(model_dir)
    entries = [e for e in servers(model_dir, spec) if e.name != DISABLED]
    entries = [e for e in entries if not only or e.name in only]
    ladders: list[Ladder] = []
    extra: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="ctrserve-open-") as scratch, ExitStack() as stack:
        plans = {w.name: _bodies_for(spec, w, MAX_VUS, seed=3) for w in WORKLOADS}
        started: list[tuple[Server, str]] = []
        for entry in entries:  # all started, each measured in turn while the others idle
            why = installed(entry.environment)
            if why:
                ladders += [Ladder(entry.name, w.name, skipped=why) for w in WORKLOADS]
            else:
                started.append((entry, stack.enter_context(entry.start())))
        cpu = {entry.name: _tree_cpu_s(base) for entry, base in started}
        slices: dict[tuple[str, int], Path] = {}
        for position, workload in enumerate(WORKLOADS):
            climbers = []
            for entry, base in started:
                folder = Path(scratch) / f"{entry.name}-{position}"
                bodies = [entry.body(rows) for rows in plans[workload.name]]
                slices[entry.name, position] = write_slices(bodies, MAX_VUS, folder)
                ladder = Ladder(entry.name, workload.name)
                url = f"{base}{entry.path}"
                climbers.append(
                    _Climber(entry, url, slices[entry.name, position], cpu[entry.name], ladder)
                )
            ladders += climb(climbers, workload, duration_s)
        ours = next((base for entry, base in started if entry.name == "ctrserve"), None)
        if ours is not None:
            floor = stack.enter_context(_floor_server())
            single = slices["ctrserve", 0]
            extra = _ctrserve_extras(ours, floor, spec, single, ladders, duration_s)
    return {"ladders": [asdict(ladder) for ladder in ladders], **extra}


SETTINGS_VARIANTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("as shipped", {}),
    ("gc.freeze off (CTR_GC_FREEZE=false)", {"CTR_GC_FREEZE": "false"}),
    ("uvloop (CTR_EVENT_LOOP=uvloop)", {"CTR_EVENT_LOOP": "uvloop"}),
)
# The variants whose accepting of new connections under overload is compared.
LOOP_VARIANTS: tuple[tuple[str, dict[str, str]], ...] = (
    SETTINGS_VARIANTS[0],
    SETTINGS_VARIANTS[2],
)


def settings_ab(model_dir: Path, duration_s: int) -> str:
    """ctrserve as shipped against each tuned setting turned off, distinct single rows at
    40% and 70% of its closed-loop maximum, the variants taking turns over three rounds (a
    drift of the machine's speed falls on all of them); then, for the event loops, a flood of
    new connections at twice that maximum."""
    spec = load_spec(model_dir)
    env = {"CTR_MODEL_REPOSITORY": str(model_dir), "CTR_CACHE_MAXSIZE": str(CACHE_ENTRIES)}
    results: dict[str, list[OpenLoopResult]] = {name: [] for name, _ in SETTINGS_VARIANTS}
    floods: dict[str, list[OpenLoopResult]] = {name: [] for name, _ in LOOP_VARIANTS}
    with tempfile.TemporaryDirectory(prefix="ctrserve-settings-") as scratch:
        slices = write_slices(
            [{"features": r} for r in unique_rows(spec, MAX_VUS * BODIES_PER_VU, seed=13)],
            MAX_VUS,
            Path(scratch),
        )
        with server([sys.executable, "-m", "app"], env) as base:
            maximum = closed_loop_max(base, spec, duration_s)
        rates = (_round_rate(0.4 * maximum), _round_rate(0.7 * maximum))
        flood = _round_rate(2 * maximum)
        for round_ in range(3):
            order = SETTINGS_VARIANTS if round_ % 2 == 0 else SETTINGS_VARIANTS[::-1]
            for name, extra_env in order:
                with server([sys.executable, "-m", "app"], {**env, **extra_env}) as base:
                    run(f"{base}/predict", slices, rates[0], 2, MAX_VUS)  # warm-up
                    for rate in rates:
                        start = (round_ * len(rates) + rates.index(rate)) * 7919
                        results[name].append(
                            run(f"{base}/predict", slices, rate, duration_s, MAX_VUS, start)
                        )
        for round_ in range(2):
            order = LOOP_VARIANTS if round_ % 2 == 0 else LOOP_VARIANTS[::-1]
            for name, extra_env in order:
                with server([sys.executable, "-m", "app"], {**env, **extra_env}) as base:
                    start = (round_ + 1) * 104_729
                    floods[name].append(
                        run(f"{base}/predict", slices, flood, OVERLOAD_SECONDS, FLOOD_VUS, start)
                    )
    rows = [
        [name, f"{r.rate:,}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.p999_ms:.2f}",
         str(r.dropped), str(r.failed)]
        for name, runs in results.items() for r in sorted(runs, key=lambda r: r.rate)
    ]  # fmt: skip
    flood_rows = [
        [name, f"{r.rate:,}", f"{r.sent:,}", f"{r.sent - r.failed:,}", str(r.failed),
         f"{r.ok_p99_ms:.1f}", f"{r.ok_max_ms:,.1f}"]
        for name, runs in floods.items() for r in runs
    ]  # fmt: skip
    return (
        "# ctrserve's tuned settings, open loop\n\n"
        f"`make bench-open` on {machine()} ({relative(model_dir)}). Each setting the service "
        "tunes stays only while turning it off raises p99 at a fixed rate, or the wait of a "
        "new connection under overload. Closed-loop "
        f"maximum (wrk, as shipped): {maximum:,.0f} req/s; the rates are 40% and 70% of it.\n\n"
        + markdown_section(
            "As shipped against each setting off (distinct single rows, three rounds)",
            "k6 constant-arrival-rate, one worker, every run its own fresh rows.",
            ["variant", "rate /s", "p50 ms", "p99 ms", "p99.9 ms", "dropped", "failed"],
            rows,
        )
        + "\n"
        + markdown_section(
            "New connections under overload: asyncio (as shipped) against uvloop (two rounds)",
            f"k6 opens its {FLOOD_VUS} connections as the run starts, at twice the closed-loop "
            f"maximum for {OVERLOAD_SECONDS} s: a request on a connection the server has not "
            "yet accepted waits in the listen queue, which k6 counts. `answered`: 2xx; "
            "`refused`: 503 + Retry-After (or no answer).",
            [
                "variant",
                "rate /s",
                "sent",
                "answered",
                "refused",
                "answered p99 ms",
                "answered max ms",
            ],
            flood_rows,
        )
    )


def _round_rate(rate: float) -> int:
    return max(100, int(round(rate, -2)))


# Shares of ctrserve's closed-loop maximum at which its single-row tail is measured.
TAIL_SHARES = (0.3, 0.5, 0.7)


def _ctrserve_extras(
    base: str,
    floor: str,
    spec: FeatureSpec,
    bodies: Path,
    ladders: list[Ladder],
    duration_s: int,
) -> dict[str, object]:
    """ctrserve's own figures: its closed-loop maximum, p99 at shares of it (each run
    followed by the floor's at the same rate, with the same bodies), and overload."""
    maximum = closed_loop_max(base, spec, duration_s)
    run(f"{floor}/predict", bodies, int(TAIL_SHARES[0] * maximum), 2, MAX_VUS)  # warm-up
    tail, floors = [], []
    for share, start in zip(TAIL_SHARES, (31337, 41337, 51337), strict=True):
        rate = int(share * maximum)
        tail.append(asdict(run(f"{base}/predict", bodies, rate, duration_s, MAX_VUS, start)))
        floors.append(asdict(run(f"{floor}/predict", bodies, rate, duration_s, MAX_VUS, start)))
    single = WORKLOADS[0]
    distinct = next(x for x in ladders if (x.server, x.workload) == ("ctrserve", single.name))
    slo = max(distinct.slo_rate(single.slo_ms), single.rates[0])
    flood, status_after, quick = overload(base, bodies, 3 * slo, OVERLOAD_SECONDS)
    return {
        "closed_loop_max": maximum,
        "tail": tail,
        "floor": floors,
        "overload": {"rate": 3 * slo, **asdict(flood), "after": status_after, "quick": quick},
    }


def _report(
    model_dir: Path,
    entries: list[Server],
    ladders: list[Ladder],
    extra: dict[str, object],
) -> str:
    parts = [
        f"## {relative(model_dir)}\n",
        markdown_section(
            "Servers",
            "Each in its best honest configuration found here; all started, each measured in "
            "turn while the others idle.",
            ["server", "configuration"],
            [[entry.name, entry.note] for entry in entries],
        ),
    ]
    rows = []
    best_peer: dict[str, int] = {}
    ours: dict[str, int] = {}
    for workload in WORKLOADS:
        for ladder in (x for x in ladders if x.workload == workload.name):
            rate = ladder.slo_rate(workload.slo_ms)
            if ladder.server.startswith("ctrserve"):
                ours[workload.name] = max(ours.get(workload.name, 0), rate)
            elif not ladder.skipped:
                best_peer[workload.name] = max(best_peer.get(workload.name, 0), rate)
            at = next((r for r in ladder.runs if r.rate == rate), None)
            index = ladder.runs.index(at) if at is not None else -1
            rows.append(
                [
                    workload.name,
                    ladder.server,
                    ladder.skipped or f"{rate:,}",
                    "" if at is None else f"{at.p50_ms:.2f} / {at.p99_ms:.2f} / {at.p999_ms:.2f}",
                    "" if at is None else f"{ladder.server_cpu_us[index]:,.0f}",
                    "" if at is None else f"{at.k6_cpu_s / max(at.sent, 1) * 1e6:,.0f}",
                ]
            )
    parts.append(
        markdown_section(
            "SLO rate: the highest rate held (p99 ≤ 10 ms single rows, ≤ 50 ms batches)",
            "Each server with the whole machine while the others idle, the servers taking turns "
            "at each rate, k6 constant-arrival-rate, nothing failed or dropped at the rate "
            "given; latencies at that rate; CPU a request "
            "from outside the processes (the server's process tree; k6's own).",
            [
                "workload",
                "server",
                "SLO rate /s",
                "p50 / p99 / p99.9 ms",
                "server CPU µs",
                "k6 CPU µs",
            ],
            rows,
        )
    )
    ratios = [
        [w.name, f"{ours.get(w.name, 0):,}", f"{best_peer.get(w.name, 0):,}",
         f"{ours.get(w.name, 0) / best_peer[w.name]:.2f}" if best_peer.get(w.name) else "n/a"]
        for w in WORKLOADS
    ]  # fmt: skip
    parts.append(
        markdown_section(
            "ctrserve ÷ best peer, SLO rate",
            "ctrserve's better configuration against the best peer's.",
            ["workload", "ctrserve", "best peer", "ratio (goal ≥ 2; repeated row ≥ 1x Triton)"],
            ratios,
        )
    )
    ladder_rows = [
        [x.server, x.workload, f"{r.rate:,}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
         f"{r.p999_ms:.2f}", str(r.failed), str(r.dropped), f"{cpu:,.0f}"]
        for x in ladders for r, cpu in zip(x.runs, x.server_cpu_us, strict=True)
    ]  # fmt: skip
    parts.append(
        markdown_section(
            "Every run",
            "Each server's ladder, up to the first rate past twice the SLO or losing requests.",
            [
                "server",
                "workload",
                "rate /s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "failed",
                "dropped",
                "server CPU µs",
            ],
            ladder_rows,
        )
    )
    if extra:
        tail, floor, flood = extra["tail"], extra["floor"], extra["overload"]
        assert isinstance(tail, list)
        assert isinstance(floor, list)
        assert isinstance(flood, dict)
        parts.append(_tail_section(float(extra["closed_loop_max"]), tail, floor))  # type: ignore[arg-type]
        parts.append(
            markdown_section(
                "ctrserve: overload",
                f"Distinct single rows. The overload run sends 3x ctrserve's SLO rate for "
                f"{OVERLOAD_SECONDS} s: the excess must be refused (503 + Retry-After) and no "
                "accepted request may wait over 1 s.",
                ["figure", "value"],
                [
                    ["overload rate", f"{flood['rate']:,}/s for {OVERLOAD_SECONDS} s"],
                    ["refused (503) or failed", f"{flood['failed']:,} of {flood['sent']:,}"],
                    [
                        "accepted: p99 / max",
                        f"{flood['ok_p99_ms']:.1f} / {flood['ok_max_ms']:.1f} ms",
                    ],
                    ["right after", f"{flood['after']} in {'<' if flood['quick'] else '≥'} 100 ms"],
                ],
            )
        )
    return "\n".join(parts)


def _latencies(run: dict[str, float]) -> list[str]:
    """p50 / p99 / p99.9 of a run, and its requests lost (failed or dropped)."""
    lost = int(run["dropped"] + run["failed"])
    return [f"{run['p50_ms']:.2f} / {run['p99_ms']:.2f} / {run['p999_ms']:.2f}", str(lost)]


def _tail_section(
    maximum: float, tail: list[dict[str, float]], floor: list[dict[str, float]]
) -> str:
    """ctrserve's single-row tail at shares of its closed-loop maximum, beside the floor's."""
    return markdown_section(
        "ctrserve: tail at shares of its closed-loop maximum, against the floor",
        "Distinct single rows, k6 at a fixed rate. The closed-loop maximum is wrk's (16 "
        f"connections): {maximum:,.0f} req/s. The floor is benchmarks/floor_app.py at the same "
        "rate with the same bodies, right after ctrserve's run: an app on the same uvicorn that "
        "reads the body and answers a fixed one, so its latencies are what the machine, uvicorn "
        "and k6 cost at that rate. Goal: ctrserve's p99 ≤ 5 ms up to 70%.",
        [
            "share",
            "rate /s",
            "ctrserve p50 / p99 / p99.9 ms",
            "lost",
            "floor p50 / p99 / p99.9 ms",
            "floor lost",
        ],
        [
            [f"{share:.0%}", f"{int(ours['rate']):,}", *_latencies(ours), *_latencies(base)]
            for share, ours, base in zip(TAIL_SHARES, tail, floor, strict=True)
        ],
    )


def _document(on: str, sections: list[str]) -> str:
    head = (
        "# Open-loop serving benchmark\n\n"
        f"`make bench-open` on {on}. Generated by benchmarks/open_loop.py; "
        "compare figures within one run only.\n\n"
    )
    return head + "\n".join(sections)


if __name__ == "__main__":
    main()
