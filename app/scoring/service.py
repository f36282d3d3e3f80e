"""Cache-then-score for request rows, and per-field explanations. Imports no FastAPI."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from app.cache import ScoreCache
from app.features.spec import MISSING_INDEX, UNSEEN_INDEX
from app.metrics import ServiceMetrics
from app.scoring.registry import ModelRegistry
from app.scoring.scorer import Scorer, ScoringError

logger = logging.getLogger(__name__)

EncodedAs = Literal["value", "missing", "unseen"]


@dataclass(frozen=True)
class Scored:
    scores: NDArray[np.float32]
    cached: list[bool]
    version: str


@dataclass(frozen=True)
class FieldEffect:
    field: str
    encoded_as: EncodedAs
    effect: float
    prediction_without: float


@dataclass(frozen=True)
class Explanation:
    prediction: float
    baseline: float
    effects: list[FieldEffect]
    version: str

    @property
    def interaction_residual(self) -> float:
        """What the per-field effects leave unexplained: ``p - baseline - sum(effects)``."""
        return self.prediction - self.baseline - sum(e.effect for e in self.effects)


class PredictionService:
    """Encode -> cache lookup -> one onnxruntime call for all misses -> cache fill."""

    def __init__(
        self, registry: ModelRegistry, cache: ScoreCache[float], metrics: ServiceMetrics
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.metrics = metrics

    def predict(self, rows: Sequence[Mapping[str, object]]) -> Scored:
        """Score raw rows. Raises ``EncodeError`` (bad input) or ``ScoringError``."""
        scorer = self.registry.current  # one reference for the whole request
        return self._score(scorer, scorer.encoder.encode_rows(rows))

    def _score(self, scorer: Scorer, indices: NDArray[np.int64]) -> Scored:
        # The encoded row's bytes are the key: cheap to build, and equal exactly when the
        # model would see equal input (key order, unseen values, 5 vs "5" all collapse).
        keys = [(scorer.version, row.tobytes()) for row in indices]
        found = self.cache.get_many(keys)
        cached = [value is not None for value in found]
        misses = [i for i, hit in enumerate(cached) if not hit]
        if misses:
            # Every miss of the request goes to onnxruntime in one call.
            fresh = self._run(scorer, indices if len(misses) == len(keys) else indices[misses])
            self.cache.put_many([keys[i] for i in misses], fresh.tolist())
            if len(misses) == len(keys):
                scores = fresh
            else:
                scores = np.array([0.0 if v is None else v for v in found], dtype=np.float32)
                scores[misses] = fresh
        else:
            scores = np.array(found, dtype=np.float32)
        self.metrics.cache_hits.inc(len(keys) - len(misses))
        self.metrics.cache_misses.inc(len(misses))
        return Scored(scores, cached, scorer.version)

    def _run(self, scorer: Scorer, indices: NDArray[np.int64]) -> NDArray[np.float32]:
        try:
            fresh = scorer.score_indices(indices)
        except ScoringError:
            self.metrics.scoring_errors.inc()
            raise
        self.metrics.scored_batch_rows.observe(len(indices))
        return fresh

    def explain(self, features: Mapping[str, object]) -> Explanation:
        """Each field's effect = score - score with that field set to its field average.

        The field average is the unseen row filled at export, so this reuses exactly the
        path a never-seen value takes. All variants are scored in one call.
        """
        scorer = self.registry.current
        row = scorer.encoder.encode_rows([features])[0]
        num_fields = len(row)
        variants = np.repeat(row[None, :], num_fields + 2, axis=0)
        variants[np.arange(num_fields), np.arange(num_fields)] = UNSEEN_INDEX
        variants[num_fields] = UNSEEN_INDEX  # baseline: every field at its average
        scores = self._score(scorer, variants).scores
        prediction, baseline = float(scores[num_fields + 1]), float(scores[num_fields])
        effects = [
            FieldEffect(
                field=name,
                encoded_as=_kind(int(row[j])),
                effect=prediction - float(scores[j]),
                prediction_without=float(scores[j]),
            )
            for j, name in enumerate(scorer.encoder.names)
        ]
        effects.sort(key=lambda e: abs(e.effect), reverse=True)
        return Explanation(prediction, baseline, effects, scorer.version)


def _kind(index: int) -> EncodedAs:
    if index == MISSING_INDEX:
        return "missing"
    return "unseen" if index == UNSEEN_INDEX else "value"
