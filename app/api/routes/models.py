"""GET /model (metadata) and POST /admin/reload (roll a version out to the fleet)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from app.api.deps import ReloadAuth, ServiceDep, SettingsDep
from app.features.errors import SpecError
from app.features.spec import CategoricalField
from app.schemas import ErrorResponse, FieldInfo, ModelInfo, ReloadRequest, ReloadResponse
from app.scoring.repository import PublishRefusedError, confined_source

router = APIRouter(tags=["model"])


@router.get("/model")
def model_info(service: ServiceDep) -> ModelInfo:
    scorer = service.registry.current
    manifest = scorer.manifest
    repository = service.registry.repository
    return ModelInfo(
        name=repository.name,
        model_type=manifest.model_type,
        version=manifest.version,
        task=manifest.task,
        model_dir=str(scorer.model_dir),
        repository=str(repository.root),
        versions=repository.versions(),
        pinned=service.registry.pinned_version is not None,
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
        403: {"model": ErrorResponse, "description": "reload off, or model_dir not allowed"},
        422: {"model": ErrorResponse, "description": "new model refused; the old one serves"},
    },
)
async def reload_model(
    service: ServiceDep, settings: SettingsDep, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Roll a version out to every worker and replica that shares the repository.

    This worker loads, verifies and warms the version first and only then writes
    ``CURRENT``; every other worker picks the pointer up at its next poll
    (``CTR_POLL_INTERVAL_S``). An empty body re-reads ``CURRENT`` here now. A
    ``model_dir`` is taken only from under ``CTR_PUBLISH_ROOT``.
    """
    previous = service.registry.current
    try:
        if body is not None and body.model_dir is not None:
            source = confined_source(body.model_dir, settings.publish_root)
            await run_in_threadpool(service.registry.publish, source)
        else:
            await run_in_threadpool(service.registry.switch, body.version if body else None)
    except PublishRefusedError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"reload refused: {exc}") from None
    except SpecError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"reload refused, still serving version {service.registry.current.version}: {exc}",
        ) from None
    current = service.registry.current
    return ReloadResponse(
        previous_version=previous.version, version=current.version, model_dir=str(current.model_dir)
    )
