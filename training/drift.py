"""``ctrserve drift``: new data against what a model version was trained on.

For every field, the rows per bucket of the served encoding -- the field's most frequent
training values one by one, its other values together, unseen values, missing; a numeric
field's bins and missing -- are compared with the training rows' by the population
stability index, PSI = Σ (new - train) · ln(new / train) over the buckets' shares. The
unseen and missing rates are shown beside it (a stale vocabulary shows as a rising unseen
rate), and the data's scores are compared with the validation scores the same way. A PSI at
or past the threshold (0.2 by default, the usual mark of a shift that matters) flags the
field; the command then exits 1, so a scheduler can alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.features.spec import MISSING_INDEX, NUM_RESERVED, UNSEEN_INDEX, CategoricalField
from app.model.scorer import Scorer
from app.repository.store import resolve_model_dir
from training.batch_predict import model_source, score_indices
from training.data import BadRowLog, DataError, DataFormat
from training.dataset import encode_batch
from training.statistics import TrainingStatistics, add_index_counts, score_bins

PSI_THRESHOLD = 0.2
# A categorical field's most frequent training values compared one by one; the rest of its
# vocabulary is one bucket, so a field of a million values is not a million tiny buckets.
TOP_VALUES = 20
# Share given to a bucket no row fell in, so that ln(new / train) stays finite.
_EMPTY_SHARE = 1e-4
SCORE = "(score)"


@dataclass(frozen=True)
class FieldDrift:
    field: str
    psi: float
    unseen_train: float  # share of training rows encoded as unseen
    unseen_now: float
    missing_train: float
    missing_now: float
    flagged: bool


@dataclass(frozen=True)
class DriftReport:
    version: str
    rows: int
    threshold: float
    fields: list[FieldDrift]  # the score last, as the field "(score)"

    @property
    def flagged(self) -> list[str]:
        return [f.field for f in self.fields if f.flagged]


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors over the same buckets."""
    train = np.maximum(expected / max(expected.sum(), 1), _EMPTY_SHARE)
    now = np.maximum(actual / max(actual.sum(), 1), _EMPTY_SHARE)
    return float(np.sum((now - train) * np.log(now / train)))


def _buckets(counts: np.ndarray, categorical: bool) -> np.ndarray:
    """Which bucket each encoded index of a field falls in (missing and unseen: their own)."""
    buckets = np.arange(len(counts))
    if not categorical or len(counts) <= NUM_RESERVED + TOP_VALUES:
        return buckets
    values = counts[NUM_RESERVED:]
    top = NUM_RESERVED + np.argsort(-values, kind="stable")[:TOP_VALUES]
    other = NUM_RESERVED + TOP_VALUES
    buckets = np.full(len(counts), other)
    buckets[MISSING_INDEX], buckets[UNSEEN_INDEX] = MISSING_INDEX, UNSEEN_INDEX
    buckets[top] = np.arange(NUM_RESERVED, NUM_RESERVED + TOP_VALUES)
    return buckets


def drift(
    model_dir: Path,
    data: Path,
    fmt: DataFormat | None = None,
    threshold: float = PSI_THRESHOLD,
    bad_rows: BadRowLog | None = None,
) -> DriftReport:
    """Compare ``data`` (a prediction log or any file the trainer reads) with the training
    statistics of the model version in ``model_dir``."""
    version_dir = resolve_model_dir(model_dir)
    statistics = TrainingStatistics.load(version_dir)
    if statistics is None:
        raise DataError(
            f"{version_dir}: this version has no training statistics (it was trained before "
            "they were kept): train it again to compare data with it"
        )
    scorer = Scorer.load(version_dir)
    spec = scorer.manifest.features
    counts = [np.zeros(size, dtype=np.int64) for size in spec.field_dims]
    scores = np.zeros(len(statistics.score_counts), dtype=np.int64)
    rows = 0
    # the model's own encoding, in its field order
    for batch in model_source(scorer, data, fmt).batches(bad_rows or BadRowLog()):
        indices = encode_batch(scorer.encoder, batch)
        add_index_counts(counts, indices)
        scores += score_bins(statistics.score_edges, score_indices(scorer, indices))
        rows += len(indices)
    fields = []
    for field, now in zip(spec.fields, counts, strict=True):
        train = statistics.field_counts.get(field.name)
        if train is None or len(train) != len(now):
            raise DataError(f"{version_dir}: training statistics of field {field.name!r} do not "
                            "match its encoding")  # fmt: skip
        buckets = _buckets(train, isinstance(field, CategoricalField))
        value = psi(np.bincount(buckets, train), np.bincount(buckets, now))
        fields.append(
            FieldDrift(
                field.name,
                value,
                _share(train, UNSEEN_INDEX),
                _share(now, UNSEEN_INDEX),
                _share(train, MISSING_INDEX),
                _share(now, MISSING_INDEX),
                value >= threshold,
            )
        )
    score_psi = psi(statistics.score_counts, scores)
    fields.append(FieldDrift(SCORE, score_psi, 0, 0, 0, 0, score_psi >= threshold))
    return DriftReport(scorer.manifest.version, rows, threshold, fields)


def _share(counts: np.ndarray, index: int) -> float:
    return float(counts[index] / max(counts.sum(), 1))


def table(report: DriftReport) -> str:
    """The report as a Markdown table."""
    lines = [
        f"Drift of {report.rows:,} rows against model version {report.version} "
        f"(PSI threshold {report.threshold:g})",
        "",
        "| field | PSI | unseen: train → now | missing: train → now | drift |",
        "|---|---|---|---|---|",
    ]
    for f in report.fields:
        rates = (
            ("", "")
            if f.field == SCORE
            else (
                f"{f.unseen_train:.1%} → {f.unseen_now:.1%}",
                f"{f.missing_train:.1%} → {f.missing_now:.1%}",
            )
        )
        mark = "**yes**" if f.flagged else ""
        lines.append(f"| {f.field} | {f.psi:.3f} | {rates[0]} | {rates[1]} | {mark} |")
    return "\n".join(lines) + "\n"


def plot(report: DriftReport, path: Path) -> None:
    """A bar chart of each field's PSI against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f.field for f in report.fields]
    values = [f.psi for f in report.fields]
    colours = ["#c0392b" if f.flagged else "#2e86c1" for f in report.fields]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(names)), 3.6))
    axes.bar(names, values, color=colours)
    axes.axhline(report.threshold, color="#555555", linestyle="--", linewidth=1)
    axes.text(len(names) - 0.5, report.threshold, f" threshold {report.threshold:g}",
              va="bottom", ha="right", fontsize=8)  # fmt: skip
    axes.set_ylabel("population stability index")
    axes.set_title(f"Drift against model version {report.version} ({report.rows:,} rows)")
    axes.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
