"""The app factory. ``uvicorn app.main:app`` and ``python -m app`` both end up here."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.routes import health, models, predict, v2
from app.cache import ResponseCache, ScoreCache
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.features.errors import EncodeError
from app.metrics import ServiceMetrics, mark_worker_gone
from app.scoring.poller import RepositoryPoller
from app.scoring.registry import ModelRegistry
from app.scoring.repository import ModelRepository
from app.scoring.scorer import Scorer, ScoringError
from app.scoring.service import PredictionService

logger = logging.getLogger(__name__)


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
            path = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.tally.request(
                path, f"{status_code // 100}xx", time.perf_counter() - started
            )


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


def _encode_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EncodeError)
    detail = [{"loc": ["body", "features", exc.field], "msg": exc.detail, "type": "encode_error"}]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with where, what and why of each problem.

    FastAPI's default echoes the input back; that can hold NaN (which JSON cannot render) or
    data a client should not see reflected, so only location, message and type are kept.
    Bodies validated by a route itself (``ValidationError``) get the same shape.
    """
    if isinstance(exc, RequestValidationError):
        errors = [dict(error) for error in exc.errors()]
    else:
        assert isinstance(exc, ValidationError)
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
    detail = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in errors
    ]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _scoring_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("scoring failed: %s", exc)
    return JSONResponse(
        {"detail": "the model could not score this request; try again"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before sending its whole body: nobody is left to answer."""
    logger.debug("client disconnected during %s", request.url.path)
    return Response(status_code=499)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Nothing is loaded until the lifespan starts."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    metrics = ServiceMetrics()

    def load(version_dir: Path) -> Scorer:
        scorer = Scorer.load(version_dir, settings.ort_intra_op_threads, settings.max_value_chars)
        scorer.warm(settings.warmup_batch_sizes())
        return scorer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        repository = ModelRepository(settings.model_dir, settings.model_name)
        registry = ModelRegistry(repository, load, settings.model_version)
        service = PredictionService(
            registry,
            ScoreCache(settings.cache_maxsize, settings.cache_ttl_s),
            ResponseCache(settings.response_cache_max_bytes, settings.cache_ttl_s),
            metrics,
        )
        app.state.service = service
        poller = RepositoryPoller(service, settings.poll_interval_s)
        # Everything alive now (libraries, the model) lives as long as the process: keep it
        # out of the cyclic collector's scans, which grow with the caches on the hot path.
        gc.freeze()
        scorer = registry.current
        policy = f"pinned to {registry.pinned_version}" if registry.pinned_version else "latest"
        logger.info(
            "serving %s/%s (%s, %s; cache %d entries, ttl %.0fs; polling every %.1fs)",
            repository.name,
            scorer.version,
            scorer.manifest.model_type,
            policy,
            settings.cache_maxsize,
            settings.cache_ttl_s,
            settings.poll_interval_s,
        )
        poller.start()
        grpc_server = None
        if settings.grpc_port is not None:
            from app.protocol.grpc_service import start_grpc  # grpcio only when asked for

            grpc_server = await start_grpc(service, settings, app.version)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            poller.stop()
            service.flush_metrics()
            mark_worker_gone()

    app = FastAPI(
        title="ctrserve",
        summary="Field-aware CTR/CVR scoring on onnxruntime behind a TTL LRU cache.",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.settings = settings
    routers = (predict.router, health.router, models.router, v2.router)
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(EncodeError, _encode_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(ScoringError, _scoring_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    """``app.main:app`` for uvicorn, built on first access rather than at import."""
    if name == "app":
        return create_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
