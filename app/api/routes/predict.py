"""POST /predict and POST /explain."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import ServiceDep, get_service, get_settings_dep
from app.api.fast_predict import MODEL_PREDICT, VERSION_PREDICT
from app.protocol.predict_json import answer, predict_request_schema
from app.schemas import (
    BatchPredictResponse,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    FieldEffectOut,
    PredictResponse,
)
from app.scoring.service import PredictionService

router = APIRouter(tags=["scoring"])

_ERRORS: dict[int | str, dict[str, object]] = {
    413: {"model": ErrorResponse, "description": "batch larger than CTR_MAX_BATCH_SIZE"},
    422: {"model": ErrorResponse, "description": "invalid features"},
    503: {
        "model": ErrorResponse,
        "description": "overloaded (with Retry-After), or the model failed to score",
    },
}


# A body that arrives in one ASGI message (nearly all of them) is answered before routing,
# by app/api/fast_predict.py, with the same answer(); these routes document the predict
# endpoints and answer a body that arrives in several messages.
_PREDICT: dict[str, object] = {
    "response_model": PredictResponse | BatchPredictResponse,
    "responses": _ERRORS,
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": predict_request_schema()}},
        }
    },
}


@router.post("/predict", **_PREDICT)  # type: ignore[arg-type]
async def predict(request: Request) -> Response:
    """Score one row (``features``) or a batch (``instances``) with the default model,
    cache first."""
    return await _predict(request, None, None)


@router.post(MODEL_PREDICT, **_PREDICT)  # type: ignore[arg-type]
async def predict_model(request: Request, model_name: str) -> Response:
    """Score with model ``model_name``: the version its policy routes the request to."""
    return await _predict(request, model_name, None)


@router.post(VERSION_PREDICT, **_PREDICT)  # type: ignore[arg-type]
async def predict_version(request: Request, model_name: str, model_version: str) -> Response:
    """Score with one version of a model, named by version or by label (``canary``)."""
    return await _predict(request, model_name, model_version)


async def _predict(request: Request, model: str | None, version: str | None) -> Response:
    service, settings = get_service(request), get_settings_dep(request)
    body = await request.body()
    answered = await answer(service, settings.max_batch_size, body, model, version)
    return Response(answered, media_type="application/json")


@router.post("/explain", responses=_ERRORS)
def explain(body: ExplainRequest, service: ServiceDep) -> ExplainResponse:
    """Why this score (default model): each field's effect, measured by moving it to its
    field average."""
    return _explain(service, None, body)


@router.post("/models/{model_name}/explain", responses={404: {"model": ErrorResponse}, **_ERRORS})
def explain_model(model_name: str, body: ExplainRequest, service: ServiceDep) -> ExplainResponse:
    """Why this score of model ``model_name``'s default version."""
    return _explain(service, model_name, body)


def _explain(
    service: PredictionService, model: str | None, body: ExplainRequest
) -> ExplainResponse:
    result = service.explain(service.model(model).lineup.default, body.features)
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
