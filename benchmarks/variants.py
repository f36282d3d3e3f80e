"""App variants that exist only to be measured against the real one.

* ``create_bare_app``: the HTTP ceiling -- POST /predict returns constant JSON, no parsing.
* ``create_async_app``: the real app, but /predict is ``async def`` and scores inline on the
  event loop instead of in the thread pool (the alternative to the shipped design).
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from app.api.deps import ServiceDep, SettingsDep
from app.api.routes import predict as predict_routes
from app.main import create_app
from app.schemas import BatchPredictResponse, PredictRequest, PredictResponse


def create_bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def constant(request: Request) -> dict[str, object]:
        await request.body()
        return {"prediction": 0.5, "model_version": "constant", "cached": True}

    return app


def create_async_app() -> FastAPI:
    app = create_app()
    app.router.routes = [  # drop the shipped scoring router (/predict, /explain)
        r
        for r in app.router.routes
        if getattr(r, "original_router", None) is not predict_routes.router
    ]

    @app.post("/predict")
    async def predict_inline(
        body: PredictRequest, service: ServiceDep, settings: SettingsDep
    ) -> PredictResponse | BatchPredictResponse:
        return predict_routes.predict(body, service, settings)

    return app
