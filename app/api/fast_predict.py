"""POST /predict (and /models/<name>[/versions/<v>]/predict) answered as a pure ASGI app,
before FastAPI routes the request.

Starlette's exception middleware, the router, a ``Request`` and a ``Response`` cost a
/predict request more than parsing, encoding and scoring a row (a single-row cache miss
took 215 µs through the route and 130 µs here in process; docs/BENCHMARKS.md). So this
middleware reads the body and answers it with the route's own
:func:`~app.protocol.predict_json.answer`, its errors rendered as the exception handlers
render them. A body that arrives in more than one ASGI message (a large batch read while
it streams in) goes on to the route, with what was read handed back unchanged.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import SCORING_ERRORS, error_response
from app.api.middleware import ENDPOINT
from app.protocol.predict_json import answer
from app.scoring.service import PredictionService

_HEADERS = [(b"content-type", b"application/json")]
MODEL_PREDICT = "/models/{model_name}/predict"
VERSION_PREDICT = "/models/{model_name}/versions/{model_version}/predict"
_ERRORS: tuple[type[Exception], ...] = tuple(SCORING_ERRORS)


class FastPredictMiddleware:
    """Answer a POST /predict whose body came in one message; pass everything else on.

    Requests are timed and labelled by their route's template by the middlewares around
    this one (the endpoint is recorded in the scope, as the router records its route), and
    held to the request deadline and the body limit like any other.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _predict_route(scope) if scope["type"] == "http" else None
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
        try:
            body = await answer(
                service, state.settings.max_batch_size, message.get("body", b""), model, version
            )
        except _ERRORS as exc:
            await error_response(exc)(scope, receive, send)
            return
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _predict_route(scope: Scope) -> tuple[str, str | None, str | None] | None:
    """``(route template, model, version)`` of a POST to one of the predict routes."""
    if scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path == "/predict":
        return "/predict", None, None
    if not path.startswith("/models/") or not path.endswith("/predict"):
        return None
    parts = path.split("/")  # "", "models", name, ["versions", version,] "predict"
    if len(parts) == 4 and parts[2]:
        return MODEL_PREDICT, parts[2], None
    if len(parts) == 6 and parts[2] and parts[3] == "versions" and parts[4]:
        return VERSION_PREDICT, parts[2], parts[4]
    return None


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` with the message already read put back in front."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
