"""`python -m benchmarks.compare`: the ladder against LightGBM, XGBoost and DeepCTR-Torch."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("lightgbm")
pytest.importorskip("xgboost")
pytest.importorskip("deepctr_torch")

from support.servers import ROOT
from support.training_files import write_criteo

pytestmark = pytest.mark.slow  # starts processes: the comparison

AUC_CELL = re.compile(r"^(0\.\d{4}) ± (0\.\d{4})$")


def _compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_compare_on_a_criteo_layout_file(tmp_path: Path) -> None:
    data = write_criteo(tmp_path / "criteo.txt", rows=600)
    report = tmp_path / "compare.md"
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"min_count": 3, "epochs": 2}))
    result = _compare(
        "--data", str(data), "--format", "criteo", "--models", "lr,nffm", "--no-tune",
        "--repeats", "2", "--config", str(config), "--l2", "0.001", "--trials", "3",
        "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines()[2:] if line.startswith("|")]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in rows]
    assert sorted(c[0] for c in cells) == sorted(
        ["lr", "nffm", "LightGBM tuned", "XGBoost tuned", "DeepCTR-Torch DeepFM",
         "DeepCTR-Torch ONN"]
    )  # fmt: skip
    for row in cells:  # every AUC carries its bootstrap standard error
        _auc, se = map(float, AUC_CELL.match(row[2]).groups())  # type: ignore[union-attr]
        assert 0 < se < 0.2
        assert re.fullmatch(r"0\.\d{4} ± 0\.\d{4}", row[-2])  # and its spread over 2 splits
    setup = json.loads(report.read_text().splitlines()[0].removeprefix("Set-up: "))
    assert (setup["seed"], setup["repeats"]) == (0, 2)
    for name in ("lr", "nffm"):  # the file's settings and the flags both reached training
        assert setup["settings"][name]["min_count"] == 3
        assert setup["settings"][name]["l2"] == 0.001
    for booster in ("LightGBM", "XGBoost"):  # searched with the budget, defaults first
        trials = setup["trials"][booster]
        assert [t["number"] for t in trials] == [0, 1, 2]
        assert trials[0]["settings"]["encoding"] == "categorical"
    gap, se = setup["differences"]["nffm - LightGBM tuned"]
    assert abs(gap) < 0.5
    assert se > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "nffm,gbdt"], "unknown models ['gbdt']"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--trials", "0"], "--trials must be at least 1"),
    ],
)
def test_bad_arguments_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    data = write_criteo(tmp_path / "criteo.txt", rows=20)
    result = _compare("--data", str(data), "--format", "criteo", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
