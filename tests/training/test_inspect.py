"""`python -m training inspect`: a map of a field's latent vectors."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from support.training_files import training_cli as cli

pytestmark = pytest.mark.slow  # starts processes: the training CLI


def test_inspect_draws_a_field_map(model_dir: Path, synth_csv: Path, tmp_path: Path) -> None:
    plot = tmp_path / "c0.png"
    result = cli(
        "inspect",
        "--model-dir",
        str(model_dir),
        "--field",
        "c0",
        "--plot",
        str(plot),
        "--data",
        str(synth_csv),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["values"] > 10
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = cli("inspect", "--model-dir", str(model_dir), "--field", "nope", "--plot", str(plot))
    assert bad.returncode == 2
    assert "unknown field 'nope'" in bad.stderr
    # without data there are no click rates: the summary says null, never NaN (not JSON)
    alone = cli("inspect", "--model-dir", str(model_dir), "--field", "c0", "--plot", str(plot))
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert json.loads(alone.stdout, parse_constant=_refused)["corr_first_axis_vs_rate"] is None
    odd = cli("inspect", "--model-dir", str(model_dir), "--field", "c0", "--plot", "c0.xyz")
    assert odd.returncode == 2
    assert "--plot c0.xyz: name a picture file (" in odd.stderr


def _refused(constant: str) -> object:
    raise AssertionError(f"{constant} is not JSON")
