"""A Criteo-shaped synthetic world: 13 integer count fields and 26 categorical fields with
Criteo Kaggle's cardinalities (capped at 10^6), Zipf-distributed values, missing values, and
planted field-aware interactions with a known true probability per row.

It exists so that scale (tens of millions of rows, vocabularies of 10^6) and quality at scale
(AUC against the oracle) can be measured without the real data. Columns: ``label``,
``I1..I13`` (counts, 0 the most common value, as in Criteo), ``C1..C26`` (8-hex-digit
tokens), ``p_true``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data import CRITEO_CATEGORICAL, CRITEO_NUMERIC

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
BIAS = -1.75


def _tail_decay(cardinality: int) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + np.arange(cardinality) / TAIL_DECAY_RANK)


class World:
    """The truth of one seed; :meth:`draw` samples rows from it, chunk by chunk."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        fields = len(CARDINALITIES)
        self.cdfs = []
        self.tokens = []
        self.first_order = []
        for field, card in enumerate(CARDINALITIES):
            weights = np.arange(1, card + 1, dtype=np.float64) ** -ZIPF_EXPONENT
            self.cdfs.append(np.cumsum(weights / weights.sum()))
            hashed = np.arange(card, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(field)
            hashed = (hashed ^ (hashed >> np.uint64(13))) & np.uint64(0xFFFFFFFF)
            self.tokens.append(pa.array(np.char.mod("%08x", hashed.astype(np.int64))))
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

    def draw(self, rows: int, chunk: int) -> pa.Table:
        """``rows`` rows from this world's random stream number ``chunk``."""
        rng = np.random.default_rng([self.seed + 1, chunk])
        ranks = []
        for card, cdf, missing in zip(CARDINALITIES, self.cdfs, MISSING, strict=True):
            field_ranks = np.minimum(np.searchsorted(cdf, rng.uniform(size=rows)), card - 1)
            field_ranks[rng.uniform(size=rows) < missing] = -1
            ranks.append(field_ranks)
        logit = np.full(rows, BIAS)
        for field_ranks, effects in zip(ranks, self.first_order, strict=True):
            logit += np.where(field_ranks >= 0, effects[field_ranks], 0.0)
        terms = []
        for i, j in self.pairs:
            left = self.towards[(i, j)][ranks[i]]
            right = self.towards[(j, i)][ranks[j]]
            present = (ranks[i] >= 0) & (ranks[j] >= 0)
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
        for name, tokens, field_ranks in zip(CRITEO_CATEGORICAL, self.tokens, ranks, strict=True):
            missing = field_ranks < 0
            taken = tokens.take(pa.array(np.maximum(field_ranks, 0)))
            columns[name] = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), taken)
        columns["p_true"] = pa.array(np.round(p_true, 6))
        return pa.table(columns)
