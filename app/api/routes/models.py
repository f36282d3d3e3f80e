"""GET /model (metadata) and POST /admin/reload (hot swap)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from app.api.deps import MetricsDep, ReloadAuth, ServiceDep
from app.features.errors import SpecError
from app.features.spec import CategoricalField
from app.schemas import ErrorResponse, FieldInfo, ModelInfo, ReloadRequest, ReloadResponse

logger = logging.getLogger(__name__)
router = APIRouter(tags=["model"])


@router.get("/model")
def model_info(service: ServiceDep) -> ModelInfo:
    scorer = service.registry.current
    manifest = scorer.manifest
    return ModelInfo(
        model_type=manifest.model_type,
        version=manifest.version,
        task=manifest.task,
        model_dir=str(scorer.model_dir),
        hyperparameters=manifest.hyperparameters,
        fields=[
            FieldInfo(
                name=f.name,
                kind=f.kind,
                cardinality=len(f.vocabulary)
                if isinstance(f, CategoricalField)
                else len(f.bin_edges) + 1,
            )
            for f in manifest.features.fields
        ],
        metrics=manifest.metrics,
        created_at=manifest.created_at,
    )


@router.post(
    "/admin/reload",
    dependencies=[ReloadAuth],
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        422: {"model": ErrorResponse, "description": "new model refused; the old one serves"},
    },
)
async def reload_model(
    service: ServiceDep, metrics: MetricsDep, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Load a model directory, verify and warm it, then swap it in atomically."""
    target = Path(body.model_dir) if body and body.model_dir else None
    try:
        previous, loaded = await run_in_threadpool(service.registry.reload, target)
    except SpecError as exc:
        metrics.reloads.labels(outcome="failed").inc()
        serving = service.registry.current.version
        logger.error("reload refused, still serving %s: %s", serving, exc)
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"reload refused, still serving version {serving}: {exc}",
        ) from None
    metrics.reloads.labels(outcome="ok").inc()
    metrics.set_model(loaded.manifest.model_type, loaded.version)
    return ReloadResponse(
        previous_version=previous.version, version=loaded.version, model_dir=str(loaded.model_dir)
    )
