"""The one scoring pipeline every protocol enters once it has decoded its body, and
per-field explanations. Imports no FastAPI.

```
field values ─► FeatureEncoder ─► ScoreCache.lookup ─► misses ─► Batcher ─► ScoreCache.store
                                                                       └─► PredictionLog (sampled)
```
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from app.cache import ScoreCache
from app.features.encoder import FeatureEncoder
from app.features.errors import SpecError
from app.features.spec import MISSING_INDEX, UNSEEN_INDEX
from app.metrics import STAGES, ServiceMetrics
from app.scoring.batcher import Batcher
from app.scoring.prediction_log import PredictionLog, Values
from app.scoring.registry import ModelRegistry
from app.scoring.scorer import Scorer

logger = logging.getLogger(__name__)

EncodedAs = Literal["value", "missing", "unseen"]
Encode = Callable[[FeatureEncoder], NDArray[np.int64]]
_PARSE, _ENCODE, _CACHE = (STAGES.index(stage) for stage in ("parse", "encode", "cache"))
# Encoding this many rows takes a few milliseconds (10,000 rows of 39 fields: ~60 ms):
# a batch that large is encoded in a thread, so the event loop keeps answering others.
LARGE_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Scored:
    scores: NDArray[np.float32]
    cached: NDArray[np.bool_]
    version: str

    @property
    def cache_hits(self) -> int:
        return int(np.count_nonzero(self.cached))


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
    """Encode -> score cache -> batcher (the misses) -> store, for every protocol.

    Subscribes to the registry: every swap, by a poll or a reload, resets the score cache
    and announces the version under the registry's lock, so two swaps cannot interleave.
    With a prediction log, the sampled rows of every answered request are queued to it.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: ScoreCache,
        batcher: Batcher,
        metrics: ServiceMetrics,
        log: PredictionLog | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.batcher = batcher
        self.metrics = metrics
        self.log = log
        self.model_name = registry.repository.name  # resolved once: it reads the disk
        registry.subscribe(self._announce, self._refused)

    def parsed(self, seconds: float) -> None:
        """Count a protocol adapter's time decoding a body."""
        self.metrics.tally.stage(_PARSE, seconds)

    async def score(
        self, scorer: Scorer, encode: Encode, rows: int, values: Values | None = None
    ) -> Scored:
        """The scores of ``rows`` rows that ``encode`` turns into indices with ``scorer``'s
        encoder (raises ``EncodeError``, ``ScoringError`` or ``OverloadedError``).

        The caller reads ``registry.current`` once and passes it here, so a request that
        spans a swap is decoded and scored by one version. ``values`` are the request's
        values by field (or its one row), for the prediction log.
        """
        if rows > LARGE_BATCH_ROWS:
            indices = await asyncio.to_thread(self._encode, scorer, encode)
        else:
            indices = self._encode(scorer, encode)
        tally = self.metrics.tally
        started = time.perf_counter()
        lookup = self.cache.lookup(scorer.version, indices)
        misses = np.flatnonzero(~lookup.hits)
        cache_s = time.perf_counter() - started
        if len(misses):
            todo = indices if len(misses) == len(indices) else indices[misses]
            lookup.scores[misses] = await self.batcher.score(scorer, todo)
            started = time.perf_counter()
            self.cache.store(lookup)
            cache_s += time.perf_counter() - started
        tally.stage(_CACHE, cache_s)
        tally.lookups(len(indices) - len(misses), len(misses))
        tally.scores(lookup.scores)
        if self.log is not None and values is not None:
            self._log(self.log, scorer, lookup.scores, lookup.hits, values)
        return Scored(lookup.scores, lookup.hits, scorer.version)

    def _log(
        self,
        log: PredictionLog,
        scorer: Scorer,
        scores: NDArray[np.float32],
        cached: NDArray[np.bool_],
        values: Values,
    ) -> None:
        """Queue the request's sampled rows to the prediction log."""
        chosen, values = log.rows_to_log(scorer.encoder, values)
        if chosen is False:
            return
        rows = None if chosen is True else chosen
        log.add(self.model_name, scorer.version, scores, cached, scorer.encoder, values, rows)

    def _encode(self, scorer: Scorer, encode: Encode) -> NDArray[np.int64]:
        """Encode (timed), and count the missing and unseen values of what was encoded."""
        started = time.perf_counter()
        indices = encode(scorer.encoder)
        tally = self.metrics.tally
        tally.stage(_ENCODE, time.perf_counter() - started)
        tally.rows(scorer.version, scorer.encoder.names, indices)
        return indices

    def explain(self, features: Mapping[str, object]) -> Explanation:
        """Each field's effect = score - score with that field set to its field average.

        The field average is the unseen row filled at export, so this reuses exactly the
        path a never-seen value takes. All variants are scored in one direct call, not
        cached: they are not served scores.
        """
        scorer = self.registry.current
        row = scorer.encoder.encode_rows([features])[0]
        num_fields = len(row)
        variants = np.repeat(row[None, :], num_fields + 2, axis=0)
        variants[np.arange(num_fields), np.arange(num_fields)] = UNSEEN_INDEX
        variants[num_fields] = UNSEEN_INDEX  # baseline: every field at its average
        scores = scorer.score_indices(variants)
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

    def flush_metrics(self) -> None:
        """Move this worker's tallies, cache size and queue depth into Prometheus."""
        self.metrics.flush()
        self.metrics.cache_entries.set(len(self.cache))
        self.metrics.queued_rows.set(self.batcher.queued_rows)

    def _announce(self, scorer: Scorer, swapped: bool) -> None:
        """Point the score cache and the metrics at the version now served (under the
        registry's lock)."""
        self.cache.reset(scorer.version, max(scorer.manifest.features.field_dims) - 1)
        self.metrics.set_model(scorer.manifest.model_type, scorer.version)
        if swapped:
            self.metrics.reloads.labels(outcome="ok").inc()

    def _refused(self, exc: SpecError) -> None:
        self.metrics.reloads.labels(outcome="failed").inc()
        logger.error("model load refused, still serving %s: %s", self.registry.current.version, exc)


def _kind(index: int) -> EncodedAs:
    if index == MISSING_INDEX:
        return "missing"
    return "unseen" if index == UNSEEN_INDEX else "value"
