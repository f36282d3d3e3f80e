"""Exact repeats of a single-row /predict body, answered before FastAPI sees the request.

A response-cache hit needs the body's bytes and two dictionary lookups; going through
Starlette's exception middleware, the router, a ``Request`` and a ``Response`` cost more
than that (in process: 81 µs for a hit inside the route against 59 µs for a bare FastAPI
endpoint returning a constant). This pure ASGI middleware reads the body, asks the service
for the repeat and sends the stored answer's bytes; anything else continues to the app with
the body it read handed back unchanged.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.middleware import ENDPOINT
from app.schemas import PredictResponse
from app.scoring.service import PredictionService, Scored

_HEADERS = [(b"content-type", b"application/json")]


def single_answer(scored: Scored) -> bytes:
    """The JSON body of a one-row /predict answer."""
    answer = PredictResponse(
        prediction=float(scored.scores[0]), model_version=scored.version, cached=scored.cached[0]
    )
    return answer.model_dump_json().encode()


class RepeatMiddleware:
    """Answer a POST /predict whose body is a known repeat; pass everything else on.

    Requests are timed and labelled as /predict by the middlewares around this one (the
    endpoint is recorded in the scope, as the router records its route).
    """

    def __init__(self, app: ASGIApp, path: str = "/predict") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        message = await receive()
        service: PredictionService | None = getattr(scope["app"].state, "service", None)
        whole = message["type"] == "http.request" and not message.get("more_body", False)
        scored = service.repeat(message.get("body", b"")) if whole and service else None
        if scored is None:
            await self.app(scope, _replay(message, receive), send)
            return
        scope[ENDPOINT] = self.path
        body = single_answer(scored)
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` with the message already read put back in front."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
