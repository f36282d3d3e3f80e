"""The public slices in ../shared/data (or $CTR_DATA_DIR): skipped cleanly when absent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CTR_DATA_DIR", ROOT.parent / "shared" / "data"))
CRITEO = DATA / "criteo" / "criteo_train.txt"
AVAZU = DATA / "avazu" / "train.csv"


@pytest.mark.parametrize(
    ("path", "fmt", "extra"),
    [(CRITEO, "criteo", []), (AVAZU, "csv", ["--ignore", "id,hour"])],
    ids=["criteo", "avazu"],
)
def test_real_slice_trains_above_chance(
    path: Path, fmt: str, extra: list[str], tmp_path: Path
) -> None:

    if not path.is_file():
        pytest.skip(f"{path} not present (set CTR_DATA_DIR to run)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train",
            "--data",
            str(path),
            "--format",
            fmt,
            "--model",
            "ffm",
            "--batch-size",
            "256",
            "--out",
            str(tmp_path / "m"),
            "--no-progress",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["test"]["auc"] > 0.6
