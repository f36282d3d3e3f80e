"""Cache-then-score for request rows, following the model repository, and per-field
explanations. Every caching decision lives here; imports no FastAPI."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from app.cache import ResponseCache, RowKey, ScoreCache
from app.features.errors import SpecError
from app.features.spec import MISSING_INDEX, UNSEEN_INDEX
from app.metrics import STAGES, ServiceMetrics
from app.schemas import PredictRequest
from app.scoring.registry import ModelRegistry, Swap
from app.scoring.scorer import Scorer, ScoringError

logger = logging.getLogger(__name__)

EncodedAs = Literal["value", "missing", "unseen"]
_PARSE, _ENCODE, _CACHE, _ORT = range(len(STAGES))


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
    """Parse -> response cache -> encode -> score cache -> one onnxruntime call -> fill.

    Also the one place a model swap happens for this worker (:meth:`follow`,
    :meth:`switch`, :meth:`publish`): the caches of the old version are dropped and the
    metrics updated whichever way the swap came.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: ScoreCache[float],
        responses: ResponseCache,
        metrics: ServiceMetrics,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.responses = responses
        self.metrics = metrics
        self._announce(registry.current)

    # -- requests ---------------------------------------------------------------------

    def repeat(self, body: bytes) -> Scored | None:
        """The answer to an exact repeat of a single-row body whose score is still cached."""
        started = time.perf_counter()
        digest = self.responses.key(body)
        if digest is None:
            return None
        scorer = self.registry.current
        key = self.responses.lookup(digest, scorer.version)
        score = None if key is None else self.cache.get_many((key,))[0]
        if score is None:
            return None
        tally = self.metrics.tally
        tally.stage(_CACHE, time.perf_counter() - started)
        scores = np.array([score], dtype=np.float32)
        tally.scores(scores)
        tally.lookups(1, 0)
        return Scored(scores, [True], scorer.version)

    def parse(self, body: bytes) -> PredictRequest:
        """Validate a /predict body (raises pydantic's ``ValidationError``)."""
        started = time.perf_counter()
        request = PredictRequest.model_validate_json(body)
        self.metrics.tally.stage(_PARSE, time.perf_counter() - started)
        return request

    def predict(self, rows: Sequence[Mapping[str, object]], body: bytes | None = None) -> Scored:
        """Score raw rows. Raises ``EncodeError`` (bad input) or ``ScoringError``.

        ``body``: the raw single-row request, offered to the response cache.
        """
        scorer = self.registry.current  # one reference for the whole request
        indices = self._encode(scorer, lambda: scorer.encoder.encode_rows(rows))
        scored, keys = self._score(scorer, indices)
        digest = None if body is None or len(keys) != 1 else self.responses.key(body)
        if digest is not None:
            self.responses.offer(digest, keys[0])
        return scored

    def predict_columns(self, arrays: Mapping[str, NDArray[Any]], num_rows: int) -> Scored:
        """Score one array per field (the inference protocol's tensors), encoded whole.

        Raises ``EncodeError`` (bad input) or ``ScoringError``.
        """
        scorer = self.registry.current
        indices = self._encode(scorer, lambda: scorer.encoder.encode_columns(arrays, num_rows))
        return self._score(scorer, indices)[0]

    def _encode(self, scorer: Scorer, encode: Callable[[], NDArray[np.int64]]) -> NDArray[np.int64]:
        """Encode (timed), and count the missing and unseen values of what was encoded."""
        started = time.perf_counter()
        indices = encode()
        tally = self.metrics.tally
        tally.stage(_ENCODE, time.perf_counter() - started)
        tally.rows(scorer.version, scorer.encoder.names, indices)
        return indices

    def _score(self, scorer: Scorer, indices: NDArray[np.int64]) -> tuple[Scored, list[RowKey]]:
        # The encoded row's bytes are the key: cheap to build, and equal exactly when the
        # model would see equal input (key order, unseen values, 5 vs "5" all collapse).
        started = time.perf_counter()
        tally = self.metrics.tally
        version = scorer.version
        if self.cache.enabled:
            keys = [(version, row.tobytes()) for row in indices]
            found = self.cache.get_many(keys)
            misses = [i for i, value in enumerate(found) if value is None]
        else:  # no keys to build, nothing to look up or fill
            keys, found, misses = [], [None] * len(indices), list(range(len(indices)))
        cache_s = time.perf_counter() - started
        if misses:
            # Every miss of the request goes to onnxruntime in one call.
            ort_started = time.perf_counter()
            every = len(misses) == len(indices)
            fresh = self._run(scorer, indices if every else indices[misses])
            tally.stage(_ORT, time.perf_counter() - ort_started)
            if keys:
                fill_started = time.perf_counter()
                self.cache.put_many([keys[i] for i in misses], fresh.tolist())
                cache_s += time.perf_counter() - fill_started
            if every:
                scores = fresh
            else:
                scores = np.array([0.0 if v is None else v for v in found], dtype=np.float32)
                scores[misses] = fresh
        else:
            scores = np.array(found, dtype=np.float32)
        tally.stage(_CACHE, cache_s)
        tally.scores(scores)
        tally.lookups(len(indices) - len(misses), len(misses))
        cached = [value is not None for value in found]
        return Scored(scores, cached, version), keys

    def _run(self, scorer: Scorer, indices: NDArray[np.int64]) -> NDArray[np.float32]:
        try:
            fresh = scorer.score_indices(indices)
        except ScoringError:
            self.metrics.scoring_errors.inc()
            raise
        self.metrics.tally.scored(len(indices))
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
        scores = self._score(scorer, variants)[0].scores
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

    # -- model versions ---------------------------------------------------------------

    def follow(self) -> Swap | None:
        """One poll of the repository pointer (the poller calls this every few seconds).

        A version that fails to load is logged and counted once; the old one keeps serving.
        """
        try:
            return self._reload(self.registry.poll)
        except SpecError:
            return None

    def switch(self, version: str | None) -> Swap | None:
        """Serve ``version`` and point the repository at it (``None``: re-read the pointer
        now instead of at the next poll).

        Raises:
            SpecError: it cannot be loaded; the old version keeps serving.
        """
        return self._reload(lambda: self.registry.switch(version))

    def publish(self, source: Path) -> Swap | None:
        """Copy an exported model into the repository as a version, point at it, serve it.

        Raises:
            SpecError: it cannot be loaded; nothing is published, the old version serves.
        """
        return self._reload(lambda: self.registry.publish(source))

    def flush_metrics(self) -> None:
        """Move this worker's tallies and cache sizes into its Prometheus collectors."""
        self.metrics.flush()
        self.metrics.cache_entries.set(len(self.cache))
        self.metrics.response_cache_bytes.set(self.responses.nbytes)

    def _announce(self, scorer: Scorer) -> None:
        self.metrics.set_model(scorer.manifest.model_type, scorer.version)

    def _swapped(self, swap: Swap | None) -> Swap | None:
        if swap is None:
            return None
        # Entries of the old version can never be served again (the version is part of
        # every key): drop them now rather than let them crowd the LRU until they expire.
        self.cache.clear()
        self.responses.clear()
        self._announce(swap.current)
        self.metrics.reloads.labels(outcome="ok").inc()
        return swap

    def _reload(self, attempt: Callable[[], Swap | None]) -> Swap | None:
        try:
            swap = attempt()
        except SpecError as exc:
            self._refused(exc)
            raise
        return self._swapped(swap)

    def _refused(self, exc: SpecError) -> None:
        self.metrics.reloads.labels(outcome="failed").inc()
        logger.error("model load refused, still serving %s: %s", self.registry.current.version, exc)


def _kind(index: int) -> EncodedAs:
    if index == MISSING_INDEX:
        return "missing"
    return "unseen" if index == UNSEEN_INDEX else "value"
