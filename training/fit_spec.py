"""Fit a :class:`FeatureSpec` (vocabularies and numeric bins) on training rows only."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np

from app.features.encoder import canonical_token
from app.features.spec import CategoricalField, FeatureSpec, NumericField
from training.data import Table

Binning = Literal["quantile", "log"]


def fit_vocabulary(values: np.ndarray, name: str, min_count: int) -> CategoricalField:
    """Values seen at least ``min_count`` times, sorted by ``(-count, value)`` for determinism.

    Rarer values are left out and so share the field's unseen row with values never seen.
    """
    counts = Counter(token for token in map(canonical_token, values) if token is not None)
    kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
    return CategoricalField(name=name, min_count=min_count, vocabulary=tuple(kept))


def fit_bins(values: np.ndarray, name: str, binning: Binning, num_bins: int) -> NumericField:
    """Bin edges from the finite training values.

    ``quantile``: edges at the inner quantiles (equal-count bins, robust to scale).
    ``log``: edges at ``±(2**k - 1)``, the classic choice for heavy-tailed counts.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        edges = np.empty(0)
    elif binning == "quantile":
        edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, num_bins + 1)[1:-1]))
    else:
        magnitude = np.log2(1.0 + np.abs(finite))
        top = int(np.ceil(magnitude.max()))
        steps = np.arange(1, top + 1, dtype=np.float64)
        positive = 2.0**steps - 1.0
        edges = (
            np.concatenate([-positive[::-1], [0.0], positive])
            if (finite < 0).any()
            else (np.concatenate([[0.0], positive]))
        )
        edges = np.unique(edges)
    return NumericField(name=name, binning=binning, bin_edges=tuple(float(e) for e in edges))


def fit_spec(
    table: Table, min_count: int = 1, binning: Binning = "quantile", num_bins: int = 16
) -> FeatureSpec:
    """Fit one field per feature column, in the table's order (categorical, then numeric)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    fields: list[CategoricalField | NumericField] = [
        fit_vocabulary(table.frame[name].to_numpy(), name, min_count) for name in table.categorical
    ]
    fields += [
        fit_bins(table.frame[name].to_numpy(dtype=np.float64), name, binning, num_bins)
        for name in table.numeric
    ]
    return FeatureSpec(fields=tuple(fields))
