"""Start servers on 127.0.0.1 for tests, benchmarks and the load test; bounded waits only."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import psutil

from support.prometheus import metric

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_process(base: str) -> psutil.Process:
    """The process that listens at ``base`` (``http://127.0.0.1:PORT``)."""
    port = int(base.rsplit(":", 1)[1])
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == "LISTEN":
            return psutil.Process(connection.pid)
    raise RuntimeError(f"no process listens on {port}")


@contextmanager
def server(
    command: Sequence[str],
    env: dict[str, str] | None = None,
    health: str = "/healthz",
    tree: Path = ROOT,
) -> Iterator[str]:
    """Run ``command`` (which must listen on ``$PORT``, or on ``{port}`` written in its
    arguments or ``env`` values) until the block ends, once ``health`` answers 200; yield its
    URL. ``tree``: the checkout whose packages it imports first (another revision's, say).

    The process starts in an empty working directory, so a developer's ``.env`` in the
    repository never configures a server under test: only ``env`` and the environment do.
    """
    port = free_port()
    full_env = {
        **os.environ,
        **{name: value.replace("{port}", str(port)) for name, value in (env or {}).items()},
        "PORT": str(port),
        "CTR_PORT": str(port),
        "CTR_HOST": "127.0.0.1",
        "CTR_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
    }
    command = [part.replace("{port}", str(port)) for part in command]
    with tempfile.TemporaryDirectory(prefix="ctrserve-cwd-") as cwd:
        process = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}{health}", timeout=1).status_code == 200:
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


def metric_values(base: str, *names: str) -> list[float]:
    """Each named metric on the service's Prometheus endpoint, summed over its label sets
    (the service labels most by model and version); 0 for one not exposed yet."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return [metric(text, name) for name in names]


def cache_counts(base: str) -> tuple[float, float]:
    """(hits, misses) from the service's Prometheus endpoint."""
    hits, misses = metric_values(base, "ctr_cache_hits_total", "ctr_cache_misses_total")
    return hits, misses
