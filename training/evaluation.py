"""Metrics for both tasks, as plain dicts: the CLI's summaries and the record spec.json keeps."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from training.shards import Split

Metrics = dict[str, float]


ECE_BINS = 15


def binary_metrics(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None
) -> Metrics:
    """AUC, log loss, normalized entropy (log loss over the entropy of the observed rate:
    He et al. 2014; below 1 is better than predicting the base rate), calibration (mean
    predicted over observed rate) and the expected calibration error (15 equal-width bins,
    weighted by their rows); NaN where one class leaves a metric undefined (AUC, NE, and
    calibration at a zero rate). With ``weights`` a row counts that many times (a down-sampled
    split's kept negatives stand for the ones left out); ``rows`` stays the rows scored."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    single_class = labels.min() == labels.max()
    metrics: Metrics = {
        "rows": float(len(labels)),
        "auc": float("nan")
        if single_class
        else float(roc_auc_score(labels, probabilities, sample_weight=w)),
        "logloss": float(log_loss(labels, probabilities, sample_weight=w, labels=[0.0, 1.0])),
        "mean_predicted": float(np.average(probabilities, weights=w)),
        "observed_rate": float(np.average(labels, weights=w)),
    }
    # of one class, the rate's entropy is 0 and a zero rate divides nothing: undefined (NaN)
    rate = metrics["observed_rate"]
    metrics["calibration"] = metrics["mean_predicted"] / rate if rate > 0 else float("nan")
    metrics["ne"] = (
        float("nan")
        if single_class
        else metrics["logloss"] / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    )
    metrics["ece"] = expected_calibration_error(labels, probabilities, w)
    return metrics


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Σ over equal-width score bins of (weight in the bin / weight) · |mean score - rate|."""
    if not len(labels):
        return float("nan")
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    bins = np.minimum((probabilities * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    scores = np.bincount(bins, weights=w * probabilities, minlength=ECE_BINS)
    clicks = np.bincount(bins, weights=w * labels, minlength=ECE_BINS)
    return float(np.abs(scores - clicks).sum() / w.sum())


def regression_metrics(
    targets: np.ndarray, predictions: np.ndarray, weights: np.ndarray | None
) -> Metrics:
    """RMSE and weighted RMSE (InMobi's loss: weight = share of impressions)."""
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    squared = (predictions - targets) ** 2
    w = np.ones_like(targets) if weights is None else np.asarray(weights, dtype=np.float64)
    return {
        "rows": float(len(targets)),
        "rmse": float(np.sqrt(squared.mean())),
        "weighted_rmse": float(np.sqrt((w * squared).sum() / max(w.sum(), 1e-12))),
        "mean_predicted": float(np.average(predictions, weights=w)),
        "observed_rate": float(np.average(targets, weights=w)),
    }


def headline(metrics: Metrics) -> float:
    """The number early stopping maximises: AUC, or minus the weighted RMSE."""
    return metrics["auc"] if "auc" in metrics else -metrics["weighted_rmse"]


def oracle_metrics(split: Split) -> Metrics | None:
    """Metrics of the generator's true probabilities on a split, when the data has them."""
    if split.oracle is None or len(split) == 0:
        return None
    oracle = split.oracle.read()
    if np.isnan(oracle).any():
        return None
    weights = None if split.weights is None else split.weights.read()
    return binary_metrics(split.labels.read(), oracle, weights)
