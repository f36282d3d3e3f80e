"""Start servers on 127.0.0.1 and drive them with wrk, with bounded durations only."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "benchmarks" / "post.lua"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    percentiles_ms: dict[float, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(command: Sequence[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``command`` (which must listen on ``$PORT``) until the block ends; yield its URL."""
    port = free_port()
    full_env = {
        **os.environ,
        **(env or {}),
        "PORT": str(port),
        "CTR_PORT": str(port),
        "CTR_HOST": "127.0.0.1",
        "CTR_LOG_LEVEL": "WARNING",
    }
    command = [part.replace("{port}", str(port)) for part in command]
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {command} did not start")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


# Request bodies for wrk live here; the folder is removed when the process exits.
_BODIES = tempfile.TemporaryDirectory(prefix="ctrserve-bodies-")


def write_bodies(bodies: Sequence[object]) -> Path:
    with tempfile.NamedTemporaryFile(
        "w", suffix=".jsonl", delete=False, dir=_BODIES.name
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


def cache_counts(base: str) -> tuple[float, float]:
    """(hits, misses) from the service's Prometheus endpoint."""
    hits = misses = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith("ctr_cache_hits_total "):
            hits = float(line.split()[1])
        elif line.startswith("ctr_cache_misses_total "):
            misses = float(line.split()[1])
    return hits, misses


def relative(path: Path) -> str:
    """``path`` as a report names it: relative to the repository, never this machine's."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def markdown_section(title: str, intro: str, header: list[str], rows: list[list[str]]) -> str:
    """A report section: heading, one paragraph, one table."""
    lines = [
        f"## {title}",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
