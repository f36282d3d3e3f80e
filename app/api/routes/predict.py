"""POST /predict and POST /explain."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from app.api.deps import ServiceDep, SettingsDep
from app.schemas import (
    BatchPredictResponse,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    FieldEffectOut,
    PredictRequest,
    PredictResponse,
)

router = APIRouter(tags=["scoring"])

_ERRORS: dict[int | str, dict[str, object]] = {
    413: {"model": ErrorResponse, "description": "batch larger than CTR_MAX_BATCH_SIZE"},
    422: {"model": ErrorResponse, "description": "invalid features"},
    503: {"model": ErrorResponse, "description": "the model failed to score"},
}


# Plain `def`: FastAPI runs it in its thread pool, so an onnxruntime call never blocks the
# event loop (see README, "sync vs async", for the measurement behind this choice).
@router.post("/predict", responses=_ERRORS)
def predict(
    body: PredictRequest, service: ServiceDep, settings: SettingsDep
) -> PredictResponse | BatchPredictResponse:
    """Score one row (``features``) or a batch (``instances``), cache first."""
    if body.instances is not None:
        if len(body.instances) > settings.max_batch_size:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"batch of {len(body.instances)} rows exceeds the limit of "
                f"{settings.max_batch_size} (CTR_MAX_BATCH_SIZE)",
            )
        scored = service.predict(body.instances)
        return BatchPredictResponse(
            predictions=scored.scores.tolist(),
            model_version=scored.version,
            cached=scored.cached,
            cache_hits=sum(scored.cached),
        )
    assert body.features is not None  # guaranteed by PredictRequest's validator
    scored = service.predict([body.features])
    return PredictResponse(
        prediction=float(scored.scores[0]), model_version=scored.version, cached=scored.cached[0]
    )


@router.post("/explain", responses=_ERRORS)
def explain(body: ExplainRequest, service: ServiceDep) -> ExplainResponse:
    """Why this score: each field's effect, measured by moving it to its field average."""
    result = service.explain(body.features)
    return ExplainResponse(
        prediction=result.prediction,
        baseline=result.baseline,
        interaction_residual=result.interaction_residual,
        effects=[
            FieldEffectOut(
                field=e.field,
                encoded_as=e.encoded_as,
                effect=e.effect,
                prediction_without=e.prediction_without,
            )
            for e in result.effects
        ],
        model_version=result.version,
    )
