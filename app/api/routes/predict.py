"""POST /predict and POST /explain."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import ServiceDep, get_service, get_settings_dep
from app.schemas import (
    BatchPredictResponse,
    BatchTooLargeError,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    FieldEffectOut,
    PredictResponse,
    predict_request_schema,
)
from app.scoring.service import CacheUse, DecodedBatch, PredictionService, Scored

router = APIRouter(tags=["scoring"])

_JSON = "application/json"

_ERRORS: dict[int | str, dict[str, object]] = {
    413: {"model": ErrorResponse, "description": "batch larger than CTR_MAX_BATCH_SIZE"},
    422: {"model": ErrorResponse, "description": "invalid features"},
    503: {"model": ErrorResponse, "description": "the model failed to score"},
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
    # Plain calls rather than Depends(): FastAPI's dependency solving costs this route more
    # than half its throughput on cache hits (see docs/BENCHMARKS.md).
    service, settings = get_service(request), get_settings_dep(request)
    raw = await request.body()
    body = await answer(service, settings.max_batch_size, raw, service.cache_use(raw))
    return Response(body, media_type=_JSON)


# The hot path reads and validates the body itself (msgspec decodes and checks its shape in
# one step) and returns ready bytes. A single row's cache miss is scored together with the
# other misses of this turn of the event loop (CTR_COALESCE_MAX_ROWS). While lately scored
# batch rows were cache hits, a batch's rows stay JSON text until needed: a row whose text
# was scored lately is answered from the response cache; otherwise a batch body is decoded
# whole, straight into the model's fields. The rows are encoded and looked up on the event
# loop and only their misses are scored, in the thread pool when they cost more than
# CTR_INLINE_MAX_MS; a batch of more than CTR_INLINE_MAX_ROWS goes to the pool whole.
# README "Sync vs async" has the measurements.
async def answer(
    service: PredictionService, max_batch_size: int, raw: bytes, use: CacheUse
) -> bytes:
    """The JSON answer to a /predict body, cache first (``use``: how a single row uses the
    caches, :meth:`PredictionService.cache_use`). Raises one of
    :data:`app.api.errors.SCORING_ERRORS` (a bad body or feature, too many rows, a failed
    onnxruntime call)."""
    body = service.parse(raw)
    if isinstance(body, DecodedBatch):
        _check_batch_size(len(body.rows), max_batch_size)
        scored = await service.predict_decoded(body, raw)
    elif body.features is not None:
        return single_answer(await service.predict_row(body.features, use))
    else:
        rows = body.instances or []
        _check_batch_size(len(rows), max_batch_size)
        scored = await service.predict_batch(rows, raw)
    batch = BatchPredictResponse(
        predictions=scored.scores.tolist(),
        model_version=scored.version,
        cached=scored.cached,
        cache_hits=sum(scored.cached),
    )
    return batch.model_dump_json().encode()


def _check_batch_size(rows: int, max_batch_size: int) -> None:
    if rows > max_batch_size:
        raise BatchTooLargeError(
            f"batch of {rows} rows exceeds the limit of {max_batch_size} (CTR_MAX_BATCH_SIZE)"
        )


def single_answer(scored: Scored) -> bytes:
    """The JSON body of a one-row /predict answer."""
    answer = PredictResponse(
        prediction=float(scored.scores[0]), model_version=scored.version, cached=scored.cached[0]
    )
    return answer.model_dump_json().encode()


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
