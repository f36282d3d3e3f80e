"""The app factory. ``uvicorn app.main:app`` and ``python -m app`` both end up here."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.fast_predict import FastPredictMiddleware
from app.api.middleware import RequestGuard
from app.api.routes import health, models, predict, v2
from app.cache import ScoreCache
from app.core.config import Settings, get_settings
from app.core.cpus import usable_cpus
from app.core.logging import configure_logging
from app.features.errors import SpecError
from app.metrics import ServiceMetrics, mark_worker_gone
from app.model.lineup import Lineup
from app.model.scorer import Scorer
from app.prediction_log.log import PredictionLog
from app.repository.store import find_models
from app.request import StickyKey
from app.scoring.batcher import Batcher
from app.scoring.poller import RepositoryPoller
from app.scoring.registry import ModelRegistry
from app.scoring.service import PredictionService, ServedModel
from app.scoring.shadow import ShadowScorer

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
        service = build_service(settings, metrics, load)
        app.state.service = service
        poller = RepositoryPoller(service, settings.poll_interval_s)
        # Everything alive now (libraries, the models) lives as long as the process: keep it
        # out of the cyclic collector's scans, which grow with the caches on the hot path.
        if settings.gc_freeze:
            gc.freeze()
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
            service.batcher.close()
            # In a thread, so this loop keeps running the finished shadows' callbacks,
            # which log their requests: none is lost to the log closing first.
            await asyncio.to_thread(service.shadows.close)
            if service.log is not None:
                service.log.close()
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
    app.add_middleware(FastPredictMiddleware)  # innermost: guarded like any request
    app.add_middleware(
        RequestGuard,
        metrics=metrics,
        max_inflight=settings.max_inflight_requests,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.request_timeout_s,
    )
    return app


def build_service(
    settings: Settings, metrics: ServiceMetrics, load: Callable[[Path], Scorer]
) -> PredictionService:
    """Every model of the repository, loaded, with its share of the score cache.

    Raises:
        SpecError: no model there, or not one of them could be loaded.
    """
    repositories = find_models(settings.model_dir, settings.model_name)
    default = settings.default_model or _default_model(sorted(repositories))
    if default not in repositories:
        raise SpecError(f"CTR_DEFAULT_MODEL={default}: no such model in {settings.model_dir}")
    registries = {
        name: ModelRegistry(repository, load, settings.model_version if name == default else None)
        for name, repository in repositories.items()
    }
    if not any(registry.ready for registry in registries.values()):
        reasons = "; ".join(
            f"{name}: {f.version}: {f.reason}"
            for name, registry in registries.items()
            for f in registry.failures.values()
        )
        raise SpecError(f"no model in {settings.model_dir} could be loaded ({reasons})")
    budgets = cache_budgets(settings.cache_maxsize, registries)
    models = {
        name: ServedModel(registry, ScoreCache(budgets[name], settings.cache_ttl_s), metrics)
        for name, registry in registries.items()
    }
    threads = settings.scoring_threads or usable_cpus()
    batcher = Batcher(
        threads, settings.batch_max_rows, settings.max_queued_rows, metrics.observe_call
    )
    shadows = ShadowScorer(metrics.tally, settings.shadow_queue_rows)
    log = prediction_log(settings, metrics)
    service = PredictionService(models, default, batcher, shadows, metrics, log)
    for name, model in models.items():
        lineup = model.registry.loaded
        logger.info(
            "model %s%s: %s (cache %d entries, ttl %.0fs)",
            name,
            " (default)" if name == default else "",
            "not loaded" if lineup is None else ", ".join(_roles(lineup)),
            model.cache.maxsize,
            settings.cache_ttl_s,
        )
    logger.info("following the repository every %.1fs", settings.poll_interval_s)
    return service


def _default_model(names: list[str]) -> str:
    if len(names) == 1 or "default" not in names:
        return names[0]
    return "default"


def _roles(lineup: Lineup) -> list[str]:
    roles = [f"{lineup.default.version} ({lineup.default.manifest.model_type})"]
    roles += [f"{label}={version}" for label, version in lineup.labels.items()]
    split, shadow = lineup.policy.split, lineup.policy.shadow
    if split is not None and lineup.split_to is not None:
        roles.append(f"{split.percent:g}% to {lineup.split_to.version}")
    if shadow is not None and lineup.shadow_to is not None:
        roles.append(f"shadow {lineup.shadow_to.version} ({shadow.sample:.0%})")
    return roles


def cache_budgets(total: int, registries: Mapping[str, ModelRegistry]) -> dict[str, int]:
    """Each model's share of ``total`` cached scores: its policy's ``cache_entries``, and an
    even share of what is left for the others (read at start-up)."""
    asked = {}
    for name, registry in registries.items():
        lineup = registry.loaded
        if lineup is not None and lineup.policy.cache_entries is not None:
            asked[name] = lineup.policy.cache_entries
    others = [name for name in registries if name not in asked]
    left = max(total - sum(asked.values()), 0)
    return {**asked, **{name: left // len(others) for name in others}}


def prediction_log(settings: Settings, metrics: ServiceMetrics) -> PredictionLog | None:
    """The worker's prediction log writer, if ``CTR_PREDICTION_LOG`` is set."""
    if settings.prediction_log is None:
        return None
    key = settings.prediction_log_key
    log = PredictionLog(
        settings.prediction_log,
        sample=settings.prediction_log_sample,
        key=None if key is None else StickyKey.parse(key),
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
