"""wrk runs against 127.0.0.1 with bounded durations, and the bodies they send."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "post.lua"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    percentiles_ms: dict[float, float]


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
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    seconds = summary["duration_us"] / 1e6
    percentiles = {float(k): v / 1000 for k, v in summary["percentiles_us"].items()}
    return WrkResult(
        requests=summary["requests"],
        req_per_s=summary["requests"] / seconds,
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        errors=summary["socket_errors"] + summary["non_2xx"],
        percentiles_ms=percentiles,
    )
