"""Torch state files: read back as written, described (size, sha256) as they are written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from app.repository.manifest import sha256_file
from training.state_file import load_state, save_state


def test_state_is_read_back_as_written_with_its_size_and_hash(tmp_path: Path) -> None:
    state = {
        "table": torch.randn(300_001, 9)[:, :-1],  # non-contiguous: saved as its storage
        "bias": torch.tensor([0.5]),
        "steps": [torch.arange(7), 3],
    }
    path = tmp_path / "state.pt"
    written = save_state(state, path)
    assert written.bytes == path.stat().st_size
    assert written.sha256 == sha256_file(path)
    loaded = load_state(path)
    assert torch.equal(loaded["table"], state["table"])
    assert torch.equal(loaded["bias"], state["bias"])
    assert torch.equal(loaded["steps"][0], state["steps"][0])
    assert loaded["steps"][1] == 3


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_state_that_cannot_be_written_raises_and_leaves_no_open_file(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Exception, match="pickle"):
        save_state({"table": torch.zeros(3), "code": lambda: None}, tmp_path / "state.pt")
    assert len(os.listdir("/proc/self/fd")) == before
