"""Calibration: the isotonic map fixes a model's under-confidence, keeps its order, and its
tensor form is the map; normalized entropy and the expected calibration error."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.calibration import Calibration, CalibrationLayer, fit_isotonic  # noqa: E402
from training.evaluation import binary_metrics, expected_calibration_error  # noqa: E402


def _under_confident(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true rates, and scores that squash those rates toward 0.3."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(2, 3, rows)
    labels = (rng.random(rows) < truth).astype(np.float64)
    return labels, 0.3 + 0.5 * (truth - 0.3)


def test_the_isotonic_map_calibrates_and_keeps_the_order() -> None:
    labels, scores = _under_confident(40_000)
    calibration = fit_isotonic(labels[:20_000], scores[:20_000])
    assert calibration is not None
    before = binary_metrics(labels[20_000:], scores[20_000:])
    after = binary_metrics(labels[20_000:], calibration.apply(scores[20_000:]))
    assert before["ece"] > 0.05
    assert after["ece"] < 0.02
    assert after["calibration"] == pytest.approx(1.0, abs=0.02)
    assert after["logloss"] < before["logloss"]
    assert after["auc"] == pytest.approx(before["auc"], abs=0.002)  # ties only, no reorder
    assert np.all(np.diff(calibration.y) >= 0)


def test_the_layer_is_the_map_inside_and_outside_its_knots() -> None:
    calibration = Calibration((0.1, 0.2, 0.5, 0.9), (0.05, 0.3, 0.31, 0.97))
    grid = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    with torch.no_grad():
        layered = CalibrationLayer(calibration)(torch.from_numpy(grid)).numpy()
    np.testing.assert_allclose(layered, calibration.apply(grid), atol=1e-6)
    assert layered[0] == pytest.approx(0.05)  # below the first knot: its value
    assert layered[-1] == pytest.approx(0.97)
    assert calibration.steepest == pytest.approx(2.5)


def test_too_few_rows_or_one_class_fit_no_map() -> None:
    assert fit_isotonic(np.zeros(5000), np.linspace(0, 1, 5000)) is None
    labels, scores = _under_confident(999)
    assert fit_isotonic(labels, scores) is None  # a map of 999 rows' noise
    labels, scores = _under_confident(1000)
    assert fit_isotonic(labels, scores) is not None


def test_normalized_entropy_and_calibration_error() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(50_000) < 0.2).astype(np.float64)
    base_rate = binary_metrics(labels, np.full(len(labels), labels.mean()))
    assert base_rate["ne"] == pytest.approx(1.0, abs=1e-6)  # the base rate scores NE 1
    assert base_rate["ece"] == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(labels, np.full(len(labels), 0.5)) == pytest.approx(
        abs(0.5 - labels.mean())
    )
