"""POST /predict answered as a pure ASGI app, before FastAPI routes the request.

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
_ERRORS: tuple[type[Exception], ...] = tuple(SCORING_ERRORS)


class FastPredictMiddleware:
    """Answer a POST /predict whose body came in one message; pass everything else on.

    Requests are timed and labelled as /predict by the middlewares around this one (the
    endpoint is recorded in the scope, as the router records its route), and held to the
    request deadline and the body limit like any other.
    """

    def __init__(self, app: ASGIApp, path: str = "/predict") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        message = await receive()
        state = scope["app"].state
        service: PredictionService | None = getattr(state, "service", None)
        if message["type"] != "http.request" or message.get("more_body") or service is None:
            await self.app(scope, _replay(message, receive), send)
            return
        scope[ENDPOINT] = self.path
        try:
            body = await answer(service, state.settings.max_batch_size, message.get("body", b""))
        except _ERRORS as exc:
            await error_response(exc)(scope, receive, send)
            return
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` with the message already read put back in front."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
