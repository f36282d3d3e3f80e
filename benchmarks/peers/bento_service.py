"""BentoML's service for the same model: ``{"features": {...}}`` or ``{"instances": [...]}``
in, the probabilities out, as a BentoML user writes it (one worker, one API).

Runs in the peers' own environment (``make peers``):

    bentoml serve benchmarks.peers.bento_service:CtrService --port 3000
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml

from benchmarks.peers.model import PeerModel


@bentoml.service(workers=1)
class CtrService:
    def __init__(self) -> None:
        self.model = PeerModel(Path(os.environ["CTR_MODEL_REPOSITORY"]))

    @bentoml.api
    def predict(
        self,
        features: dict[str, Any] | None = None,
        instances: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if features is not None:
            return {"prediction": float(self.model.score_rows([features])[0])}
        return {"predictions": self.model.score_rows(instances or []).tolist()}
