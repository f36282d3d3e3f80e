"""Training-side helpers for tests: a tiny Criteo-layout file and the training CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from support.servers import ROOT


def write_criteo(path: Path, rows: int = 20, seed: int = 0) -> Path:
    """A tiny file in the Criteo layout: label, I1..I13, C1..C26, empty = missing."""
    rng = np.random.default_rng(seed)
    lines = []
    for r in range(rows):
        ints = [str(int(v)) if v >= 0 else "" for v in rng.integers(-3, 50, 13)]
        cats = [f"{rng.integers(0, 2**32):08x}" if rng.uniform() > 0.2 else "" for _ in range(26)]
        lines.append("\t".join([str(r % 2), *ints, *cats]))
    path.write_text("\n".join(lines) + "\n")
    return path


def training_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m training ARGS`` as a user runs it, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True
    )
