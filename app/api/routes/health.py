"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServiceDep
from app.features.errors import SpecError
from app.schemas import ModelReadiness, ReadyResponse
from app.scoring.service import ServedModel

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ReadyResponse}})
def readyz(service: ServiceDep, response: Response) -> ReadyResponse:
    """Ready while at least one model scores a smoke row: one broken model never takes the
    others out of the load balancer. ``models`` says how each one stands; a model that
    keeps its old version after a failed load is ready, ``last_error`` says why the target
    is not served, so an operator sees it without reading logs."""
    models = {name: _readiness(model) for name, model in service.models.items()}
    default = models[service.default]
    ready = any(model.ready for model in models.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadyResponse(
        status="ready" if ready else "unavailable",
        model_version=default.version,
        target_version=default.target_version,
        last_error=default.last_error,
        models=models,
    )


def _readiness(model: ServedModel) -> ModelReadiness:
    registry = model.registry
    try:
        target: str | None = registry.target_version()
    except SpecError:
        target = None
    failures = [f"version {f.version}: {f.reason}" for f in registry.failures.values()]
    lineup = registry.loaded
    if lineup is None:
        return ModelReadiness(
            ready=False, version=None, target_version=target, last_error="; ".join(failures)
        )
    ready = lineup.default.ready()
    if not ready:
        failures.append(f"version {lineup.default.version} fails its smoke score")
    return ModelReadiness(
        ready=ready,
        version=lineup.default.version,
        target_version=target,
        last_error="; ".join(failures) or None,
    )


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    """Prometheus text; in multiprocess mode, every worker's values summed."""
    service.flush_metrics()
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
