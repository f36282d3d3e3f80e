"""Synthetic CTR logs with planted field-aware interactions and known true probabilities.

The truth is built so that each rung of the ladder has something to learn that the rung
below cannot express:

* first-order value effects (LR can learn these);
* pairwise interactions where a value has a *different* latent vector towards each other
  field, ``<u[i->j][x_i], u[j->i][x_j]>``, on many field pairs -- one shared vector per value
  (FM) needs ``pairs x dim`` dimensions to express them, one vector per field pair (FFM)
  needs ``dim``;
* a non-linearity on top of those interactions (a ReLU of two pairwise terms, and a
  non-monotone numeric effect), which needs an MLP over interaction terms (NFFM).

Each row carries ``p_true``, so the oracle AUC on any split is known.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CATEGORICAL_CARDINALITIES = (1000, 500, 200, 100, 50, 20, 10, 5)
NUMERIC_FIELDS = ("n0", "n1")
ZIPF_EXPONENT = 1.2
INTERACTION_DIM = 2
PLANTED_PAIRS = 10
INTERACTION_SCALE = 1.0
NONLINEAR_WEIGHT = 2.5
MISSING_RATE = 0.03
# Effects of a value shrink with its popularity rank, 1 / sqrt(1 + rank / TAIL_DECAY_RANK):
# as in real logs, the long tail of rare ids behaves much like the field's typical value.
TAIL_DECAY_RANK: float | None = 20.0
# Fields the --aggregate mode groups by: the five lowest-cardinality ones, so that each
# combination collects enough impressions for its rate to mean something.
AGGREGATE_FIELDS = ("c3", "c4", "c5", "c6", "c7")
# Share of a shifted field's values (generate's ``shift``) that are new that day.
SHIFT_NEW_SHARE = 0.3


@dataclass(frozen=True)
class _Truth:
    bias: float
    first_order: list[np.ndarray]
    pairs: list[tuple[int, int]]
    towards: dict[tuple[int, int], np.ndarray]  # (i, j) -> (card_i, dim): u[i->j]


def _categorical_names() -> list[str]:
    return [f"c{i}" for i in range(len(CATEGORICAL_CARDINALITIES))]


def _tail_decay(cardinality: int) -> np.ndarray:
    if TAIL_DECAY_RANK is None:
        return np.ones((cardinality, 1))
    return 1.0 / np.sqrt(1.0 + np.arange(cardinality)[:, None] / TAIL_DECAY_RANK)


def _make_truth(rng: np.random.Generator) -> _Truth:
    num_fields = len(CATEGORICAL_CARDINALITIES)
    all_pairs = [(i, j) for i in range(num_fields) for j in range(i + 1, num_fields)]
    chosen = rng.choice(len(all_pairs), size=PLANTED_PAIRS, replace=False)
    pairs = [all_pairs[k] for k in sorted(chosen)]
    towards: dict[tuple[int, int], np.ndarray] = {}
    scale = INTERACTION_SCALE / np.sqrt(INTERACTION_DIM)
    for i, j in pairs:
        for a, b in ((i, j), (j, i)):
            card = CATEGORICAL_CARDINALITIES[a]
            towards[(a, b)] = rng.normal(0.0, scale, (card, INTERACTION_DIM)) * _tail_decay(card)
    first_order = [
        rng.normal(0.0, 0.4, card) * _tail_decay(card)[:, 0] for card in CATEGORICAL_CARDINALITIES
    ]
    return _Truth(bias=-1.6, first_order=first_order, pairs=pairs, towards=towards)


def _with_zero_row(table: np.ndarray) -> np.ndarray:
    return np.vstack([table, np.zeros((1, table.shape[1]))])


def _zipf_ranks(rng: np.random.Generator, cardinality: int, rows: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, cardinality + 1) ** ZIPF_EXPONENT
    return rng.choice(cardinality, size=rows, p=weights / weights.sum())


def generate(
    rows: int, seed: int = 0, chunk: int = 0, day: int = 0, shift: Sequence[str] = ()
) -> pd.DataFrame:
    """Draw ``rows`` impressions: feature columns, ``label`` and the true ``p_true``.

    The truth (value effects, planted pairs) depends on ``seed`` alone, so two files drawn
    with the same seed and different row counts share one ground truth:
    :func:`true_probability` recomputes ``p_true`` from any frame's features and the seed.
    ``chunk`` numbers the pieces of a large file (each its own random stream); chunk 0 is
    the whole of a small one. ``day`` draws another day of the same world; the categorical
    fields named in ``shift`` drift that day: their popularity ranks rotate by half the
    field (the head's values become rare, mid-tail ones common) and :data:`SHIFT_NEW_SHARE`
    of their values are ones never drawn before (no effect of their own, like missing).
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    names = _categorical_names()
    unknown = sorted(set(shift) - set(names))
    if unknown:
        raise ValueError(f"--shift names no categorical field: {unknown} (fields: {names})")
    streams = [seed + 1] if chunk == 0 and day == 0 else [seed + 1, chunk]
    rng = np.random.default_rng(streams + ([day] if day else []))
    # A missing value is drawn first and carries no effect (rank `card` = an all-zero row),
    # so p_true is a function of exactly what the file shows: nothing hidden is left for
    # the oracle to know.
    ranks = []
    for name, card in zip(names, CATEGORICAL_CARDINALITIES, strict=True):
        field_ranks = _zipf_ranks(rng, card, rows)
        if name in shift:
            field_ranks = (field_ranks + card // 2) % card
            new = rng.uniform(size=rows) < SHIFT_NEW_SHARE
            field_ranks[new] = card + 1 + rng.integers(0, card, int(new.sum()))
        field_ranks[rng.uniform(size=rows) < MISSING_RATE] = card
        ranks.append(field_ranks)
    n0 = np.round(rng.lognormal(mean=1.0, sigma=1.2, size=rows), 3)
    n0[rng.uniform(size=rows) < MISSING_RATE] = np.nan
    n1 = np.round(rng.uniform(0.0, 1.0, size=rows), 4)
    p_true = _probability(_make_truth(np.random.default_rng(seed)), ranks, n0, n1)
    label = (rng.uniform(size=rows) < p_true).astype(np.int64)

    frame = pd.DataFrame({"label": label})
    for name, card, field_ranks in zip(
        _categorical_names(), CATEGORICAL_CARDINALITIES, ranks, strict=True
    ):
        tokens = np.char.add(f"{name}_", field_ranks.astype(str)).astype(object)
        tokens[field_ranks == card] = None
        frame[name] = tokens
    frame["n0"] = n0
    frame["n1"] = n1
    frame["p_true"] = np.round(p_true, 6)
    return frame


def true_probability(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """The click probability the world of ``seed`` gives each row of ``frame``."""
    ranks = []
    for name, card in zip(_categorical_names(), CATEGORICAL_CARDINALITIES, strict=True):
        tokens = frame[name]
        missing = tokens.isna().to_numpy()
        values = tokens.where(~missing, f"{name}_{card}").astype(str).str.removeprefix(f"{name}_")
        ranks.append(values.astype(np.int64).to_numpy())
    n0 = frame["n0"].to_numpy(dtype=np.float64)
    n1 = frame["n1"].to_numpy(dtype=np.float64)
    return _probability(_make_truth(np.random.default_rng(seed)), ranks, n0, n1)


def _probability(
    truth: _Truth, ranks: list[np.ndarray], n0: np.ndarray, n1: np.ndarray
) -> np.ndarray:
    # A value never drawn in the world (a shifted day's new ones) has no effect, as missing.
    ranks = [np.minimum(r, len(e)) for r, e in zip(ranks, truth.first_order, strict=True)]
    logit = np.full(len(n0), truth.bias)
    for field, effects in enumerate(truth.first_order):
        logit += np.append(effects, 0.0)[ranks[field]]
    z = []
    for i, j in truth.pairs:
        left = _with_zero_row(truth.towards[(i, j)])[ranks[i]]
        right = _with_zero_row(truth.towards[(j, i)])[ranks[j]]
        z.append((left * right).sum(axis=1))
        logit += z[-1]
    # Non-linear in the pairwise terms: ReLUs of sums of two interactions each.
    logit += NONLINEAR_WEIGHT * (np.maximum(z[0] + z[1], 0.0) + np.maximum(-z[2] - z[3], 0.0))
    logit += np.nan_to_num(0.6 * np.sin(np.log1p(n0) * 2.0))
    # n1 matters only through c6 (even values up, odd values down): numeric x categorical.
    c6 = ranks[6]
    direction = np.where(c6 == CATEGORICAL_CARDINALITIES[6], 0.0, np.where(c6 % 2 == 0, 1.0, -1.0))
    logit += 1.2 * (n1 - 0.5) * direction
    return 1.0 / (1.0 + np.exp(-logit))


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Collapse impressions into feature combinations for the regression task.

    Returns one row per combination of :data:`AGGREGATE_FIELDS` with ``impressions``,
    ``clicks``, the observed ``rate``, ``weight`` (the combination's share of impressions:
    how likely it is to be seen, InMobi's weight) and the mean true probability ``p_true``.
    """
    keys = list(AGGREGATE_FIELDS)
    grouped = frame.fillna(dict.fromkeys(keys, "")).groupby(keys, sort=True)
    out = grouped.agg(
        impressions=("label", "size"), clicks=("label", "sum"), p_true=("p_true", "mean")
    ).reset_index()
    out["rate"] = out["clicks"] / out["impressions"]
    out["weight"] = out["impressions"] / out["impressions"].sum()
    return out


Layout = Literal["default", "criteo"]
# Rows drawn and written at a time: the generator's memory is bounded by this, not the file.
CHUNK_ROWS = 250_000


def write(
    path: Path,
    rows: int,
    seed: int,
    layout: Layout = "default",
    aggregated: bool = False,
    day: int = 0,
    shift: Sequence[str] = (),
    bias: float | None = None,
) -> int:
    """Write ``rows`` rows to ``path`` (.csv/.tsv, optionally .gz, or .parquet) chunk by
    chunk, in memory bounded by :data:`CHUNK_ROWS`; returns the rows written (the
    combinations, when aggregated)."""
    if bias is not None and layout != "criteo":
        raise ValueError("--bias sets the Criteo-shaped world's intercept (--layout criteo)")
    if (day or shift) and aggregated:
        raise ValueError("--day and --shift draw impressions, not --aggregate combinations")
    if aggregated:
        if layout != "default":
            raise ValueError("--aggregate groups the default layout's fields only")
        # Combinations need every impression at once: aggregated files are small.
        frame = aggregate(generate(rows, seed))
        return _write_tables(path, iter([pa.Table.from_pandas(frame, preserve_index=False)]))
    if layout == "criteo":
        from training.synth_criteo import World

        world = World(seed) if bias is None else World(seed, bias)

    def draw(count: int, chunk: int) -> pa.Table:
        if layout == "criteo":
            return world.draw(count, chunk, day, shift)
        frame = generate(count, seed, chunk, day, shift)
        return pa.Table.from_pandas(frame, preserve_index=False)

    starts = range(0, rows, CHUNK_ROWS)
    return _write_tables(
        path, (draw(min(CHUNK_ROWS, rows - s), chunk) for chunk, s in enumerate(starts))
    )


def _write_tables(path: Path, tables: Iterator[pa.Table]) -> int:
    suffixes = [s.lower() for s in path.suffixes]
    first = next(tables)
    written = 0
    if suffixes and suffixes[-1] in {".parquet", ".pq"}:
        with pq.ParquetWriter(path, first.schema) as writer:
            for table in _chain(first, tables):
                writer.write_table(table.cast(first.schema))
                written += table.num_rows
        return written
    plain = suffixes[:-1] if suffixes and suffixes[-1] == ".gz" else suffixes
    delimiter = "\t" if plain and plain[-1] == ".tsv" else ","
    options = pacsv.WriteOptions(delimiter=delimiter, quoting_style="none", quoting_header="none")
    with (
        pa.output_stream(str(path), compression="detect") as stream,
        pacsv.CSVWriter(stream, first.schema, write_options=options) as writer,
    ):
        for table in _chain(first, tables):
            writer.write_table(table.cast(first.schema))
            written += table.num_rows
    return written


def _chain(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest
