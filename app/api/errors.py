"""Exception handlers: every failure becomes a clear 4xx or a 503, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from app.features.errors import EncodeError
from app.schemas import BodyError
from app.scoring.scorer import ScoringError

logger = logging.getLogger(__name__)


def _encode_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EncodeError)
    detail = [{"loc": ["body", "features", exc.field], "msg": exc.detail, "type": "encode_error"}]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


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


def _body_error(request: Request, exc: Exception) -> JSONResponse:
    """422 for a /predict body that is not JSON or not the request's shape."""
    assert isinstance(exc, BodyError)
    detail = [{"loc": ["body"], "msg": str(exc), "type": "body_error"}]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _scoring_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("scoring failed: %s", exc)
    return JSONResponse(
        {"detail": "the model could not score this request; try again"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before sending its whole body: nobody is left to answer."""
    logger.debug("client disconnected during %s", request.url.path)
    return Response(status_code=499)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EncodeError, _encode_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(BodyError, _body_error)
    app.add_exception_handler(ScoringError, _scoring_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
