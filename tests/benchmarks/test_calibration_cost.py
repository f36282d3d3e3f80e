"""`python -m benchmarks.calibration_cost`'s report: a row per size, what calibration adds."""

from pathlib import Path

import pytest

pytest.importorskip("torch")

from benchmarks.calibration_cost import report


def test_the_report_gives_each_graphs_time_and_what_calibration_adds() -> None:
    results = {
        1: {"no calibration": 17.8, "int64 count (before)": 24.6, "float32 count (now)": 24.4},
        100: {"no calibration": 273.7, "int64 count (before)": 376.6, "float32 count (now)": 293.4},
    }
    text = report(results, Path("models/default"), 2000)
    rows = [line for line in text.splitlines() if line.startswith("| 100 ")]
    assert rows == ["| 100 | 273.7 | 376.6 | 293.4 | +19.7 µs |"]
    assert "models/default's graph" in text
    assert "2,000 calls" in text
