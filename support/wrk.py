"""wrk runs against 127.0.0.1 with bounded durations, and the bodies they send."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "post.lua"
_PROC_STAT = Path("/proc/stat")
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. The CPU figures are µs a request, measured from outside every server:
    ``machine_cpu_us`` is what all cores were busy for (user, system, interrupts and time
    stolen by the hypervisor, from ``/proc/stat``; NaN where there is none), and
    ``client_cpu_us`` is wrk's own share of it, so the rest is the server under load (and
    whatever else ran, which on a quiet machine is next to nothing)."""

    requests: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    percentiles_ms: dict[float, float]
    machine_cpu_us: float = float("nan")
    client_cpu_us: float = float("nan")
    machine_busy: float = float("nan")  # cores busy on average during the run

    @property
    def server_cpu_us(self) -> float:
        """CPU µs a request spent outside wrk: the server's, kernel networking included."""
        return self.machine_cpu_us - self.client_cpu_us


def _busy_s() -> float:
    """Seconds all cores were busy since boot (NaN without ``/proc/stat``). Columns: user
    nice system idle iowait irq softirq steal ..."""
    if not _PROC_STAT.is_file():
        return float("nan")
    ticks = [int(x) for x in _PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) * _TICK_S


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_BODIES: list[tempfile.TemporaryDirectory[str]] = []


def write_bodies(bodies: Sequence[object]) -> Path:
    """One JSON body per line, in a folder removed when the process exits (made on first use)."""
    if not _BODIES:
        _BODIES.append(tempfile.TemporaryDirectory(prefix="ctrserve-bodies-"))
    with tempfile.NamedTemporaryFile(
        "w", suffix=".jsonl", delete=False, dir=_BODIES[0].name
    ) as handle:
        for body in bodies:
            handle.write(json.dumps(body, separators=(",", ":")) + "\n")
    return Path(handle.name)


def wrk(url: str, bodies_file: Path, duration_s: int, connections: int = 16) -> WrkResult:
    """One bounded wrk run (1 thread: the other core belongs to the server)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make bench`, which installs it")
    busy_before, client_before, started = _busy_s(), _children_cpu_s(), time.monotonic()
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--latency",
            "-s",
            str(LUA),
            url,
            "--",
            str(bodies_file),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration_s + 60,
    )
    client_s = _children_cpu_s() - client_before  # wrk is the only child reaped meanwhile
    busy_s, wall_s = _busy_s() - busy_before, time.monotonic() - started
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    seconds = summary["duration_us"] / 1e6
    percentiles = {float(k): v / 1000 for k, v in summary["percentiles_us"].items()}
    requests = max(summary["requests"], 1)
    # wrk's start (its script reads the bodies file) falls inside the window too: it is in
    # wrk's own share, not the server's, and it thins out ``machine_busy`` a little.
    return WrkResult(
        requests=summary["requests"],
        req_per_s=summary["requests"] / seconds,
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        errors=summary["socket_errors"] + summary["non_2xx"],
        percentiles_ms=percentiles,
        machine_cpu_us=busy_s / requests * 1e6,
        client_cpu_us=client_s / requests * 1e6,
        machine_busy=busy_s / wall_s,
    )
