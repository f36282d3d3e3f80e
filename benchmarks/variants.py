"""The HTTP ceiling: a bare FastAPI app whose POST /predict returns constant JSON."""

from __future__ import annotations

from fastapi import FastAPI, Request


def create_bare_app() -> FastAPI:
    # Without FastAPI's native OpenTelemetry, as ctrserve runs by default (CTR_OTEL): the
    # framework's ceiling at its cheapest.
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def constant(request: Request) -> dict[str, object]:
        await request.body()
        return {"prediction": 0.5, "model_version": "constant", "cached": True}

    return app
