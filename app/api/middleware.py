"""Every HTTP request's guard, one pure ASGI layer: its id, its timing, admission, the body
limit and the deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

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


class BodyTooLargeError(Exception):
    """A request body past the limit, raised from ``receive`` into the app reading it."""


class RequestGuard:
    """What every HTTP request passes through, in one layer (five middlewares of one job each
    cost a request five calls and five wrapped ``send``s):

    - **id**: the client's ``X-Request-ID``, or a new one, returned in that header and
      recorded with the request's rows in the prediction log; the request's headers stay at
      hand for sticky keys (a traffic split or log sampling by user).
    - **timing**, labelled by the route's path template (``/v2/models/{model_name}/infer``),
      so the label set is bounded by the routes, whatever paths clients send.
    - **admission**: a scoring request (``/predict``, V2 ``.../infer``) is refused at once
      (503 + Retry-After) while ``max_inflight`` are being answered. When the event loop is
      the bottleneck, requests wait for it (parsing, encoding), not in the scoring queue, so
      a bound on the queue alone never refuses anything. Health checks and metrics always
      answer.
    - **body limit**: a declared ``Content-Length`` over ``max_bytes`` is answered 413 before
      the app runs; a body streamed past it stops the app at the read that crosses it, in
      the error body of the request's protocol (:func:`refusal`).
    - **deadline**: a request still unanswered after ``timeout_s`` gets a 504. One sweeper
      task per event loop cancels overdue requests, so a request costs a dict insert and
      delete instead of a timer of its own; the deadline takes effect at the
      request's next await.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        max_inflight: int,
        max_bytes: int,
        timeout_s: float,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.inflight = 0
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        headers = scope["headers"]
        given = declared = None
        for name, value in headers:
            if name == _REQUEST_ID and given is None:
                given = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
        request_id = valid_request_id(given) or new_request_id()
        token = CURRENT_REQUEST.set(RequestContext(request_id, headers))
        id_header = (_REQUEST_ID, request_id.encode())
        status_code = 500
        answered = False

        async def guarded_send(message: Message) -> None:
            nonlocal status_code, answered
            if message["type"] == "http.response.start":
                status_code, answered = message["status"], True
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        path: str = scope["path"]
        scoring = path == "/predict" or path.endswith("/infer")
        try:
            if scoring and self.inflight >= self.max_inflight:
                await self._overloaded(scope)(scope, receive, guarded_send)
            elif declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                await self._too_large(scope)(scope, receive, guarded_send)
            else:
                self.inflight += scoring
                try:
                    await self._answer(scope, receive, guarded_send, lambda: answered)
                finally:
                    self.inflight -= scoring
        finally:
            CURRENT_REQUEST.reset(token)
            label = getattr(scope.get("route"), "path", None) or scope.get(ENDPOINT, "other")
            self.metrics.tally.request(
                label, f"{status_code // 100}xx", time.perf_counter() - started_at
            )

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, answered: Callable[[], bool]
    ) -> None:
        """The app, its body read under the limit and the request under its deadline."""
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())
        if task is not None:
            self._deadlines[task] = loop.time() + self.timeout_s
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    raise BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLargeError:
            if answered():
                raise
            await self._too_large(scope)(scope, receive, send)
        except asyncio.CancelledError:
            if task is None or task not in self._expired or answered():
                raise
            task.uncancel()
            logger.warning("request to %s timed out after %.1fs", scope["path"], self.timeout_s)
            response = JSONResponse(
                {"detail": f"no answer within {self.timeout_s:g}s (CTR_REQUEST_TIMEOUT_S)"},
                status_code=status.HTTP_504_GATEWAY_TIMEOUT,
            )
            await response(scope, receive, send)
        finally:
            if task is not None:
                self._deadlines.pop(task, None)
                self._expired.discard(task)

    def _overloaded(self, scope: Scope) -> JSONResponse:
        return refusal(
            scope,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"overloaded: {self.inflight} requests are being answered "
            "(CTR_MAX_INFLIGHT_REQUESTS); try again shortly",
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    def _too_large(self, scope: Scope) -> JSONResponse:
        message = f"request body exceeds {self.max_bytes} bytes (CTR_MAX_BODY_BYTES)"
        return refusal(scope, status.HTTP_413_CONTENT_TOO_LARGE, message)

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


def refusal(
    scope: Scope, status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answered before routing, in the request's protocol shape: the Open Inference
    Protocol's ``{"error": ...}`` under ``/v2/`` (its clients show that message), the
    service's ``{"detail": ...}`` elsewhere."""
    key = "error" if scope["path"].startswith("/v2/") else "detail"
    return JSONResponse({key: message}, status_code=status_code, headers=headers)
