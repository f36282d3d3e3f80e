"""Cache-then-score for request rows, following the model repository, and per-field
explanations. Every caching decision lives here; imports no FastAPI."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from app.cache import Lookup, ResponseCache, ScoreCache, row_text_keys
from app.features.errors import EncodeError, SpecError
from app.features.spec import MISSING_INDEX, UNSEEN_INDEX
from app.metrics import STAGES, ServiceMetrics
from app.schemas import PredictRequest, decode_rows, parse_predict
from app.scoring.batch_misses import Answer, BatchMissPool
from app.scoring.coalescer import MissCoalescer
from app.scoring.gate import CacheGate
from app.scoring.registry import ModelRegistry, Swap
from app.scoring.scorer import Scorer, ScoringError
from app.scoring.threads import ScoringThreads

logger = logging.getLogger(__name__)

EncodedAs = Literal["value", "missing", "unseen"]
_PARSE, _ENCODE, _CACHE, _ORT = range(len(STAGES))
# Batch rows' texts are looked up in the response cache while more than this share of
# recent batch rows were cache hits. Looking up a row's text costs every row ~0.5 µs (its
# hash, a dict get: app/cache.py's AnswerStore); a row found saves its decoding, encoding
# and score-cache lookup, ~4 µs on a 10-field model and ~9.5 µs on a 39-field one. It pays
# from a share of ~0.13 and ~0.05 respectively; below the threshold an all-miss stream pays
# nothing.
REPEATS_MIN_SHARE = 0.2
# Below this share of hits among the requests that asked them, the caches are asked only by
# probes (app/scoring/gate.py): a stream of one-off rows then costs ~1/8 of the caches' work
# on a miss. A single-row hit saves its encoding and onnxruntime call (~60 µs of ~106 on
# the 10-field model, more on larger ones) where asking costs a miss ~18 µs; below 5% the
# caches are a loss on every model measured.
CACHE_MIN_SHARE = 0.05
# Single rows: a request's weight in the share (it follows ~100 requests), one probe in 8,
# backing off to one in 32 while the probes find nothing.
SINGLE_WEIGHT, SINGLE_PROBE_EVERY, SINGLE_PROBE_MAX = 0.01, 8, 32
# Batches (also the threshold for their texts, above): a batch's weight (it follows ~20
# batches), one probe in 8.
BATCH_WEIGHT, BATCH_PROBE_EVERY = 0.05, 8
# While batch rows are not looked up by their text, a body of up to this many bytes is
# decoded whole on the event loop, a batch's rows straight into the model's fields
# (app/scoring/rows.py): at most ~1 ms (~390 rows of the 39-field production NFFM, ~1,700
# of the 10-field default model). A larger body keeps its rows as text, decoded with their
# encoding: in a thread when the batch has more than CTR_INLINE_MAX_ROWS rows.
WHOLE_BODY_MAX_BYTES = 256 * 1024


class CacheUse(NamedTuple):
    """How one single-row request uses the caches, decided as it arrives
    (:meth:`PredictionService.cache_use`)."""

    asks: bool  # it looks up and stores (False: the gate sends it straight to the model)
    digest: bytes | None  # its body's response-cache key, when it asks and may be cached


_BYPASS = CacheUse(asks=False, digest=None)


@dataclass(frozen=True)
class DecodedBatch:
    """A batch body decoded straight into the fields of the model version that decoded it
    (:meth:`PredictionService.parse`), scored by that version."""

    scorer: Scorer
    rows: list[Any]


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

    With ``coalesce_max_rows`` > 0 a single-row miss shares its onnxruntime call with the
    other single-row misses of the same turn of the event loop (:class:`MissCoalescer`),
    and the rows of batches that the response cache did not answer by their text are
    decoded, encoded and scored with those of the other batches of that turn
    (:class:`BatchMissPool`); either way, in calls of about ``coalesce_max_rows`` rows.

    Also the one place a model swap happens for this worker (:meth:`follow`,
    :meth:`switch`, :meth:`publish`): the caches of the old version are dropped and the
    metrics updated whichever way the swap came.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: ScoreCache,
        responses: ResponseCache,
        metrics: ServiceMetrics,
        threads: ScoringThreads,
        coalesce_max_rows: int = 0,
        inline_max_rows: int = 256,
        inline_max_s: float = 0.0002,
        coalesce_max_s: float = 0.0005,
        coalesce_thread_s: float = 0.00005,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.responses = responses
        self.metrics = metrics
        self.threads = threads
        self.inline_max_rows = inline_max_rows
        self.inline_max_s = inline_max_s
        self.single_gate = CacheGate(
            CACHE_MIN_SHARE, SINGLE_WEIGHT, SINGLE_PROBE_EVERY, SINGLE_PROBE_MAX
        )
        self.batch_gate = CacheGate(CACHE_MIN_SHARE, BATCH_WEIGHT, BATCH_PROBE_EVERY)
        self.coalescer = (
            MissCoalescer(
                self._run, self._run_in_thread, coalesce_max_rows, coalesce_max_s, coalesce_thread_s
            )
            if coalesce_max_rows > 0
            else None
        )
        self.batch_misses = (
            BatchMissPool(self._encode_fields, self._encode_text, self._pooled, coalesce_max_rows)
            if coalesce_max_rows > 0
            else None
        )
        self._announce(registry.current)

    # -- requests ---------------------------------------------------------------------

    def cache_use(self, body: bytes) -> CacheUse:
        """Whether a /predict body that may be a single row asks the caches (the single-row
        gate decides), and its response-cache key; decided once a request, as it arrives,
        and handed to :meth:`repeat` and :meth:`predict_row`."""
        if not self.single_gate.asks():
            return _BYPASS
        return CacheUse(asks=True, digest=self.responses.key(body))

    def repeat(self, use: CacheUse) -> Scored | None:
        """The answer to an exact repeat of a single-row body whose score is still cached."""
        if use.digest is None:
            return None
        started = time.perf_counter()
        scorer = self.registry.current
        key = self.responses.lookup(use.digest, scorer.version)
        score = None if key is None else self.cache.get(scorer.version, key[1])
        if score is None:
            return None
        self.single_gate.note(1, 1)
        return self._counted_row(scorer.version, score, True, time.perf_counter() - started)

    async def in_step(self) -> None:
        """Hold a cache hit until the misses of its turn are scored, so that they are
        answered together (:meth:`MissCoalescer.in_step`); at once without coalescing."""
        if self.coalescer is not None:
            await self.coalescer.in_step(self.registry.current)

    def parse(self, body: bytes) -> PredictRequest | DecodedBatch:
        """Decode and check a /predict body (raises :class:`BodyError`).

        While batch rows are not looked up by their text (:meth:`_asks_texts`), a body of
        up to ``WHOLE_BODY_MAX_BYTES`` is decoded in one go for the current model: a batch
        comes back as a :class:`DecodedBatch`, for :meth:`predict_decoded`. Otherwise, or
        when that decoding refuses the body, a batch's rows stay JSON text
        (:func:`parse_predict`), for :meth:`predict_batch`, and so does anything wrong with
        the body: the generic parse, or the encoder after it, names it.
        """
        started = time.perf_counter()
        request: PredictRequest | DecodedBatch | None = None
        if len(body) <= WHOLE_BODY_MAX_BYTES and not self._asks_texts():
            scorer = self.registry.current
            decoded = scorer.rows.body(body)
            if decoded is not None:
                request = (
                    PredictRequest(features=decoded.features)
                    if decoded.rows is None
                    else DecodedBatch(scorer, decoded.rows)
                )
        if request is None:
            request = parse_predict(body)
        self.metrics.tally.stage(_PARSE, time.perf_counter() - started)
        return request

    async def predict_row(self, features: Mapping[str, object], use: CacheUse) -> Scored:
        """One row, cache first when ``use`` asks (:meth:`cache_use`). With coalescing on, a
        miss is scored in one call with the other misses of this turn of the event loop,
        and a hit is answered with them.
        The body's response-cache key is offered the row's key once it is scored.

        A single row's cache work is scalar (a key, a ``get``, a store): it is most of what
        the cache costs a miss, which the cache-disabled service does not pay. Raises
        ``EncodeError`` (bad input) or ``ScoringError``.
        """
        scorer = self.registry.current  # one reference for the whole request
        row = self._encode(scorer, lambda: scorer.encoder.encode_rows([features]))
        started = time.perf_counter()
        key, score = self.cache.lookup_row(scorer.version, row) if use.asks else (None, None)
        cache_s = time.perf_counter() - started
        cached = score is not None
        if score is None:
            if self.coalescer is None:
                score = float(self._run(scorer, row)[0])
            else:
                score = await self.coalescer.score(scorer, row)
        elif self.coalescer is not None:
            await self.coalescer.in_step(scorer)
        if key is not None:
            started = time.perf_counter()
            if not cached:
                self.cache.store_row(scorer.version, key, score)
            if use.digest is not None:  # a hit too: a body is admitted on its second sight
                self.responses.offer(use.digest, (scorer.version, key))
            cache_s += time.perf_counter() - started
        if use.asks:
            self.single_gate.note(int(cached), 1)
        return self._counted_row(scorer.version, score, cached, cache_s)

    def _counted_row(self, version: str, score: float, cached: bool, cache_s: float) -> Scored:
        """A single-row answer, counted: its time in the caches, its score, a hit or a miss."""
        tally = self.metrics.tally
        tally.stage(_CACHE, cache_s)
        scores = np.array([score], dtype=np.float32)
        tally.scores(scores)
        tally.lookups(int(cached), int(not cached))
        return Scored(scores, [cached], version)

    async def predict_batch(self, rows: Sequence[bytes], body: bytes) -> Scored:
        """Score a batch of rows given as their JSON text (``body``'s ``instances``, as
        :func:`parse_predict` keeps them), without holding up the event loop.

        While more than ``REPEATS_MIN_SHARE`` of lately scored batch rows were cache hits,
        each row's text is looked up in the response cache first (:meth:`_known_texts`): a
        row sent before as the same text is answered without being decoded or encoded, and
        the others are decoded, encoded and scored with the rows the other batches of this
        turn of the event loop did not find (:class:`BatchMissPool`; alone with coalescing
        off). Otherwise the rows are decoded in one call and scored as :meth:`_gated_batch`
        says. Raises :class:`BodyError` (a row that is not an object), ``EncodeError`` or
        ``ScoringError``.
        """
        scorer = self.registry.current  # one reference for the whole request
        if not self._looks_for_repeats(len(rows)):
            return await self._gated_batch(
                scorer, len(rows), lambda: self._encode_text(scorer, rows, body)
            )
        texts, scores, hits, cache_s = self._known_texts(scorer, rows)
        if hits.all():
            self.metrics.tally.stage(_CACHE, cache_s)
        else:
            rest = np.flatnonzero(~hits)
            places = rest.tolist()
            todo = [rows[i] for i in places]
            if self.batch_misses is not None:
                found, found_hits = await self.batch_misses.score(
                    scorer, todo, body, places, cache_s
                )
            else:
                indices = self._encode_text(scorer, todo, body, places)
                found, found_hits = await self._pooled(scorer, indices, cache_s)
            scores[rest], hits[rest] = found, found_hits
            self.responses.offer_rows([texts[i] for i in places], scorer.version, found.tolist())
        self.metrics.tally.scores(scores)  # once a request: a histogram costs ~7 µs
        cached = hits.tolist()
        self.batch_gate.note(sum(cached), len(cached))
        return Scored(scores, cached, scorer.version)

    async def predict_decoded(self, batch: DecodedBatch, body: bytes) -> Scored:
        """Score a batch :meth:`parse` decoded whole (``body``: the request's), as
        :meth:`predict_batch` scores rows it does not look up by their text. Raises
        ``EncodeError`` (naming the first bad row) or ``ScoringError``."""
        scorer, rows = batch.scorer, batch.rows

        def encode() -> NDArray[np.int64]:
            try:
                return self._encode(
                    scorer,
                    lambda: scorer.encoder.encode_values(*scorer.rows.values_of(rows), len(rows)),
                )
            except EncodeError as exc:  # found again from the rows' text, as predict_batch does
                texts = parse_predict(body).instances or []
                raise _first_bad_row(scorer, texts, body, None, exc) from None

        return await self._gated_batch(scorer, len(rows), encode)

    async def predict_columns(self, arrays: Mapping[str, NDArray[Any]], num_rows: int) -> Scored:
        """Score one array per field (the inference protocol's tensors), encoded whole, as
        :meth:`predict_batch` scores rows. Raises ``EncodeError`` or ``ScoringError``."""
        scorer = self.registry.current
        return await self._gated_batch(
            scorer,
            num_rows,
            lambda: self._encode(scorer, lambda: scorer.encoder.encode_columns(arrays, num_rows)),
        )

    async def _gated_batch(
        self, scorer: Scorer, rows: int, encode: Callable[[], NDArray[np.int64]]
    ) -> Scored:
        """A batch scored as :meth:`_score_batch` says, asking the score cache when the
        batch gate says so, and its hits folded into the gate's share when it asked."""
        asks = self.batch_gate.asks()
        scored = await self._score_batch(scorer, rows, encode, asks)
        self.metrics.tally.scores(scored.scores)
        if asks:
            self.batch_gate.note(sum(scored.cached), rows)
        return scored

    async def _score_batch(
        self, scorer: Scorer, rows: int, encode: Callable[[], NDArray[np.int64]], asks: bool
    ) -> Scored:
        """Encode and look up on the event loop (when ``asks``), then score only the
        misses: inline when the model scores them within ``inline_max_s``, else in a thread.

        A batch of up to ``inline_max_rows`` rows encodes in about a millisecond (100 rows
        of 39 fields: 0.63 ms), and at a high hit ratio its misses cost less than a thread
        hop. Handing the whole batch to a thread instead made its Python work (encode,
        lookup) contend for the GIL with the event loop's: on 90%-hit batches of the
        39-field NFFM, 208 req/s against 295 with only the misses sent (16 connections,
        one run each). A larger batch goes to a thread whole: one of asyncio's default
        pool, not a scoring thread, so that a long batch (10,000 rows: ~70 ms) holds up no
        other request's misses queued for the scoring threads.
        """
        if rows > self.inline_max_rows:
            return await asyncio.to_thread(lambda: self._score(scorer, encode(), asks))
        return _scored(await self._filled(scorer, encode(), asks=asks))

    async def _pooled(self, scorer: Scorer, indices: NDArray[np.int64], cache_s: float) -> Answer:
        """Encoded batch rows' scores and which of them the score cache held (``cache_s``:
        the time their requests spent in the caches before)."""
        lookup = await self._filled(scorer, indices, cache_s)
        return lookup.scores, lookup.hits

    async def _filled(
        self, scorer: Scorer, indices: NDArray[np.int64], cache_s: float = 0.0, *, asks: bool = True
    ) -> Lookup:
        """Encoded rows looked up (when ``asks``) and their misses scored, inline or in a
        thread as :meth:`_score_batch` says; the fresh scores stored, and all counted."""
        lookup, lookup_s = self._lookup(scorer, indices, asks)
        misses, todo = _misses(lookup, indices)
        if len(misses) > scorer.rows_within(self.inline_max_s):
            lookup.scores[misses] = await self._run_in_thread(scorer, todo)
        elif len(misses):
            lookup.scores[misses] = self._run(scorer, todo)
        self._settle(lookup, cache_s + lookup_s)
        return lookup

    def _looks_for_repeats(self, rows: int) -> bool:
        """Whether a batch's row texts are worth looking up before decoding them."""
        return rows <= self.inline_max_rows and self._asks_texts()

    def _asks_texts(self) -> bool:
        """Whether batch rows are looked up by their text now (a batch of up to
        ``inline_max_rows`` rows): while more than ``REPEATS_MIN_SHARE`` of lately scored
        batch rows were cache hits."""
        return (
            self.batch_gate.share > REPEATS_MIN_SHARE
            and self.cache.enabled
            and self.responses.enabled
        )

    def _known_texts(
        self, scorer: Scorer, rows: Sequence[bytes]
    ) -> tuple[list[int], NDArray[np.float32], NDArray[np.bool_], float]:
        """Each row's text key, the score of every row whose text the response cache knows
        (NaN elsewhere), which rows those are, and the seconds it took."""
        started = time.perf_counter()
        texts = row_text_keys(rows)
        scores = self.responses.lookup_rows(texts, scorer.version)
        hits = ~np.isnan(scores)
        answered = int(np.count_nonzero(hits))
        if answered:
            self.metrics.tally.lookups(answered, 0)
        return texts, scores, hits, time.perf_counter() - started

    def _encode_text(
        self,
        scorer: Scorer,
        rows: Sequence[bytes],
        body: bytes,
        places: Sequence[int] | None = None,
    ) -> NDArray[np.int64]:
        """Decode rows' JSON text and encode them, timed as encoding: the body around them
        was parsed already, and they are decoded only now because a known row never is.

        Rows are decoded straight into the model's fields (app/scoring/rows.py); a batch
        that is not the model's row shape is decoded generically, so that the encoder or
        the decoder names what is wrong and where. An ``EncodeError`` names the first bad
        row by its place in the request (``places``: each row's, when ``rows`` are some of
        the request's), found again row by row: the batch paths encode values a field or a
        batch at a time and do not know it.
        """

        try:
            indices = self._encode_fields(scorer, rows)
            if indices is None:
                return self._encode(
                    scorer, lambda: scorer.encoder.encode_rows(decode_rows(rows, body))
                )
            return indices
        except EncodeError as exc:
            raise _first_bad_row(scorer, rows, body, places, exc) from None

    def _encode_fields(self, scorer: Scorer, rows: Sequence[bytes]) -> NDArray[np.int64] | None:
        """Rows' JSON text decoded straight into the model's fields and encoded (timed and
        counted as :meth:`_encode`); ``None`` when they are not the model's row shape.
        Raises ``EncodeError`` without saying which row."""
        started = time.perf_counter()
        values = scorer.rows.values(rows)
        if values is None:
            return None
        indices = scorer.encoder.encode_values(*values, len(rows))
        self._encoded(scorer, indices, started)
        return indices

    def _encode(self, scorer: Scorer, encode: Callable[[], NDArray[np.int64]]) -> NDArray[np.int64]:
        """Encode (timed), and count the missing and unseen values of what was encoded."""
        started = time.perf_counter()
        indices = encode()
        self._encoded(scorer, indices, started)
        return indices

    def _encoded(self, scorer: Scorer, indices: NDArray[np.int64], started: float) -> None:
        tally = self.metrics.tally
        tally.stage(_ENCODE, time.perf_counter() - started)
        tally.rows(scorer.version, scorer.encoder.names, indices)

    def _lookup(
        self, scorer: Scorer, indices: NDArray[np.int64], asks: bool = True
    ) -> tuple[Lookup, float]:
        """The cache's answer for ``indices`` (every row a miss unless ``asks``) and the
        seconds it took. While the batch gate lets only probes ask, a batch's rows stand for
        the batches it passed by (``CacheGate.stands_for``) in the doorkeeper's count."""
        if not asks:
            return Lookup.missed(len(indices), scorer.version), 0.0
        started = time.perf_counter()
        lookup = self.cache.lookup(scorer.version, indices, self.batch_gate.stands_for)
        return lookup, time.perf_counter() - started

    def _score(self, scorer: Scorer, indices: NDArray[np.int64], asks: bool = True) -> Scored:
        lookup, cache_s = self._lookup(scorer, indices, asks)
        misses, todo = _misses(lookup, indices)
        if len(misses):
            lookup.scores[misses] = self._run(scorer, todo)
        self._settle(lookup, cache_s)
        return _scored(lookup)

    def _settle(self, lookup: Lookup, cache_s: float) -> None:
        """Store the fresh scores and count the lookups (the scores served are counted once
        a request, by the caller that answers it)."""
        started = time.perf_counter()
        self.cache.store(lookup)
        tally = self.metrics.tally
        tally.stage(_CACHE, cache_s + time.perf_counter() - started)
        hits = int(np.count_nonzero(lookup.hits))
        tally.lookups(hits, len(lookup.hits) - hits)

    def _run(self, scorer: Scorer, indices: NDArray[np.int64]) -> NDArray[np.float32]:
        """One onnxruntime call on this thread, counted (with coalescing, one observation
        per call)."""
        with self._counting_failures():
            scores, seconds = timed_score(scorer, indices)
        self._count_call(len(indices), seconds)
        return scores

    async def _run_in_thread(
        self, scorer: Scorer, indices: NDArray[np.int64]
    ) -> NDArray[np.float32]:
        """One onnxruntime call in a scoring thread (app/scoring/threads.py), counted back
        on the event loop.

        The thread touches nothing shared: while it held the metrics' lock to count its
        call, the event loop, forced to hand it the GIL, could find the lock taken and wait
        for both. 100-row batches of the default model: 1,245 against 1,144 req/s with the
        counting moved out of the thread (wrk, 16 connections, three 5 s rounds).
        """
        with self._counting_failures():
            scores, seconds = await self.threads.run(lambda: timed_score(scorer, indices))
        self._count_call(len(indices), seconds)
        return scores

    @contextmanager
    def _counting_failures(self) -> Iterator[None]:
        try:
            yield
        except ScoringError:
            self.metrics.scoring_errors.inc()
            raise

    def _count_call(self, rows: int, seconds: float) -> None:
        tally = self.metrics.tally
        tally.stage(_ORT, seconds)
        tally.scored(rows)

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
        """Point the score cache and the metrics at the version now served."""
        self.cache.reset(scorer.version, max(scorer.manifest.features.field_dims) - 1)
        self.metrics.set_model(scorer.manifest.model_type, scorer.version)

    def _swapped(self, swap: Swap | None) -> Swap | None:
        if swap is None:
            return None
        # Entries of the old version can never be served again (the score cache serves one
        # version, the response cache checks it): drop them rather than let them crowd the
        # caches until they expire. _announce resets the score cache.
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


def timed_score(scorer: Scorer, indices: NDArray[np.int64]) -> tuple[NDArray[np.float32], float]:
    """The scores of encoded rows and the seconds onnxruntime took (raises ``ScoringError``).
    Touches no state of the service's, so a pool thread may run it."""
    started = time.perf_counter()
    scores = scorer.score_indices(indices)
    return scores, time.perf_counter() - started


def _scored(lookup: Lookup) -> Scored:
    return Scored(lookup.scores, lookup.hits.tolist(), lookup.version)


def _misses(
    lookup: Lookup, indices: NDArray[np.int64]
) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """The rows the cache missed and their encoded rows, all scored in one onnxruntime call
    (``indices`` itself, not a copy, when every row missed)."""
    misses = np.flatnonzero(~lookup.hits)
    return misses, indices if len(misses) == len(indices) else indices[misses]


def _first_bad_row(
    scorer: Scorer,
    rows: Sequence[bytes],
    body: bytes,
    places: Sequence[int] | None,
    error: EncodeError,
) -> EncodeError:
    """``error`` placed at the first of ``rows`` that does not encode alone."""
    for i, row in enumerate(rows):
        try:
            scorer.encoder.encode_rows(decode_rows([row], body))
        except EncodeError as alone:
            return alone.in_row(i if places is None else places[i])
    return error


def _kind(index: int) -> EncodedAs:
    if index == MISSING_INDEX:
        return "missing"
    return "unseen" if index == UNSEEN_INDEX else "value"
