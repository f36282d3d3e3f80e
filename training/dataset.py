"""Turn a data source into what training reads: the spec and encoded shards, in two streamed
passes, cached on disk.

Pass 1 reads record batches, splits each row (:mod:`training.split`) and feeds the training
rows to the spec builder (bounded memory: :mod:`training.fit_spec`). Pass 2 reads again and
encodes every batch with the shared :class:`FeatureEncoder` -- each distinct value of a batch
once, through the service's own per-value code -- appending to one file per split and column.
Under negative down-sampling pass 2 reads only the rows it keeps, which pass 1 wrote aside
(:mod:`training.kept_rows`).

The result lives under ``<cache root>/<key>/``, the key hashing the data's fingerprint and
modification times and every setting that changes the spec or the split. ``train``, ``tune``,
``ladder`` and ``compare`` with the same data and settings reuse it, across processes; a
changed file or setting gets a new key, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.features.encoder import FeatureEncoder
from app.features.spec import MISSING_INDEX, FeatureSpec
from training.data import BadRowLog, BadRows, Batch, DataError, DataSource
from training.fit_spec import SpecBuilder
from training.kept_rows import KeptRows
from training.shards import ColumnWriter, Split, index_dtype
from training.split import DROPPED, SPLIT_NAMES, TEST, TRAIN, VAL, SplitRule
from training.warm_start import WarmStart, merge_spec

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 3: negative down-sampling samples (and weights) validation and test
CACHE_ENV = "CTRSERVE_CACHE_DIR"
# The TrainConfig fields that decide the split and the spec (and so the shards).
DATA_SETTINGS = (
    "seed",
    "val_fraction",
    "test_fraction",
    "time_column",
    "val_from",
    "test_from",
    "min_count",
    "binning",
    "num_bins",
    "max_vocab",
    "count_decay",
    "exact_values",
    "negative_sampling",
)
_LOG_EVERY_ROWS = 1_000_000


def default_cache_root() -> Path:
    """``$CTRSERVE_CACHE_DIR``, else ``~/.cache/ctrserve/shards``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "ctrserve" / "shards"


@dataclass(frozen=True)
class Prepared:
    """A source ready to train on: its spec and its encoded splits."""

    spec: FeatureSpec
    train: Split
    val: Split
    test: Split
    source: DataSource
    directory: Path
    rows: int  # rows kept in all splits
    skipped: int  # malformed rows left out (listed in skipped_rows.tsv)
    fingerprint: str
    sketched: tuple[str, ...]  # fields whose vocabulary came from the heavy-hitter sketch
    seconds: dict[str, float]  # the two passes (0 when read from the cache)

    @property
    def skipped_file(self) -> Path:
        return self.directory / "skipped_rows.tsv"


def split_rule(settings: Any) -> SplitRule:
    return SplitRule(
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
        seed=settings.seed,
        time_column=settings.time_column,
        val_from=settings.val_from,
        test_from=settings.test_from,
        negative_sampling=settings.negative_sampling,
    )


def cache_key(
    source: DataSource,
    fingerprint: str,
    settings: Any,
    bad_rows: BadRows,
    base: WarmStart | None = None,
) -> str:
    described = {
        "warm_start": None if base is None else base.version,
        "format": CACHE_FORMAT,
        "files": [str(p.resolve()) for p in source.files],
        "fingerprint": fingerprint,
        "modified": source.modified(),
        "layout": source.fmt,
        "columns": [source.label, source.weight, source.categorical, source.numeric],
        "task": source.task,
        "bad_rows": bad_rows,
        **{name: getattr(settings, name) for name in DATA_SETTINGS},
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def encode_batch(encoder: FeatureEncoder, batch: Batch) -> np.ndarray:
    """``(rows, fields)`` int64 indices of a checked batch, vectorised: a categorical column
    is dictionary-encoded by Arrow and each distinct value goes through the service's
    per-value code once; numeric columns are binned whole. A field the data lacks is
    missing in every row, as an absent key is in a request."""
    out = np.full((len(batch), len(encoder.names)), MISSING_INDEX, dtype=np.int64)
    for position, name in enumerate(encoder.names):
        column = batch.categorical.get(name)
        if column is None:
            if name in batch.numeric:
                out[:, position] = encoder.encode_field(position, batch.numeric[name])
            continue
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        coded = pc.dictionary_encode(column)
        codes = coded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        out[:, position] = encoder.encode_coded(position, coded.dictionary.to_pylist(), codes)
    return out


def prepare(
    source: DataSource,
    settings: Any,
    cache_root: Path | None = None,
    bad_rows: BadRows = "error",
    base: WarmStart | None = None,
) -> Prepared:
    """The spec and shards for ``source`` under ``settings`` (a TrainConfig), from the
    cache when they are there, else made in two passes and cached; with ``base``, the spec
    grows from that version's (training/warm_start.py)."""
    root = cache_root or default_cache_root()
    fingerprint = source.fingerprint()
    directory = root / cache_key(source, fingerprint, settings, bad_rows, base)
    if (directory / "meta.json").exists():
        logger.info("encoded shards from the cache: %s", directory)
        return _load(source, directory)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{directory.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _build(source, fingerprint, settings, bad_rows, staging, base)
        try:
            staging.rename(directory)
        except OSError:  # another process finished the same shards first: use theirs
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        pa.default_memory_pool().release_unused()  # the counts' memory, before training
    return _load(source, directory)


def _build(
    source: DataSource,
    fingerprint: str,
    settings: Any,
    bad_rows: BadRows,
    out: Path,
    base: WarmStart | None = None,
) -> None:
    rule = split_rule(settings)
    builder = SpecBuilder(
        source.categorical,
        source.numeric,
        settings.binning,
        settings.num_bins,
        settings.exact_values,
    )
    log = BadRowLog(bad_rows)
    counts = np.zeros(3, dtype=np.int64)
    sampled = settings.negative_sampling < 1.0
    stash = KeptRows(out / "kept-rows.arrow") if sampled else None
    started = time.perf_counter()
    for batch, splits in _progress(source, rule, log, "pass 1 (spec)"):
        counts += np.bincount(splits, minlength=6)[:3]
        builder.update(batch, (splits == TRAIN) | (splits == DROPPED))  # vocabularies: all
        if stash is not None:
            kept = np.flatnonzero(splits <= TEST)
            stash.add(batch.take(kept), splits[kept])
    if counts.sum() == 0 and log.rows:
        raise DataError(f"{source.name}: every row is malformed ({len(log.rows)} skipped)")
    if counts[TRAIN] == 0:
        raise DataError(f"{source.name}: no training rows (check the split settings)")
    if counts[VAL] == 0:
        raise DataError(f"{source.name}: no validation rows (check the split settings)")
    if base is None:
        spec = builder.finish(settings.min_count, settings.max_vocab)
    else:
        spec = merge_spec(
            base, builder, settings.min_count, settings.max_vocab, settings.count_decay
        )
    fitted = time.perf_counter()
    sketched = builder.sketched_fields()
    if sketched:
        logger.info("vocabulary from the heavy-hitter sketch for: %s", ", ".join(sketched))

    encoder = FeatureEncoder(spec)
    dtype = index_dtype(max(spec.field_dims) - 1)
    writers: list[dict[str, ColumnWriter]] = []
    for split, name in enumerate(SPLIT_NAMES):
        rows = int(counts[split])
        kinds = {
            "indices": (dtype, (rows, len(spec.fields))),
            "labels": (np.dtype(np.float32), (rows,)),
        }
        if source.weight is not None or (sampled and split != TRAIN):
            kinds["weights"] = (np.dtype(np.float32), (rows,))
        if source.has_oracle and split != TRAIN:
            kinds["oracle"] = (np.dtype(np.float64), (rows,))
        writers.append(
            {
                kind: ColumnWriter(out / f"{name}.{kind}.npy", kind_dtype, shape)
                for kind, (kind_dtype, shape) in kinds.items()
            }
        )
    if stash is None:
        to_encode = _progress(source, rule, BadRowLog("skip"), "pass 2 (encode)")
    else:
        logger.info("pass 2 (encode): the %s rows sampling kept, from pass 1", f"{stash.rows:,}")
        to_encode = stash.batches()
    for batch, splits in to_encode:
        indices = encode_batch(encoder, batch)
        for split in range(3):
            chosen = splits == split
            if not chosen.any():
                continue
            split_writers = writers[split]
            split_writers["indices"].append(indices[chosen])
            split_writers["labels"].append(batch.labels[chosen])
            if "weights" in split_writers:
                split_writers["weights"].append(
                    _row_weights(
                        batch, chosen, 1.0 if split == TRAIN else settings.negative_sampling
                    )
                )
            if "oracle" in split_writers and batch.oracle is not None:
                split_writers["oracle"].append(batch.oracle[chosen])
    for split_writers in writers:
        for writer in split_writers.values():
            writer.close()
    if stash is not None:
        stash.remove()
    encoded = time.perf_counter()

    (out / "spec.json").write_text(spec.model_dump_json(indent=1))
    order = {path.name: i for i, path in enumerate(source.files)}
    log.rows.sort(key=lambda s: (order.get(s.file, 0), s.line))
    with (out / "skipped_rows.tsv").open("w") as handle:
        handle.write("file\tline\treason\n")
        handle.writelines(f"{s.file}\t{s.line}\t{s.reason}\n" for s in log.rows)
    meta = {
        "format": CACHE_FORMAT,
        "data": [p.name for p in source.files],
        "fingerprint": fingerprint,
        "rows": {name: int(counts[i]) for i, name in enumerate(SPLIT_NAMES)},
        "skipped": len(log.rows),
        "sketched": sketched,
        "settings": {name: getattr(settings, name) for name in DATA_SETTINGS},
        "seconds": {"spec": round(fitted - started, 3), "encode": round(encoded - fitted, 3)},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    if log.rows:
        first = "; ".join(f"{s.file} line {s.line}: {s.reason}" for s in log.rows[:3])
        logger.warning("skipped %d malformed rows, first: %s", len(log.rows), first)


def _row_weights(batch: Batch, chosen: np.ndarray, kept_share: float) -> np.ndarray:
    """The weights of the chosen rows: the data's own (1 without a weight column), times
    1 / ``kept_share`` for a negative of a down-sampled split, which stands for the
    negatives left out beside it."""
    weights = (
        np.ones(int(chosen.sum()), np.float32) if batch.weights is None else batch.weights[chosen]
    )
    if kept_share < 1.0:
        weights = np.where(batch.labels[chosen] <= 0, weights / kept_share, weights)
    return weights.astype(np.float32)


def _progress(
    source: DataSource, rule: SplitRule, log: BadRowLog, what: str
) -> Iterator[tuple[Batch, np.ndarray]]:
    started, done, next_log = time.perf_counter(), 0, _LOG_EVERY_ROWS
    for batch in source.batches(log):
        yield batch, rule.assign(batch)
        done += len(batch)
        if done >= next_log:
            rate = done / max(time.perf_counter() - started, 1e-9)
            logger.info("%s: %s rows, %s rows/s", what, f"{done:,}", f"{rate:,.0f}")
            next_log += _LOG_EVERY_ROWS


def _load(source: DataSource, directory: Path) -> Prepared:
    meta = json.loads((directory / "meta.json").read_text())
    spec = FeatureSpec.model_validate_json((directory / "spec.json").read_text())
    train, val, test = (Split.open(directory, name) for name in SPLIT_NAMES)
    return Prepared(
        spec=spec,
        train=train,
        val=val,
        test=test,
        source=source,
        directory=directory,
        rows=sum(meta["rows"].values()),
        skipped=int(meta["skipped"]),
        fingerprint=meta["fingerprint"],
        sketched=tuple(meta["sketched"]),
        seconds={k: float(v) for k, v in meta["seconds"].items()},
    )
