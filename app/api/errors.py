"""Exception handlers: every failure becomes a clear 4xx or a 503, never a traceback.

The domain errors a /predict request can raise are rendered by :func:`error_response`,
which serves both FastAPI's exception handlers and the /predict fast path
(app/api/fast_predict.py), so an error reads the same whichever way the request came.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from app.api.middleware import RETRY_AFTER_S
from app.features.errors import EncodeError
from app.model.scorer import ScoringError
from app.protocol.infer import OverloadedProtocolError
from app.protocol.predict_json import BatchTooLargeError, BodyError
from app.protocol.tensors import ProtocolError
from app.scoring.batcher import OverloadedError
from app.scoring.registry import NotReadyError
from app.scoring.service import UnknownModelError

logger = logging.getLogger(__name__)


def protocol_error_response(exc: ProtocolError) -> JSONResponse:
    """A V2 (Open Inference Protocol) error: ``{"error": "..."}`` with its status, and
    Retry-After when the service sheds load."""
    response = JSONResponse({"error": str(exc)}, status_code=exc.status)
    if isinstance(exc, OverloadedProtocolError):
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _encode_error(exc: Exception) -> JSONResponse:
    assert isinstance(exc, EncodeError)
    place: list[str | int] = ["features"] if exc.row is None else ["instances", exc.row]
    detail = [{"loc": ["body", *place, exc.field], "msg": exc.detail, "type": "encode_error"}]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _body_error(exc: Exception) -> JSONResponse:
    """422 for a /predict body that is not JSON or not the request's shape."""
    detail = [{"loc": ["body"], "msg": str(exc), "type": "body_error"}]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _batch_too_large(exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)


def _scoring_error(exc: Exception) -> JSONResponse:
    logger.error("scoring failed: %s", exc)
    return JSONResponse(
        {"detail": "the model could not score this request; try again"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _overloaded(exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"overloaded: {exc}"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _unknown_model(exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)


def _not_ready(exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc)},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


# The errors of scoring a request, by the exception type its code raises.
SCORING_ERRORS: dict[type[Exception], Callable[[Exception], JSONResponse]] = {
    EncodeError: _encode_error,
    BodyError: _body_error,
    BatchTooLargeError: _batch_too_large,
    ScoringError: _scoring_error,
    OverloadedError: _overloaded,
    UnknownModelError: _unknown_model,
    NotReadyError: _not_ready,
}


def error_response(exc: Exception) -> JSONResponse:
    """The answer to one of the :data:`SCORING_ERRORS` or a subclass of one (``KeyError``
    for any other exception)."""
    for kind, render in SCORING_ERRORS.items():  # none of them is a subclass of another
        if isinstance(exc, kind):
            return render(exc)
    raise KeyError(type(exc).__name__)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with where, what and why of each problem.

    FastAPI's default echoes the input back; that can hold NaN (which JSON cannot render) or
    data a client should not see reflected, so only location, message and type are kept.
    """
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _scoring_handler(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before sending its whole body: nobody is left to answer."""
    logger.debug("client disconnected during %s", request.url.path)
    return Response(status_code=499)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    for kind in SCORING_ERRORS:
        app.add_exception_handler(kind, _scoring_handler)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
