"""Model metadata (GET /models, /model, /model/<name>) and the admin calls that roll
versions and labels out to the fleet (POST /admin/reload, PUT|DELETE
/admin/models/<name>/labels/<label>)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from app.api.deps import ReloadAuth, ServiceDep, SettingsDep
from app.features.errors import SpecError
from app.features.spec import CategoricalField
from app.repository.store import PublishRefusedError, confined_source
from app.schemas import (
    ErrorResponse,
    FieldInfo,
    LabelRequest,
    LabelResponse,
    LoadedVersion,
    ModelBudget,
    ModelInfo,
    ModelList,
    ReloadRequest,
    ReloadResponse,
)
from app.scoring.service import PredictionService, ServedModel, UnknownModelError

router = APIRouter(tags=["model"])

_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorResponse, "description": "no such model"}
}
_ADMIN_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse, "description": "admin calls off, or model_dir not allowed"},
    404: {"model": ErrorResponse, "description": "no such model"},
    422: {"model": ErrorResponse, "description": "refused; what served before still serves"},
}


def _model(service: PredictionService, name: str | None) -> ServedModel:
    try:
        return service.model(name)
    except UnknownModelError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/models")
def list_models(service: ServiceDep) -> ModelList:
    return ModelList(default=service.default, models=sorted(service.models))


@router.get("/model", responses={503: {"model": ErrorResponse}})
def default_model_info(service: ServiceDep) -> ModelInfo:
    """The default model's metadata."""
    return _info(_model(service, None))


@router.get("/model/{model_name}", responses={**_NOT_FOUND, 503: {"model": ErrorResponse}})
def model_info(model_name: str, service: ServiceDep) -> ModelInfo:
    """A model's metadata: versions loaded and what each serves, labels, policy, budgets."""
    return _info(_model(service, model_name))


def _info(model: ServedModel) -> ModelInfo:
    lineup = model.lineup  # NotReadyError: 503
    scorer = lineup.default
    manifest = scorer.manifest
    registry, repository = model.registry, model.registry.repository
    serves = lineup.serves()
    return ModelInfo(
        name=model.name,
        model_type=manifest.model_type,
        version=manifest.version,
        task=manifest.task,
        model_dir=str(scorer.model_dir),
        repository=str(repository.root),
        versions=repository.versions(),
        loaded=[
            LoadedVersion(
                version=version,
                model_type=loaded.manifest.model_type,
                serves=serves[version],
                model_bytes=loaded.file_bytes,
            )
            for version, loaded in lineup.scorers.items()
        ],
        labels=dict(lineup.labels),
        policy=lineup.policy.model_dump(mode="json", exclude_none=True),
        budget=ModelBudget(
            cache_entries=len(model.cache),
            cache_budget=model.cache.maxsize,
            model_bytes=model.loaded_bytes,
        ),
        pinned=registry.pinned_version is not None,
        failures={f.version: f.reason for f in registry.failures.values()},
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


@router.post("/admin/reload", dependencies=[ReloadAuth], responses=_ADMIN_ERRORS)
async def reload_model(
    service: ServiceDep, settings: SettingsDep, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Roll a version of a model out to every worker and replica sharing the repository.

    This worker loads, verifies and warms the version first and only then writes
    ``CURRENT``; every other worker picks the pointer up at its next poll
    (``CTR_POLL_INTERVAL_S``). An empty body re-reads the pointers here now. A
    ``model_dir`` is taken only from under ``CTR_PUBLISH_ROOT``.
    """
    model = _model(service, body.model if body else None)
    registry = model.registry
    before = registry.loaded
    try:
        if body is not None and body.model_dir is not None:
            source = confined_source(body.model_dir, settings.publish_root)
            lineup = await run_in_threadpool(registry.publish, source)
        else:
            lineup = await run_in_threadpool(registry.switch, body.version if body else None)
    except PublishRefusedError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"reload refused: {exc}") from None
    except SpecError as exc:
        still = "nothing" if before is None else f"version {before.default.version}"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"reload refused, model '{model.name}' still serves {still}: {exc}",
        ) from None
    return ReloadResponse(
        model=model.name,
        previous_version=None if before is None else before.default.version,
        version=lineup.default.version,
        model_dir=str(lineup.default.model_dir),
    )


@router.put(
    "/admin/models/{model_name}/labels/{label}", dependencies=[ReloadAuth], responses=_ADMIN_ERRORS
)
async def set_label(
    model_name: str, label: str, body: LabelRequest, service: ServiceDep
) -> LabelResponse:
    """Point ``label`` at a version (loaded and verified here first); every worker and
    replica follows it at its next poll, as it follows ``CURRENT``."""
    return await _label(service, model_name, label, body.version)


@router.delete(
    "/admin/models/{model_name}/labels/{label}", dependencies=[ReloadAuth], responses=_ADMIN_ERRORS
)
async def remove_label(model_name: str, label: str, service: ServiceDep) -> LabelResponse:
    """Remove ``label``: requests that name it get 404 from the next poll on."""
    return await _label(service, model_name, label, None)


async def _label(
    service: PredictionService, name: str, label: str, version: str | None
) -> LabelResponse:
    model = _model(service, name)
    try:
        lineup = await run_in_threadpool(model.registry.set_label, label, version)
    except SpecError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"label refused, nothing changed: {exc}"
        ) from None
    return LabelResponse(model=model.name, labels=dict(lineup.labels))
