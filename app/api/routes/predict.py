"""POST /predict and POST /explain."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import ServiceDep, get_service, get_settings_dep
from app.protocol.predict_json import answer, predict_request_schema
from app.schemas import (
    BatchPredictResponse,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    FieldEffectOut,
    PredictResponse,
)

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
# by app/api/fast_predict.py, with the same answer(); this route documents /predict and
# answers a body that arrives in several messages.
@router.post(
    "/predict",
    response_model=PredictResponse | BatchPredictResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": predict_request_schema()}},
        }
    },
)
async def predict(request: Request) -> Response:
    """Score one row (``features``) or a batch (``instances``), cache first."""
    service, settings = get_service(request), get_settings_dep(request)
    body = await answer(service, settings.max_batch_size, await request.body())
    return Response(body, media_type="application/json")


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
