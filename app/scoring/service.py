"""The one scoring pipeline every protocol enters once it has decoded its body, for every
model the repository holds, and per-field explanations. Imports no FastAPI.

```
route: model ─► version (addressed, or the split's sticky share, or CURRENT) (+ a shadow)
field values ─► FeatureEncoder ─► ScoreCache.lookup ─► misses ─► Batcher ─► ScoreCache.store
                                                                       ├─► PredictionLog (sampled)
                                          shadow (sampled) ─► ShadowScorer's queue (full:
                                          dropped, counted): off the request's path
```
"""

from __future__ import annotations

import asyncio
import contextvars
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
from app.model.lineup import FirstValue, Lineup
from app.model.scorer import Scorer
from app.prediction_log.log import PredictionLog, Values
from app.scoring.batcher import Batcher
from app.scoring.registry import ModelRegistry
from app.scoring.shadow import ShadowJob, ShadowScorer

logger = logging.getLogger(__name__)

EncodedAs = Literal["value", "missing", "unseen"]
Encode = Callable[[FeatureEncoder], NDArray[np.int64]]
_PARSE, _ENCODE, _CACHE = (STAGES.index(stage) for stage in ("parse", "encode", "cache"))
# Larger batches are encoded in a thread, so the event loop keeps answering others while
# they take milliseconds: docs/THRESHOLDS.md#large_batch_rows
LARGE_BATCH_ROWS = 1024


class UnknownModelError(LookupError):
    """A model or a version (or label) this service does not serve: 404."""


@dataclass(frozen=True)
class Scored:
    scores: NDArray[np.float32]
    cached: NDArray[np.bool_]
    version: str

    @property
    def cache_hits(self) -> int:
        return int(np.count_nonzero(self.cached))


@dataclass(frozen=True)
class Target:
    """Where a request goes: a model, the version that answers, and a shadow version that
    scores it again off its path (or none)."""

    model: ServedModel
    scorer: Scorer
    shadow: Scorer | None = None


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


class ServedModel:
    """One model of the repository: its versions (the registry) and its score cache, whose
    budget its traffic alone spends. Subscribes to the registry: every change, by a poll or
    an admin call, points the cache and the metrics at the versions now loaded."""

    def __init__(self, registry: ModelRegistry, cache: ScoreCache, metrics: ServiceMetrics) -> None:
        self.registry = registry
        self.name = registry.name
        self.cache = cache
        self.metrics = metrics
        self.loaded_bytes = 0
        registry.subscribe(self._announce, self._refused)

    @property
    def lineup(self) -> Lineup:
        """The versions served now (``NotReadyError`` when none is loaded)."""
        return self.registry.lineup

    def addressed(self, lineup: Lineup, version: str | None) -> Scorer:
        """The version a request names (a version or a label), else the default;
        :class:`UnknownModelError` when it names one not loaded."""
        if not version:
            return lineup.default
        scorer = lineup.addressed(version)
        if scorer is None:
            have = sorted([*lineup.labels, *lineup.scorers])
            raise UnknownModelError(
                f"model '{self.name}' has no version or label '{version}' loaded "
                f"(loaded: {', '.join(have)})"
            )
        return scorer

    def route(self, lineup: Lineup, version: str | None, first: FirstValue | None) -> Target:
        """The version a request is answered by: the one it names (a version or a label),
        else the split's for the split's share, else ``CURRENT``'s; and a sampled shadow."""
        scorer = self.addressed(lineup, version)
        if not version:
            scorer = lineup.split(self.name, first) or scorer
        return Target(self, scorer, lineup.shadow(scorer))

    def _announce(self, lineup: Lineup, swapped: bool) -> None:
        """Point the cache and the metrics at the versions loaded (under the registry's
        lock)."""
        self.cache.serve(
            {v: max(s.manifest.features.field_dims) - 1 for v, s in lineup.scorers.items()}
        )
        roles = lineup.serves()
        self.metrics.set_model(
            self.name,
            [
                (version, scorer.manifest.model_type, ",".join(roles[version]))
                for version, scorer in lineup.scorers.items()
            ],
        )
        self.loaded_bytes = sum(scorer.file_bytes for scorer in lineup.scorers.values())
        if swapped:
            self.metrics.reloads.labels(self.name, "ok").inc()

    def _refused(self, action: str, exc: SpecError) -> None:
        self.metrics.reloads.labels(self.name, "failed").inc()
        serving = self.registry.loaded
        still = "nothing" if serving is None else serving.default.version
        logger.error("model %s: %s refused, still serving %s: %s", self.name, action, still, exc)


class PredictionService:
    """Route -> encode -> score cache -> batcher (the misses) -> store, for every protocol
    and every model; a sampled shadow scored off the request path; the prediction log.

    Args:
        models: every model served, by name.
        default: the model ``/predict`` (with no model named) answers.
        batcher: the onnxruntime threads every model's cache misses share.
        shadows: the thread shadows are scored on, so a slow shadow never holds up a
            request; its queue's bound is what drops shadows when it is busy.
    """

    def __init__(
        self,
        models: Mapping[str, ServedModel],
        default: str,
        batcher: Batcher,
        shadows: ShadowScorer,
        metrics: ServiceMetrics,
        log: PredictionLog | None = None,
    ) -> None:
        if default not in models:
            raise ValueError(f"default model {default!r} is not one of {sorted(models)}")
        self.models = dict(models)
        self.default = default
        self.batcher = batcher
        self.shadows = shadows
        self.metrics = metrics
        self.log = log

    def model(self, name: str | None = None) -> ServedModel:
        """The model ``name`` (the default one for ``None``); :class:`UnknownModelError`."""
        served = self.models.get(self.default if name is None else name)
        if served is None:
            raise UnknownModelError(
                f"unknown model '{name}'; this server serves {', '.join(sorted(self.models))}"
            )
        return served

    def parsed(self, seconds: float) -> None:
        """Count a protocol adapter's time decoding a body."""
        self.metrics.tally.stage(_PARSE, seconds)

    async def score(
        self, target: Target, encode: Encode, rows: int, values: Values | None = None
    ) -> Scored:
        """The scores of ``rows`` rows that ``encode`` turns into indices with the target
        version's encoder (raises ``EncodeError``, ``ScoringError`` or ``OverloadedError``).

        The caller routes the request once (:meth:`ServedModel.route`) and passes the
        target here, so a request that spans a swap is decoded and scored by one version.
        ``values`` are the request's values by field (or its one row), for the log.
        """
        scorer, model = target.scorer, target.model
        if rows > LARGE_BATCH_ROWS:
            indices = await asyncio.to_thread(self._encode, model.name, scorer, encode)
        else:
            indices = self._encode(model.name, scorer, encode)
        tally = self.metrics.tally
        started = time.perf_counter()
        lookup = model.cache.lookup(scorer.version, indices)
        misses = lookup.misses
        cache_s = time.perf_counter() - started
        if len(misses):
            todo = indices if len(misses) == len(indices) else indices[misses]
            lookup.scores[misses] = await self.batcher.score(scorer, todo)
            started = time.perf_counter()
            model.cache.store(lookup)
            cache_s += time.perf_counter() - started
        tally.stage(_CACHE, cache_s)
        tally.served(
            model.name,
            scorer.version,
            scorer.encoder.names,
            len(indices) - len(misses),
            lookup.scores,
        )
        logged = None if self.log is None or values is None else values
        if target.shadow is not None:
            self._shadow(target, indices, encode, lookup.scores, lookup.hits, logged)
        elif logged is not None:
            self._log(model.name, scorer, lookup.scores, lookup.hits, logged)
        return Scored(lookup.scores, lookup.hits, scorer.version)

    def _shadow(
        self,
        target: Target,
        indices: NDArray[np.int64],
        encode: Encode,
        scores: NDArray[np.float32],
        cached: NDArray[np.bool_],
        values: Values | None,
    ) -> None:
        """Hand the request to the shadow thread (it never raises into the request); a
        logged request is logged when its shadow has scored it, with both scores."""
        shadow, model, primary = target.shadow, target.model, target.scorer
        assert shadow is not None
        done = None
        if values is not None:

            def done(shadow_scores: NDArray[np.float32] | None) -> None:
                both = None if shadow_scores is None else (shadow.version, shadow_scores)
                self._log(model.name, primary, scores, cached, values, both)

        try:
            same_fields = shadow.encoder.names == primary.encoder.names
            rows = indices if same_fields else encode(shadow.encoder)
        except Exception as exc:  # an encoding the shadow refuses (fields it does not know)
            logger.debug("shadow %s of model %s failed: %s", shadow.version, model.name, exc)
            self.metrics.tally.shadowed(
                model.name, primary.version, primary.encoder.names, shadow.version, "failed"
            )
            if done is not None:
                done(None)
            return
        job = ShadowJob(model.name, model.cache, primary, shadow, rows, scores, done)
        if done is not None:
            job.loop, job.context = asyncio.get_running_loop(), contextvars.copy_context()
        self.shadows.offer(job)

    def _log(
        self,
        model: str,
        scorer: Scorer,
        scores: NDArray[np.float32],
        cached: NDArray[np.bool_],
        values: Values,
        shadow: tuple[str, NDArray[np.float32]] | None = None,
    ) -> None:
        """Queue the request's sampled rows to the prediction log."""
        log = self.log
        assert log is not None
        chosen, values = log.rows_to_log(scorer.encoder, values)
        if chosen is False:
            return
        rows = None if chosen is True else chosen
        log.add(model, scorer.version, scores, cached, scorer.encoder, values, rows, shadow)

    def _encode(self, model: str, scorer: Scorer, encode: Encode) -> NDArray[np.int64]:
        """Encode (timed), and count the missing and unseen values of what was encoded."""
        started = time.perf_counter()
        indices = encode(scorer.encoder)
        tally = self.metrics.tally
        tally.stage(_ENCODE, time.perf_counter() - started)
        tally.rows(model, scorer.version, scorer.encoder.names, indices)
        return indices

    def explain(self, scorer: Scorer, features: Mapping[str, object]) -> Explanation:
        """Each field's effect = score - score with that field set to its field average.

        The field average is the unseen row filled at export, so this reuses exactly the
        path a never-seen value takes. All variants are scored in one direct call, not
        cached: they are not served scores.
        """
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
        """Move this worker's tallies, cache sizes, readiness and queue depth into
        Prometheus."""
        metrics = self.metrics
        metrics.flush()
        for name, model in self.models.items():
            metrics.cache_entries.labels(name).set(len(model.cache))
            metrics.cache_budget.labels(name).set(model.cache.maxsize)
            metrics.model_bytes.labels(name).set(model.loaded_bytes)
            metrics.model_ready.labels(name).set(1 if model.registry.ready else 0)
        metrics.queued_rows.set(self.batcher.queued_rows)

    def poll(self) -> None:
        """Every model follows its repository (a broken one never stops the others)."""
        for model in self.models.values():
            try:
                model.registry.poll()
            except Exception:  # one model's bad poll must not keep the others from theirs
                logger.exception("model %s: repository poll failed", model.name)


def _kind(index: int) -> EncodedAs:
    if index == MISSING_INDEX:
        return "missing"
    return "unseen" if index == UNSEEN_INDEX else "value"
