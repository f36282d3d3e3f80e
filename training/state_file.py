"""Torch state on disk: a model's weights or an optimiser's state, written and read fast.

A 470M-parameter NFFM's state is ~1.8 GB a file. torch's zip writer computes a CRC-32 of
every record by default, which took 7.5 s of the 9.7 s of one such save here; every file
written here is a version's (its sha256 is in spec.json and checked before it is read) or
a scratch file the same process reads back, so the CRC is left out.

Writes go around the page cache, hashed on the way (:mod:`training.uncached_file`).
Reads map the file and copy from the page cache rather than read it through the unpickler
(4.4 s to 0.2 s for the same file)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, cast

import torch
from torch.utils.serialization import config

from app.repository.manifest import VersionFile
from training.uncached_file import UncachedWriter


def save_state(state: Any, path: Path) -> VersionFile:
    """Write ``state`` (tensors in dicts and lists) to ``path`` without per-record CRCs;
    returns the file's size and sha256."""
    # torch's config modules make patch() at run time; its stubs do not know it
    with UncachedWriter(path) as out, config.patch({"save.compute_crc32": False}):  # type: ignore[attr-defined]
        torch.save(state, cast(IO[bytes], out))  # a raw binary file: all torch.save needs
    return out.written


def load_state(path: Path) -> Any:
    """The tensors at ``path``, weights only (no code runs), mapped from the file: a
    tensor's pages are read when it is first used, and writes stay in this process."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
