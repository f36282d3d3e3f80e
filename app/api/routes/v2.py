"""The Open Inference Protocol (KServe V2) over HTTP: what Triton, KServe and MLServer speak.

Same model, same encoder, same score cache as ``/predict``; requests are columnar (one
tensor per field), in JSON or with Triton's binary tensor data extension. Errors are
``{"error": "..."}`` with a 4xx status, as the protocol's clients expect.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import JsonValue

from app.api.deps import get_service, get_settings_dep
from app.api.errors import protocol_error_response
from app.protocol.infer import HEADER_LENGTH, answer_http, any_model_ready, served
from app.protocol.tensors import ProtocolError, model_metadata, server_metadata

router = APIRouter(prefix="/v2", tags=["open inference protocol (KServe V2)"])

_ERROR = {"content": {"application/json": {"example": {"error": "what was wrong"}}}}


@router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "no model can score"}})
def ready(request: Request, response: Response) -> dict[str, bool]:
    """Ready while at least one model scores: one broken model never takes the others
    out of a load balancer (each model's own readiness is /v2/models/<name>/ready)."""
    is_ready = any_model_ready(get_service(request))
    if not is_ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": is_ready}


@router.get("")
def server(request: Request) -> dict[str, JsonValue]:
    return server_metadata(request.app.version)


@router.get("/models")
def models(request: Request) -> dict[str, list[str]]:
    """Every model this server serves (KServe's model list)."""
    return {"models": sorted(get_service(request).models)}


@router.get("/models/{model_name}", responses={404: _ERROR})
@router.get("/models/{model_name}/versions/{model_version}", responses={404: _ERROR})
def model(request: Request, model_name: str, model_version: str | None = None) -> Any:
    try:
        scorer = served(get_service(request), model_name, model_version).scorer
    except ProtocolError as exc:
        return protocol_error_response(exc)
    return model_metadata(model_name, scorer.version, scorer.manifest.features)


@router.get("/models/{model_name}/ready", responses={404: _ERROR})
@router.get("/models/{model_name}/versions/{model_version}/ready", responses={404: _ERROR})
def model_ready(
    request: Request, response: Response, model_name: str, model_version: str | None = None
) -> Any:
    try:
        scorer = served(get_service(request), model_name, model_version).scorer
    except ProtocolError as exc:
        if exc.status != status.HTTP_503_SERVICE_UNAVAILABLE:
            return protocol_error_response(exc)
        response.status_code = exc.status
        return {"name": model_name, "ready": False}
    is_ready = scorer.ready()
    if not is_ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"name": model_name, "ready": is_ready}


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "datatype", "shape"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "datatype": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "parameters": {"type": "object"},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "example": {
                    "inputs": [
                        {"name": "c0", "datatype": "BYTES", "shape": [2], "data": ["c0_1", ""]},
                        {"name": "n0", "datatype": "FP32", "shape": [2], "data": [2.5, 0.1]},
                    ]
                },
            }
        },
    }
}


@router.post(
    "/models/{model_name}/infer",
    responses={400: _ERROR, 404: _ERROR, 413: _ERROR, 503: _ERROR},
    openapi_extra=_INFER_BODY,
)
@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    responses={400: _ERROR, 404: _ERROR, 413: _ERROR, 503: _ERROR},
    openapi_extra=_INFER_BODY,
)
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    """Score N rows sent as one tensor per field. (A body that came in one piece is
    answered before routing, by app/api/fast_predict.py, with the same function.)"""
    service, settings = get_service(request), get_settings_dep(request)
    body = await request.body()
    try:
        answer, head = await answer_http(
            service, settings, body, request.headers.get(HEADER_LENGTH), model_name, model_version
        )
    except ProtocolError as exc:
        return protocol_error_response(exc)
    if head is None:
        return Response(answer, media_type="application/json")
    return Response(
        answer, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head)}
    )
