"""A Criteo-shaped synthetic world: 13 integer count fields and 26 categorical fields with
Criteo Kaggle's cardinalities (capped at 10^6), Zipf-distributed values, missing values, and
planted field-aware interactions with a known true probability per row.

It exists so that scale (tens of millions of rows, vocabularies of 10^6) and quality at scale
(AUC against the oracle) can be measured without the real data. Columns: ``label``,
``I1..I13`` (counts, 0 the most common value, as in Criteo), ``C1..C26`` (8-hex-digit
tokens), ``p_true``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data import CRITEO_CATEGORICAL, CRITEO_NUMERIC

# Share of a shifted field's values that are new that day (as training/synth.py's).
SHIFT_NEW_SHARE = 0.3

# Criteo Kaggle's distinct values per categorical field, capped at 10^6.
CARDINALITIES = (
    1460, 583, 1_000_000, 1_000_000, 305, 24, 12517, 633, 3, 93145, 5683, 1_000_000, 3194,
    27, 14992, 1_000_000, 10, 5652, 2173, 4, 1_000_000, 18, 15, 286181, 105, 142572,
)  # fmt: skip
# Share of rows with no value, per categorical field (Criteo leaves C19-C22 and others
# empty for many rows).
MISSING = (
    0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0, 0.0, 0.0, 0.03,
    0.0, 0.0, 0.44, 0.44, 0.03, 0.0, 0.76, 0.0, 0.44, 0.44,
)  # fmt: skip
ZIPF_EXPONENT = 1.1
TAIL_DECAY_RANK = 50.0
INTERACTION_DIM = 2
PLANTED_PAIRS = 12
BIAS = -1.75  # ~25% clicks, as Criteo's own logs; ad logs are often 1-5% (--bias)


def _tail_decay(cardinality: int) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + np.arange(cardinality) / TAIL_DECAY_RANK)


def _tokens(ranks: np.ndarray, field: int) -> pa.Array:
    """The 8-hex-digit token of each rank of a field (rank ``card`` and up: new values)."""
    hashed = np.maximum(ranks, 0).astype(np.uint64) * np.uint64(2654435761) + np.uint64(field)
    hashed = (hashed ^ (hashed >> np.uint64(13))) & np.uint64(0xFFFFFFFF)
    return pa.array(np.char.mod("%08x", hashed.astype(np.int64)))


class World:
    """The truth of one seed; :meth:`draw` samples rows from it, chunk by chunk."""

    def __init__(self, seed: int, bias: float = BIAS) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.bias = bias
        fields = len(CARDINALITIES)
        self.cdfs = []
        self.tokens = []
        self.first_order = []
        for field, card in enumerate(CARDINALITIES):
            weights = np.arange(1, card + 1, dtype=np.float64) ** -ZIPF_EXPONENT
            self.cdfs.append(np.cumsum(weights / weights.sum()))
            self.tokens.append(_tokens(np.arange(card), field))
            self.first_order.append(rng.normal(0.0, 0.35, card) * _tail_decay(card))
        pairs = [(i, j) for i in range(fields) for j in range(i + 1, fields)]
        chosen = rng.choice(len(pairs), size=PLANTED_PAIRS, replace=False)
        self.pairs = [pairs[k] for k in sorted(chosen)]
        scale = 1.0 / np.sqrt(INTERACTION_DIM)
        self.towards: dict[tuple[int, int], np.ndarray] = {}
        for i, j in self.pairs:
            for a, b in ((i, j), (j, i)):
                card = CARDINALITIES[a]
                vectors = rng.normal(0.0, scale, (card, INTERACTION_DIM))
                self.towards[(a, b)] = vectors * _tail_decay(card)[:, None]
        numeric = len(CRITEO_NUMERIC)
        self.zero_share = rng.uniform(0.2, 0.65, numeric)
        self.numeric_missing = rng.uniform(0.0, 0.45, numeric)
        self.count_scale = np.exp(rng.uniform(0.5, 4.0, numeric))
        self.zero_effect = rng.normal(0.0, 0.3, numeric)
        self.count_effect = rng.normal(0.0, 0.25, numeric)

    def draw(self, rows: int, chunk: int, day: int = 0, shift: Sequence[str] = ()) -> pa.Table:
        """``rows`` rows from this world's random stream number ``chunk``; ``day`` draws
        another day, on which the fields named in ``shift`` drift as the default layout's
        do (training/synth.py): popularity ranks rotated by half the field, and a share of
        values never drawn before (new that day, with no effect of their own)."""
        unknown = sorted(set(shift) - set(CRITEO_CATEGORICAL))
        if unknown:
            raise ValueError(f"--shift names no categorical field: {unknown}")
        rng = np.random.default_rng([self.seed + 1, chunk] + ([day] if day else []))
        ranks = []
        for name, card, cdf, missing in zip(
            CRITEO_CATEGORICAL, CARDINALITIES, self.cdfs, MISSING, strict=True
        ):
            field_ranks = np.minimum(np.searchsorted(cdf, rng.uniform(size=rows)), card - 1)
            if name in shift:
                field_ranks = (field_ranks + card // 2) % card
                new = rng.uniform(size=rows) < SHIFT_NEW_SHARE
                field_ranks[new] = card * (1 + day) + rng.integers(0, card, int(new.sum()))
            field_ranks[rng.uniform(size=rows) < missing] = -1
            ranks.append(field_ranks)
        known = [(r >= 0) & (r < card) for r, card in zip(ranks, CARDINALITIES, strict=True)]
        logit = np.full(rows, self.bias)
        for field_ranks, seen, effects in zip(ranks, known, self.first_order, strict=True):
            logit += np.where(seen, effects[np.where(seen, field_ranks, 0)], 0.0)
        terms = []
        for i, j in self.pairs:
            left = self.towards[(i, j)][np.where(known[i], ranks[i], 0)]
            right = self.towards[(j, i)][np.where(known[j], ranks[j], 0)]
            present = known[i] & known[j]
            terms.append(np.where(present, (left * right).sum(axis=1), 0.0))
            logit += terms[-1]
        logit += 2.0 * (np.maximum(terms[0] + terms[1], 0.0) + np.maximum(-terms[2] - terms[3], 0))
        counts = []
        for k in range(len(CRITEO_NUMERIC)):
            zero = rng.uniform(size=rows) < self.zero_share[k]
            values = np.where(zero, 0, rng.geometric(1.0 / self.count_scale[k], rows))
            absent = rng.uniform(size=rows) < self.numeric_missing[k]
            effect = np.where(
                values == 0, self.zero_effect[k], self.count_effect[k] * np.sin(np.log1p(values))
            )
            logit += np.where(absent, 0.0, effect)
            counts.append(pa.array(values, mask=absent))
        p_true = 1.0 / (1.0 + np.exp(-logit))
        label = (rng.uniform(size=rows) < p_true).astype(np.int8)
        columns = {"label": pa.array(label)}
        columns.update(zip(CRITEO_NUMERIC, counts, strict=True))
        for field, (name, tokens, field_ranks) in enumerate(
            zip(CRITEO_CATEGORICAL, self.tokens, ranks, strict=True)
        ):
            unset = field_ranks < 0
            card = CARDINALITIES[field]
            taken = tokens.take(pa.array(np.clip(field_ranks, 0, card - 1)))
            fresh = field_ranks >= card
            if fresh.any():  # a day's new values: tokens of their own, never drawn before
                taken = pc.if_else(pa.array(fresh), _tokens(field_ranks, field), taken)
            columns[name] = pc.if_else(pa.array(unset), pa.scalar(None, pa.string()), taken)
        columns["p_true"] = pa.array(np.round(p_true, 6))
        return pa.table(columns)
