"""The app factory. ``uvicorn app.main:app`` and ``python -m app`` both end up here."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.fast_predict import FastPredictMiddleware
from app.api.middleware import (
    AdmissionMiddleware,
    BodyLimitMiddleware,
    LatencyMiddleware,
    RequestIdMiddleware,
    TimeoutMiddleware,
)
from app.api.routes import health, models, predict, v2
from app.cache import ScoreCache
from app.core.config import Settings, get_settings
from app.core.cpus import usable_cpus
from app.core.logging import configure_logging
from app.metrics import ServiceMetrics, mark_worker_gone
from app.scoring.batcher import Batcher
from app.scoring.poller import RepositoryPoller
from app.scoring.prediction_log import PredictionLog, SampleKey, sample_key_header
from app.scoring.registry import ModelRegistry
from app.scoring.repository import ModelRepository
from app.scoring.scorer import Scorer
from app.scoring.service import PredictionService

logger = logging.getLogger(__name__)


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
        batcher = Batcher(
            settings.scoring_threads or usable_cpus(),
            settings.batch_max_rows,
            settings.max_queued_rows,
            metrics.observe_call,
        )
        cache = ScoreCache(settings.cache_maxsize, settings.cache_ttl_s)
        log = prediction_log(settings, metrics)
        service = PredictionService(registry, cache, batcher, metrics, log)
        app.state.service = service
        poller = RepositoryPoller(service, settings.poll_interval_s)
        # Everything alive now (libraries, the model) lives as long as the process: keep it
        # out of the cyclic collector's scans, which grow with the caches on the hot path.
        if settings.gc_freeze:
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
            batcher.close()
            if log is not None:
                log.close()
            service.flush_metrics()
            mark_worker_gone()

    app = FastAPI(
        title="ctrserve",
        summary="Field-aware CTR/CVR scoring on onnxruntime behind a TTL LRU cache.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=None if settings.otel else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    routers = (predict.router, health.router, models.router, v2.router)
    for router in routers:
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(FastPredictMiddleware)  # innermost: timed and bounded like any request
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(AdmissionMiddleware, max_inflight=settings.max_inflight_requests)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    app.add_middleware(
        RequestIdMiddleware, key_header=sample_key_header(settings.prediction_log_key)
    )
    return app


def prediction_log(settings: Settings, metrics: ServiceMetrics) -> PredictionLog | None:
    """The worker's prediction log writer, if ``CTR_PREDICTION_LOG`` is set."""
    if settings.prediction_log is None:
        return None
    key = settings.prediction_log_key
    log = PredictionLog(
        settings.prediction_log,
        sample=settings.prediction_log_sample,
        key=None if key is None else SampleKey.parse(key),
        max_queued_rows=settings.prediction_log_queue_rows,
        roll_rows=settings.prediction_log_roll_rows,
        roll_bytes=settings.prediction_log_roll_bytes,
        roll_s=settings.prediction_log_roll_s,
        on_written=metrics.log_written,
        on_dropped=metrics.log_dropped.inc,
    )
    logger.info(
        "prediction log: %s (%.0f%% of %s)",
        settings.prediction_log,
        settings.prediction_log_sample * 100,
        "requests" if key is None else key,
    )
    return log


def __getattr__(name: str) -> FastAPI:
    """``app.main:app`` for uvicorn, built on first access rather than at import."""
    if name == "app":
        return create_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
