"""The open-loop benchmark's floor: an ASGI app on the same uvicorn (httptools, one worker)
that reads the request's body and answers a fixed JSON body, doing nothing else. k6's
latencies against it at a rate are what this machine, its kernel, uvicorn and k6 itself
cost at that rate: no server can answer faster here."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

_ANSWER = b'{"prediction":0.5}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"18")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    message: Message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})
