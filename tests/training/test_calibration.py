"""Calibration: the chosen map fixes a model's under-confidence, keeps its order, and its
tensor form is the map; a small split picks Platt's map, a bent curve with many rows the
isotonic one; normalized entropy and the expected calibration error."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.calibration import Calibration, CalibrationLayer, fit_calibration  # noqa: E402
from training.evaluation import binary_metrics, expected_calibration_error  # noqa: E402


def _under_confident(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true rates, and scores that squash those rates toward 0.3."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(2, 3, rows)
    labels = (rng.random(rows) < truth).astype(np.float64)
    return labels, 0.3 + 0.5 * (truth - 0.3)


def test_the_map_calibrates_and_keeps_the_order() -> None:
    labels, scores = _under_confident(40_000)
    calibration = fit_calibration(labels[:20_000], scores[:20_000])
    assert calibration is not None
    before = binary_metrics(labels[20_000:], scores[20_000:])
    after = binary_metrics(labels[20_000:], calibration.apply(scores[20_000:]))
    assert before["ece"] > 0.05
    assert after["ece"] < 0.02
    assert after["calibration"] == pytest.approx(1.0, abs=0.02)
    assert after["logloss"] < before["logloss"]
    assert after["auc"] == pytest.approx(before["auc"], abs=0.002)  # ties only, no reorder
    assert np.all(np.diff(calibration.y) >= 0)


def test_a_logistic_distortion_picks_platt_and_a_bent_one_isotonic() -> None:
    # squashed in logit space: exactly the shape Platt's two parameters undo
    labels, scores = _under_confident(20_000)
    logit = np.log(scores) - np.log1p(-scores)
    platt = fit_calibration(labels, 1 / (1 + np.exp(-0.5 * logit)))
    assert platt is not None
    assert platt.method == "platt"
    # a step no sigmoid follows: scores above 0.5 all mean the same rate
    rng = np.random.default_rng(3)
    scores = rng.random(200_000)
    truth = np.where(scores < 0.5, scores, 0.5)
    labels = (rng.random(len(scores)) < truth).astype(np.float64)
    bent = fit_calibration(labels, scores)
    assert bent is not None
    assert bent.method == "isotonic"
    assert dict(bent.held_out_logloss)["isotonic"] < dict(bent.held_out_logloss)["platt"]
    assert bent.apply(np.array([0.7, 0.9])) == pytest.approx([0.5, 0.5], abs=0.02)


def test_weights_stand_for_the_rows_left_out() -> None:
    # a tenth of the negatives kept, each weighted 10: the map finds the unsampled rates
    labels, scores = _under_confident(60_000)
    kept = (labels > 0) | (np.random.default_rng(4).random(len(labels)) < 0.1)
    weights = np.where(labels[kept] > 0, 1.0, 10.0)
    sampled = fit_calibration(labels[kept], scores[kept], weights)
    unweighted = fit_calibration(labels[kept], scores[kept])
    assert sampled is not None
    assert unweighted is not None
    grid = np.linspace(0.25, 0.5, 6)  # where the scores are dense
    truth = (grid - 0.15) / 0.5  # _under_confident's scores, undone
    np.testing.assert_allclose(sampled.apply(grid), truth, atol=0.03)
    assert np.all(unweighted.apply(grid) > truth + 0.1)  # the kept rows' own rate is higher


def test_the_map_and_its_choice_survive_a_save(tmp_path) -> None:
    labels, scores = _under_confident(5000)
    calibration = fit_calibration(labels, scores)
    assert calibration is not None
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration


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
    assert fit_calibration(np.zeros(5000), np.linspace(0, 1, 5000)) is None
    labels, scores = _under_confident(999)
    assert fit_calibration(labels, scores) is None  # a map of 999 rows' noise
    labels, scores = _under_confident(1000)
    assert fit_calibration(labels, scores) is not None


def test_normalized_entropy_and_calibration_error() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(50_000) < 0.2).astype(np.float64)
    base_rate = binary_metrics(labels, np.full(len(labels), labels.mean()))
    assert base_rate["ne"] == pytest.approx(1.0, abs=1e-6)  # the base rate scores NE 1
    one_class = binary_metrics(np.zeros(100), np.full(100, 0.2))
    assert np.isnan([one_class["auc"], one_class["ne"], one_class["calibration"]]).all()
    assert one_class["logloss"] == pytest.approx(-np.log(0.8))
    assert base_rate["ece"] == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(labels, np.full(len(labels), 0.5)) == pytest.approx(
        abs(0.5 - labels.mean())
    )
