"""Pure ASGI middlewares: request ids, request timing, admission, the body limit and the
request deadline."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import ServiceMetrics
from app.request import (
    CURRENT_REQUEST,
    REQUEST_ID_HEADER,
    RequestContext,
    new_request_id,
    valid_request_id,
)

# Seconds a client told to back off waits: a worker's queue drains in milliseconds.
RETRY_AFTER_S = 1

logger = logging.getLogger(__name__)
# A scope key naming the endpoint of a request answered before routing (app/api/fast_predict.py).
ENDPOINT = "ctrserve.endpoint"


_REQUEST_ID = REQUEST_ID_HEADER.encode()


class RequestIdMiddleware:
    """Every HTTP request gets an id: the client's ``X-Request-ID``, or a new one, returned
    in that header and recorded with the request's rows in the prediction log. The request's
    headers stay at hand for sticky keys (a traffic split or log sampling by user)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        headers = scope["headers"]
        for name, value in headers:
            if name == _REQUEST_ID:
                given = value.decode("latin-1")
                break
        request_id = valid_request_id(given) or new_request_id()
        token = CURRENT_REQUEST.set(RequestContext(request_id, headers))
        header = (_REQUEST_ID, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            CURRENT_REQUEST.reset(token)


class LatencyMiddleware:
    """Pure ASGI timing of every request (cheaper than ``BaseHTTPMiddleware``).

    Labelled by the route's path template (``/v2/models/{model_name}/infer``), so the
    label set is bounded by the routes, whatever paths clients send.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            path = getattr(scope.get("route"), "path", None) or scope.get(ENDPOINT, "other")
            self.metrics.tally.request(
                path, f"{status_code // 100}xx", time.perf_counter() - started
            )


def refusal(
    scope: Scope, status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answered before routing, in the request's protocol shape: the Open Inference
    Protocol's ``{"error": ...}`` under ``/v2/`` (its clients show that message), the
    service's ``{"detail": ...}`` elsewhere."""
    key = "error" if scope["path"].startswith("/v2/") else "detail"
    return JSONResponse({key: message}, status_code=status_code, headers=headers)


class AdmissionMiddleware:
    """Refuse a scoring request at once (503 + Retry-After) while ``max_inflight`` are
    already being answered.

    When the event loop is the bottleneck, requests wait for it (parsing, encoding), not in
    the scoring queue, so a bound on the queue alone never refuses anything and latency grows
    with the clients' concurrency. Counted per worker; only scoring requests (``/predict``,
    V2 ``.../infer``) are counted or refused, so health checks and metrics always answer.
    """

    def __init__(self, app: ASGIApp, max_inflight: int) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/predict" or path.endswith("/infer")):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            response = refusal(
                scope,
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"overloaded: {self.inflight} requests are being answered "
                "(CTR_MAX_INFLIGHT_REQUESTS); try again shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
            await response(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


class BodyTooLargeError(Exception):
    """A request body past the limit, raised from ``receive`` into the app reading it."""


class BodyLimitMiddleware:
    """Answer 413 to a body over ``max_bytes``, in the error body of the request's protocol.

    A declared ``Content-Length`` over the limit is answered before the app runs; a body
    streamed past it stops the app at the read that crosses it (:func:`refusal` gives the
    protocol's error shape).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        read = 0
        started = False

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, send_tracking)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body exceeds {self.max_bytes} bytes (CTR_MAX_BODY_BYTES)"
        response = refusal(scope, status.HTTP_413_CONTENT_TOO_LARGE, message)
        await response(scope, receive, send)


class TimeoutMiddleware:
    """Answer 504 when a request is still unanswered after ``timeout_s``.

    One sweeper task per event loop cancels overdue requests, so a request costs a dict
    insert and delete instead of a timer of its own (which cost ~10 µs, a sixth of a cache
    hit). The deadline takes effect at the request's next await (reading the body, the
    thread pool); a synchronous onnxruntime call in progress finishes first.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())
        self._deadlines[task] = loop.time() + self.timeout_s
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except asyncio.CancelledError:
            if task not in self._expired or started:
                raise
            task.uncancel()
            logger.warning("request to %s timed out after %.1fs", scope["path"], self.timeout_s)
            response = JSONResponse(
                {"detail": f"no answer within {self.timeout_s:g}s (CTR_REQUEST_TIMEOUT_S)"},
                status_code=status.HTTP_504_GATEWAY_TIMEOUT,
            )
            await response(scope, receive, send)
        finally:
            self._deadlines.pop(task, None)
            self._expired.discard(task)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(0.5, self.timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
