"""The peer a FastAPI user writes first: pydantic body, onnxruntime, a cachetools TTL cache.

Written the obvious way on purpose (a sync route in the thread pool, the cache keyed on the
row's sorted JSON, one lock): what ctrserve is measured against when someone asks "why not
just write the endpoint?". ``CTR_MODEL_REPOSITORY`` names the model, ``CTR_CACHE_MAXSIZE`` sizes
the cache.

    uvicorn --factory benchmarks.peers.plain_app:create_app --no-access-log
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from fastapi import FastAPI
from pydantic import BaseModel

from benchmarks.peers.model import PeerModel


class Body(BaseModel):
    features: dict[str, Any] | None = None
    instances: list[dict[str, Any]] | None = None


def create_app() -> FastAPI:
    model = PeerModel(Path(os.environ["CTR_MODEL_REPOSITORY"]))
    cache: TTLCache[str, float] = TTLCache(
        maxsize=int(os.environ.get("CTR_CACHE_MAXSIZE", "100000")), ttl=3600
    )
    lock = threading.Lock()
    # FastAPI's native OpenTelemetry off, as ctrserve runs by default (CTR_OTEL): on, it
    # looks for a configured provider on every request.
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        rows = [body.features] if body.features is not None else body.instances or []
        keys = [json.dumps(row, sort_keys=True) for row in rows]
        with lock:
            scores = [cache.get(key) for key in keys]
        misses = [i for i, score in enumerate(scores) if score is None]
        if misses:
            fresh = model.score_rows([rows[i] for i in misses]).tolist()
            with lock:
                for i, score in zip(misses, fresh, strict=True):
                    scores[i] = cache[keys[i]] = score
        if body.features is not None:
            return {"prediction": scores[0]}
        return {"predictions": scores}

    return app
