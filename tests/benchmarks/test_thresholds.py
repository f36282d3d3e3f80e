"""`python -m benchmarks.thresholds`: each threshold forced to both sides, checked to answer
the same, and reported with what its pick costs."""

import pytest

import benchmarks.thresholds as thresholds
from app.protocol import tensors
from benchmarks.thresholds import Sweep, in_turns, report, scan_elements


def _sweep(small_us: list[float], large_us: list[float], value: int = 16) -> Sweep:
    sweep = Sweep("k", "Decoding", "app/x.py: LIMIT", value, "rows", "a scan", "numpy", "w")
    for size, small, large in zip((8, 16, 32, 64), small_us, large_us, strict=True):
        sweep.add(size, small, large)
    return sweep


def test_the_crossover_is_where_the_larger_side_stays_faster() -> None:
    assert _sweep([1, 2, 5, 9], [3, 3, 4, 5]).crossover() == 32
    assert _sweep([1, 4, 2, 9], [3, 3, 4, 5]).crossover() == 64  # a lone win is no crossover
    assert _sweep([1, 2, 3, 4], [3, 3, 4, 5]).crossover() is None


def test_the_picks_cost_is_the_threshold_side_against_the_faster() -> None:
    # 16 picks the scan (2 against numpy's 1: +100%); 32 picks numpy, the faster
    assert _sweep([1, 2, 5, 9], [3, 1, 4, 5]).worst_loss() == pytest.approx(1.0)
    assert _sweep([1, 2, 5, 9], [3, 3, 4, 5]).worst_loss() == 0.0


def test_both_sides_must_answer_the_same() -> None:
    with pytest.raises(SystemExit, match="answer differently"):
        in_turns(lambda: lambda: [1], lambda: lambda: [2], (), ())


def test_a_real_sweep_forces_each_side_and_restores_the_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(thresholds, "BUDGET_S", 0.0)
    before = (tensors._SCAN_ELEMENTS, tensors._SCAN_EQUAL_ELEMENTS)
    sweep = scan_elements(equal=True)
    assert sweep.value == before[1]
    assert sweep.sizes == [1, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256]
    assert all(us > 0 for us in sweep.small_us + sweep.large_us)
    after = (tensors._SCAN_ELEMENTS, tensors._SCAN_EQUAL_ELEMENTS)
    assert after == before  # forced only while timed


def test_the_report_links_each_threshold_and_gives_each_sizes_pick() -> None:
    sweep = _sweep([1.0, 2.0, 5.0, 9.0], [3.0, 1.0, 4.0, 5.0])
    results = {
        "sweeps": [sweep.__dict__],
        "doorkeeper": [
            {"bits": 64, "mib": 2.0, "false_positives": 0.014, "us": 26.4},
            {"bits": 0, "mib": 0.0, "false_positives": 0.0, "us": 1.3},
        ],
        "window": {"model": "m", "by_window": [{"window": 8, "keys": 9, "unstored": 1, "us": 2}]},
        "encode_hold": {
            "model": "m",
            "fields": 3,
            "by_rows": [{"rows": 1024, "ms": 3.75}, {"rows": 0, "ms": 0.07}],
        },
        "telemetry": {"off": 32.1, "on": 37.3},
    }
    text = report(results, "2026-12-07 22:00 UTC")
    assert '<a id="k"></a>' in text
    assert "| [app/x.py: LIMIT](#k): decoding | 16 | 16 rows | +100% |" in text
    assert "| 16 | 2.0 | 1.0 | numpy | a scan | +100% |" in text
    assert "| 64 | 2.0 | 1.4% | 26.4 |" in text
    assert "| 1,024 | 3.75 |" in text
    assert "**32.1 off, 37.3 on**" in text
