"""Shared fixtures: a small synthetic log and one tiny exported model per session.

The model is trained here (torch is in the test environment) so no binary artifact is
committed; the torch-free app tests only read the exported directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SYNTH_ROWS = 10_000


@pytest.fixture(autouse=True)
def _only_the_settings_a_test_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's CTR_* variables and .env file never reach a test's settings."""
    for name in list(os.environ):
        if name.startswith("CTR_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setitem(Settings.model_config, "env_file", None)


@pytest.fixture(scope="session", autouse=True)
def _shard_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Encoded shards go to a directory of this test session, never the user's cache
    (set for the whole session: the session-wide fixtures train through the CLI too)."""
    path = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTRSERVE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_of_started_processes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """Servers, torchrun and the training CLI started by tests make their temporary
    files under this session's directory, which pytest prunes: torchrun keeps its log
    directory, and a rank a test kills cannot remove its own."""
    path = tmp_path_factory.mktemp("processes")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(path))
        yield path


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    _run_cli("synth", "--rows", str(SYNTH_ROWS), "--seed", "3", "--out", str(path))
    return path


@pytest.fixture(scope="session")
def model_dir(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny NFFM, trained and exported through the real CLI."""
    out = tmp_path_factory.mktemp("models") / "nffm"
    _run_cli(
        "train",
        "--data",
        str(synth_csv),
        "--model",
        "nffm",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--embed-dim",
        "4",
        "--mlp-dims",
        "16",
        "--no-progress",
        "--batch-size",
        "256",
    )
    return out


@pytest.fixture(scope="session")
def cvr_model_dir(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model of other fields, as a conversion model differs from the click model:
    a tiny DeepFM without c2, c3 and n1, trained and exported through the real CLI."""
    out = tmp_path_factory.mktemp("models") / "cvr"
    _run_cli(
        "train",
        "--data",
        str(synth_csv),
        "--model",
        "deepfm",
        "--ignore",
        "c2,c3,n1",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--embed-dim",
        "4",
        "--mlp-dims",
        "8",
        "--no-progress",
        "--batch-size",
        "512",
    )
    return out


@pytest.fixture
def repository(model_dir: Path, tmp_path: Path) -> Path:
    """This test's own copy of the session's model repository: reloads may change it."""
    return Path(shutil.copytree(model_dir, tmp_path / "repository"))


@pytest.fixture
def settings(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Small caches, reload on, and models published from anywhere in this test session."""
    return Settings(
        model_dir=repository,
        cache_maxsize=1000,
        cache_ttl_s=60,
        reload_token="t0ken",
        publish_root=tmp_path_factory.getbasetemp(),
    )


def _run_cli(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"python -m training {' '.join(args)} failed:\n{result.stderr}")
