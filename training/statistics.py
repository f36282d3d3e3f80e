"""What a model version saw in training, kept with it for ``ctrserve drift``.

``statistics.npz`` in the version directory: for every field, how many training rows had
each encoded index (each vocabulary value, the unseen row of rare values, missing; each
numeric bin), and the validation scores' quantile edges with the rows between them. Counts
of encoded indices are what the served model actually distinguishes, so a drift report
compares new data with the training rows in the model's own terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.features.spec import FeatureSpec
from training.shards import Split

STATISTICS_FILE = "statistics.npz"
SCORE_BINS = 20


@dataclass(frozen=True)
class TrainingStatistics:
    rows: int
    field_counts: dict[str, np.ndarray]  # field -> rows per encoded index
    score_edges: np.ndarray  # SCORE_BINS - 1 inner quantile edges of the validation scores
    score_counts: np.ndarray  # validation rows per bin
    # field -> count per encoded index over every day a warm-started model has seen, each
    # day's decayed (training/warm_start.py); None: this run's rows only (field_counts)
    vocabulary_counts: dict[str, np.ndarray] | None = None

    def save(self, directory: Path) -> None:
        arrays = {
            "rows": np.int64(self.rows),
            "score_edges": self.score_edges,
            "score_counts": self.score_counts,
            **{f"field:{name}": counts for name, counts in self.field_counts.items()},
            **{f"vocab:{name}": c for name, c in (self.vocabulary_counts or {}).items()},
        }
        # numpy's stub takes a ** of arrays for its own flags too (allow_pickle)
        np.savez_compressed(directory / STATISTICS_FILE, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, version_dir: Path) -> TrainingStatistics | None:
        """The statistics of a version, or ``None`` for one trained before they were kept."""
        path = version_dir / STATISTICS_FILE
        if not path.exists():
            return None
        with np.load(path) as saved:
            return cls(
                rows=int(saved["rows"]),
                field_counts={
                    key.removeprefix("field:"): saved[key]
                    for key in saved.files
                    if key.startswith("field:")
                },
                score_edges=saved["score_edges"],
                score_counts=saved["score_counts"],
                vocabulary_counts={
                    key.removeprefix("vocab:"): saved[key]
                    for key in saved.files
                    if key.startswith("vocab:")
                }
                or None,
            )


def index_counts(
    spec: FeatureSpec, split: Split, negative_weight: float = 1.0
) -> tuple[dict[str, np.ndarray], int]:
    """Rows per encoded index of every field over a split on disk, block by block, and
    the rows counted. ``negative_weight``: how many rows a negative stands for (1 / w of a
    down-sampled split, so the counts are those of the rows before sampling)."""
    sums = [np.zeros(size, dtype=np.float64) for size in spec.field_dims]
    rows = 0.0
    for block in split.blocks():
        weights = None
        if negative_weight != 1.0:
            weights = np.where(block.labels <= 0, negative_weight, 1.0)
        add_index_counts(sums, block.indices, weights)
        rows += len(block.labels) if weights is None else float(weights.sum())
    counts = [np.rint(field_sums).astype(np.int64) for field_sums in sums]
    return {field.name: c for field, c in zip(spec.fields, counts, strict=True)}, round(rows)


def add_index_counts(
    counts: list[np.ndarray], indices: np.ndarray, weights: np.ndarray | None = None
) -> None:
    """Add the rows per encoded index of ``(N, F)`` encoded rows to each field's counts
    (each row counted ``weights`` times, when given: float counts)."""
    for j, field_counts in enumerate(counts):
        field_counts += np.bincount(
            indices[:, j].astype(np.int64), weights, minlength=len(field_counts)
        )


def score_histogram(
    scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Quantile edges of ``scores`` and the rows in each bin they make (each row counted
    ``weights`` times, rounded, when given: a down-sampled split's kept negatives)."""
    if len(scores) == 0:
        return np.empty(0), np.zeros(1, dtype=np.int64)
    shares = np.linspace(0, 1, SCORE_BINS + 1)[1:-1]
    if weights is None:
        edges = np.quantile(scores, shares)
    else:
        edges = np.quantile(scores, shares, weights=weights, method="inverted_cdf")
    return edges, score_bins(edges, scores, weights)


def score_bins(
    edges: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Rows of ``scores`` in each bin ``edges`` make (weighted and rounded, when given)."""
    bins = np.searchsorted(edges, scores, side="right")
    counts = np.bincount(bins, weights, minlength=len(edges) + 1)
    return counts if weights is None else np.rint(counts).astype(np.int64)
