"""Calibrated scores: a map fitted on the validation split, baked into the graph.

An ad exchange bids ``bid x pCTR``: a score 12% low loses 12% of the auctions it should
win, and early stopping and L2 leave a model under-confident. Two maps are fitted:
Platt's (a logistic regression on the score's logit: two parameters, smooth) and
scikit-learn's isotonic regression (any monotone shape, but a step for every run of
noise). Each is fitted on one half of the validation rows and judged by its log loss on
the other, both ways; the better one is refitted on every row. Small splits pick Platt
(the isotonic map fits their noise), large ones with a bent curve pick isotonic. Either
is monotone, so AUC is unchanged. The map is sampled at ``MAX_KNOTS`` quantiles of the
scores into a piecewise-linear function and exported as a few tensor operations, so the
service stays torch- and sklearn-free and scores what torch scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from torch import nn

CALIBRATION_FILE = "calibration.json"
# Knots at this many quantiles of the validation scores: the isotonic fit's own knots step
# between blocks over gaps of 1e-6, which is noise, and a slope of 1e6 would magnify the
# last bits of a score to 1e-1; quantiles follow the scores where they are dense (a CTR of
# 0.02), and 256 segments follow Platt's sigmoid to ~1e-4.
MAX_KNOTS = 256
# Fewer validation rows than this (or of one class) fit a map of noise: none is fitted.
MIN_ROWS = 1000
MIN_CLASS_ROWS = 20
_EDGE = 1e-6  # a calibrated probability never reaches 0 or 1 (log loss stays finite)
_SEED = 0  # which half of the validation rows each map is fitted on while they are compared

Method = Literal["platt", "isotonic"]
Curve = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Calibration:
    """A piecewise-linear, non-decreasing map of probabilities: knots ``x`` (increasing)
    to ``y``; below the first knot ``y[0]``, above the last ``y[-1]``. ``method`` names the
    fit it samples; ``held_out_logloss`` the log loss of each candidate on the held-out
    halves, the comparison that chose it."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    method: Method = "isotonic"
    held_out_logloss: tuple[tuple[str, float], ...] = ()

    @property
    def steepest(self) -> float:
        """The largest slope of the map: how much it magnifies a difference in the score."""
        x, y = np.asarray(self.x), np.asarray(self.y)
        return float(np.max(np.diff(y) / np.maximum(np.diff(x), 1e-12)))

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return np.interp(probabilities, self.x, self.y).astype(np.float32)

    def save(self, folder: Path) -> None:
        knots = {
            "method": self.method,
            "held_out_logloss": dict(self.held_out_logloss),
            "x": self.x,
            "y": self.y,
        }
        (folder / CALIBRATION_FILE).write_text(json.dumps(knots))

    @classmethod
    def load(cls, folder: Path) -> Calibration | None:
        """The calibration a version was exported with, ``None`` if it had none (a file
        without ``method`` is an isotonic map: the only kind there was)."""
        path = folder / CALIBRATION_FILE
        if not path.is_file():
            return None
        knots = json.loads(path.read_text())
        return cls(
            tuple(knots["x"]),
            tuple(knots["y"]),
            knots.get("method", "isotonic"),
            tuple(knots.get("held_out_logloss", {}).items()),
        )


def fit_calibration(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None
) -> Calibration | None:
    """The map of ``labels`` on ``probabilities`` (rows weighted by ``weights``, if given)
    that predicts held-out rows best; ``None`` when the rows cannot fit one (under
    ``MIN_ROWS`` rows, under ``MIN_CLASS_ROWS`` of a class, one distinct score)."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64)
    positives = int(np.count_nonzero(labels > 0))
    if len(labels) < MIN_ROWS or min(positives, len(labels) - positives) < MIN_CLASS_ROWS:
        return None
    x = np.unique(np.quantile(probabilities, np.linspace(0.0, 1.0, MAX_KNOTS)))
    if len(x) < 2:
        return None
    half = np.random.default_rng(_SEED).permutation(len(labels)) % 2 == 0
    losses: dict[str, float] = {}
    for method, fitter in FITTERS.items():
        loss = 0.0
        for fitted, judged in ((half, ~half), (~half, half)):
            curve = fitter(labels[fitted], probabilities[fitted], weights[fitted])
            mapped = np.interp(probabilities[judged], x, curve(x))
            loss += log_loss(
                labels[judged],
                mapped,
                normalize=False,
                sample_weight=weights[judged],
                labels=[0, 1],
            )
        losses[method] = loss / weights.sum()
    method = min(losses, key=losses.__getitem__)
    y = FITTERS[method](labels, probabilities, weights)(x)
    return Calibration(
        tuple(float(v) for v in x),
        tuple(float(v) for v in y),
        method,  # type: ignore[arg-type]
        tuple((name, round(float(loss), 6)) for name, loss in losses.items()),
    )


def _logit(probabilities: np.ndarray) -> np.ndarray:
    p: np.ndarray = np.clip(probabilities, _EDGE, 1 - _EDGE)
    logit: np.ndarray = np.log(p) - np.log1p(-p)
    return logit


def _platt(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> Curve:
    """``sigmoid(a * logit(p) + b)``, unregularised; a slope that is not positive (a score
    that says nothing) would reverse the order, so the map is then the weighted rate."""
    regression = LogisticRegression(C=1e6, max_iter=1000)
    regression.fit(_logit(probabilities)[:, None], labels, sample_weight=weights)
    slope, intercept = float(regression.coef_[0, 0]), float(regression.intercept_[0])
    if slope <= 0:
        rate = float(np.average(labels, weights=weights))
        return lambda x: np.full(len(x), rate)
    return lambda x: np.clip(1 / (1 + np.exp(-(slope * _logit(x) + intercept))), _EDGE, 1 - _EDGE)


def _isotonic(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> Curve:
    regression = IsotonicRegression(y_min=_EDGE, y_max=1 - _EDGE, out_of_bounds="clip")
    regression.fit(probabilities, labels, sample_weight=weights)
    return regression.predict  # type: ignore[no-any-return]


FITTERS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], Curve]] = {
    "platt": _platt,
    "isotonic": _isotonic,
}


class CalibrationLayer(nn.Module):
    """``Calibration.apply`` in tensor operations the ONNX exporter knows: find the segment
    by counting the knots at or below the score, then interpolate on it (one division and
    one multiply-add: torch and onnxruntime agree to float32 rounding).

    The knots are counted in float32 (exact up to 2**24): onnxruntime's ReduceSum over
    int64 made a 100-row call 377 µs against 293 (docs/CALIBRATION_COST.md)."""

    start: torch.Tensor  # buffers: typed here, as nn.Module's attribute lookup is not
    width: torch.Tensor
    low: torch.Tensor
    rise: torch.Tensor

    def __init__(self, calibration: Calibration) -> None:
        super().__init__()
        x = torch.tensor(calibration.x, dtype=torch.float64)
        y = torch.tensor(calibration.y, dtype=torch.float64)
        self.register_buffer("start", x[:-1].float())
        self.register_buffer("width", (x[1:] - x[:-1]).clamp_min(1e-12).float())
        self.register_buffer("low", y[:-1].float())
        self.register_buffer("rise", (y[1:] - y[:-1]).float())

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        """``(B,)`` probabilities -> ``(B,)`` calibrated probabilities."""
        below = (probabilities.unsqueeze(1) >= self.start).float().sum(dim=1).long()
        segment = (below - 1).clamp(min=0)
        along = (probabilities - self.start[segment]) / self.width[segment]
        return self.low[segment] + along.clamp(0.0, 1.0) * self.rise[segment]
