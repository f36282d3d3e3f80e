"""Calibrated scores: an isotonic map fitted on the validation split, baked into the graph.

An ad exchange bids ``bid x pCTR``: a score 12% low loses 12% of the auctions it should
win, and early stopping and L2 leave a model under-confident. The map is scikit-learn's
isotonic regression of the labels on the model's probabilities (monotone, so AUC is
unchanged), sampled at ``MAX_KNOTS`` quantiles of the scores into a piecewise-linear
function, and exported as a few tensor operations, so the service stays torch- and
sklearn-free and scores what torch scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from torch import nn

CALIBRATION_FILE = "calibration.json"
# Knots at this many quantiles of the validation scores: the fit's own knots step between
# blocks over gaps of 1e-6, which is noise, and a slope of 1e6 would magnify the last bits
# of a score to 1e-1; quantiles follow the scores where they are dense (a CTR of 0.02).
MAX_KNOTS = 256
# Fewer validation rows than this (or of one class) fit a map of noise: none is fitted.
MIN_ROWS = 1000
MIN_CLASS_ROWS = 20
_EDGE = 1e-6  # a calibrated probability never reaches 0 or 1 (log loss stays finite)


@dataclass(frozen=True)
class Calibration:
    """A piecewise-linear, non-decreasing map of probabilities: knots ``x`` (increasing)
    to ``y``; below the first knot ``y[0]``, above the last ``y[-1]``."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    @property
    def steepest(self) -> float:
        """The largest slope of the map: how much it magnifies a difference in the score."""
        x, y = np.asarray(self.x), np.asarray(self.y)
        return float(np.max(np.diff(y) / np.maximum(np.diff(x), 1e-12)))

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return np.interp(probabilities, self.x, self.y).astype(np.float32)

    def save(self, folder: Path) -> None:
        (folder / CALIBRATION_FILE).write_text(json.dumps({"x": self.x, "y": self.y}))

    @classmethod
    def load(cls, folder: Path) -> Calibration | None:
        """The calibration a version was exported with, ``None`` if it had none."""
        path = folder / CALIBRATION_FILE
        if not path.is_file():
            return None
        knots = json.loads(path.read_text())
        return cls(tuple(knots["x"]), tuple(knots["y"]))


def fit_isotonic(labels: np.ndarray, probabilities: np.ndarray) -> Calibration | None:
    """The isotonic map of ``labels`` on ``probabilities``; ``None`` when the rows cannot
    fit one (under ``MIN_ROWS`` rows, under ``MIN_CLASS_ROWS`` of a class, one score)."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    positives = int(np.count_nonzero(labels > 0))
    if len(labels) < MIN_ROWS or min(positives, len(labels) - positives) < MIN_CLASS_ROWS:
        return None
    regression = IsotonicRegression(y_min=_EDGE, y_max=1 - _EDGE, out_of_bounds="clip")
    regression.fit(probabilities, labels)
    if len(regression.X_thresholds_) < 2:
        return None
    x = np.unique(np.quantile(probabilities, np.linspace(0.0, 1.0, MAX_KNOTS)))
    if len(x) < 2:
        return None
    y = regression.predict(x)  # the fit, sampled at the knots: still non-decreasing
    return Calibration(tuple(float(v) for v in x), tuple(float(v) for v in y))


class CalibrationLayer(nn.Module):
    """``Calibration.apply`` in tensor operations the ONNX exporter knows: find the segment
    by counting the knots at or below the score, then interpolate on it (one division and
    one multiply-add: torch and onnxruntime agree to float32 rounding)."""

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
        below = (probabilities.unsqueeze(1) >= self.start).sum(dim=1)
        segment = (below - 1).clamp(min=0)
        along = (probabilities - self.start[segment]) / self.width[segment]
        return self.low[segment] + along.clamp(0.0, 1.0) * self.rise[segment]
