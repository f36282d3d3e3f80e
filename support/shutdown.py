"""A graceful-shutdown check: SIGTERM arrives while a request's body is half sent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from support.servers import free_port


@dataclass(frozen=True)
class ShutdownOutcome:
    answer: bytes  # the raw HTTP answer to the request in flight
    exit_code: int | None  # the server's exit status after SIGTERM (None: it did not exit)


def sigterm_during_a_request(model_dir: Path) -> ShutdownOutcome:
    """Start ``python -m app``, send half a request, SIGTERM the server, send the rest."""
    port = free_port()
    env = {
        **os.environ,
        "CTR_MODEL_REPOSITORY": str(model_dir.resolve()),
        "CTR_PORT": str(port),
        "CTR_LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryDirectory(prefix="ctrserve-cwd-") as cwd:
        server = subprocess.Popen([sys.executable, "-m", "app"], cwd=cwd, env=env)
        try:
            _wait_for(port, server)
            body = b'{"features": {"c0": "c0_1", "n0": 2.5}}'
            head = (
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(head + body[:10])  # the request is now in flight
                time.sleep(0.3)
                server.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                conn.sendall(body[10:])
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
            try:
                exit_code: int | None = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                exit_code = None
            return ShutdownOutcome(answer, exit_code)
        finally:
            if server.poll() is None:
                server.kill()


def _wait_for(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start") from None
            time.sleep(0.2)
    time.sleep(0.5)  # lifespan: let the model finish loading
