"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServiceDep
from app.features.errors import SpecError
from app.schemas import ReadyResponse
from app.scoring.scorer import ScoringError

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ReadyResponse}})
def readyz(service: ServiceDep, response: Response) -> ReadyResponse:
    """A model is loaded and scores a smoke row right now.

    Ready while the old version serves after a failed load: ``last_error`` says why the
    target version is not served, so an operator sees it without reading logs.
    """
    registry = service.registry
    scorer = registry.current
    failure = registry.last_failure
    try:
        target: str | None = registry.target_version()
    except SpecError:
        target = None
    try:
        scorer.smoke_test()
    except ScoringError as exc:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return ReadyResponse(
            status="unavailable",
            model_version=scorer.version,
            target_version=target,
            last_error=str(exc),
        )
    return ReadyResponse(
        status="ready",
        model_version=scorer.version,
        target_version=target,
        last_error=None if failure is None else f"version {failure.version}: {failure.reason}",
    )


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    """Prometheus text; in multiprocess mode, every worker's values summed."""
    service.flush_metrics()
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
