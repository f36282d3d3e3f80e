"""Files written around the page cache: the same bytes as a plain write, hashed as written,
on filesystems that take O_DIRECT and on those that refuse it (tmpfs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from training.uncached_file import BLOCK, CHUNK, UncachedWriter

SHM = Path("/dev/shm")


def _write_and_check(path: Path) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((CHUNK // (4 * 9) + 77, 9), dtype=np.float32)  # over a buffer
    head = b"header"
    with UncachedWriter(path) as out:
        out.write(head)
        out.pad_to(64)
        out.write_array(table[:, :-1])  # a strided view: copied a few rows at a time
        out.write_array(table[:, -1])
        out.write_array(table)
    expected = (
        head
        + bytes(64 - len(head))
        + np.ascontiguousarray(table[:, :-1]).tobytes()
        + np.ascontiguousarray(table[:, -1]).tobytes()
        + table.tobytes()
    )
    assert len(expected) % BLOCK != 0  # whole buffers, whole blocks and a tail
    assert path.read_bytes() == expected
    assert out.written.bytes == len(expected)
    assert out.written.sha256 == hashlib.sha256(expected).hexdigest()


def test_a_file_holds_what_was_written_with_its_size_and_hash(tmp_path: Path) -> None:
    _write_and_check(tmp_path / "data.bin")


@pytest.mark.skipif(not SHM.is_dir() or not os.access(SHM, os.W_OK), reason="no /dev/shm")
def test_a_filesystem_without_direct_writes_gets_the_same_file() -> None:
    path = SHM / f"ctrserve-uncached-{os.getpid()}.bin"
    try:
        _write_and_check(path)
    finally:
        path.unlink(missing_ok=True)


def test_an_empty_file_is_empty(tmp_path: Path) -> None:
    with UncachedWriter(tmp_path / "empty.bin") as out:
        pass
    assert (tmp_path / "empty.bin").read_bytes() == b""
    assert out.written.sha256 == hashlib.sha256(b"").hexdigest()
