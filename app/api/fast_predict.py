"""The scoring routes answered as a pure ASGI app, before FastAPI routes the request:
POST /predict (and /models/<name>[/versions/<v>]/predict) and the V2 infer routes
(/v2/models/<name>[/versions/<v>]/infer).

Starlette's exception middleware, the router, a ``Request`` and a ``Response`` cost a
request more than parsing, encoding and scoring a row (docs/BENCHMARKS.md, "Where the time
goes"). So this middleware
reads the body and answers it with the routes' own functions
(:func:`~app.protocol.predict_json.answer`, :func:`~app.protocol.infer.answer_http`), its
errors rendered as the routes render them. A body that arrives in more than one ASGI
message (a large batch read while it streams in) goes on to the route, with what was read
handed back unchanged.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import SCORING_ERRORS, error_response, protocol_error_response
from app.api.middleware import ENDPOINT
from app.protocol.infer import HEADER_LENGTH, answer_http
from app.protocol.predict_json import answer
from app.protocol.tensors import ProtocolError
from app.scoring.service import PredictionService

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_HEADER_LENGTH = HEADER_LENGTH.lower().encode("latin-1")
MODEL_PREDICT = "/models/{model_name}/predict"
VERSION_PREDICT = "/models/{model_name}/versions/{model_version}/predict"
MODEL_INFER = "/v2/models/{model_name}/infer"
VERSION_INFER = "/v2/models/{model_name}/versions/{model_version}/infer"
_ERRORS: tuple[type[Exception], ...] = tuple(SCORING_ERRORS)


class FastPredictMiddleware:
    """Answer a POST to a scoring route whose body came in one message; pass everything
    else on.

    Requests are timed and labelled by their route's template by the middlewares around
    this one (the endpoint is recorded in the scope, as the router records its route), and
    held to the request deadline and the body limit like any other.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _scoring_route(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        message = await receive()
        state = scope["app"].state
        service: PredictionService | None = getattr(state, "service", None)
        if message["type"] != "http.request" or message.get("more_body") or service is None:
            await self.app(scope, _replay(message, receive), send)
            return
        endpoint, model, version = route
        scope[ENDPOINT] = endpoint
        body: bytes = message.get("body", b"")
        headers = [(b"content-type", _JSON)]
        if endpoint in (MODEL_INFER, VERSION_INFER):
            assert model is not None
            length = Headers(scope=scope).get(HEADER_LENGTH)
            try:
                body, head = await answer_http(
                    service, state.settings, body, length, model, version
                )
            except ProtocolError as exc:
                await protocol_error_response(exc)(scope, receive, send)
                return
            if head is not None:
                headers = [(b"content-type", _BINARY), (_HEADER_LENGTH, str(head).encode())]
        else:
            try:
                body = await answer(service, state.settings.max_batch_size, body, model, version)
            except _ERRORS as exc:
                await error_response(exc)(scope, receive, send)
                return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _scoring_route(scope: Scope) -> tuple[str, str | None, str | None] | None:
    """``(route template, model, version)`` of a POST to one of the scoring routes."""
    if scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path == "/predict":
        return "/predict", None, None
    parts = path.split("/")  # "", ["v2",] "models", name, ["versions", version,] action
    if parts[1:2] == ["models"] and parts[-1] == "predict":
        return _named(parts[2:-1], MODEL_PREDICT, VERSION_PREDICT)
    if parts[1:3] == ["v2", "models"] and parts[-1] == "infer":
        return _named(parts[3:-1], MODEL_INFER, VERSION_INFER)
    return None


def _named(
    parts: list[str], model_route: str, version_route: str
) -> tuple[str, str | None, str | None] | None:
    """The route of ``name`` or ``name/versions/version`` (``None``: neither)."""
    if len(parts) == 1 and parts[0]:
        return model_route, parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return version_route, parts[0], parts[2]
    return None


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` with the message already read put back in front."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
