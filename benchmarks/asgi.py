"""Drive an ASGI app in process, with no network, to time the Python cost of a request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

from starlette.types import ASGIApp, Message


def per_request_us(app: ASGIApp, bodies: Sequence[bytes], requests: int = 20_000) -> float:
    """Mean µs per POST /predict, cycling through ``bodies``; runs the app's lifespan."""
    return asyncio.run(_measure(app, bodies, requests))


async def _measure(app: ASGIApp, bodies: Sequence[bytes], requests: int) -> float:
    async with AsyncExitStack() as stack:
        router = getattr(app, "router", None)
        if router is not None:
            await stack.enter_async_context(router.lifespan_context(app))
        for i in range(200):
            await _post(app, bodies[i % len(bodies)])
        started = time.perf_counter()
        for i in range(requests):
            await _post(app, bodies[(200 + i) % len(bodies)])
        return (time.perf_counter() - started) / requests * 1e6


async def _post(app: ASGIApp, body: bytes) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    await app(scope, receive, send)
