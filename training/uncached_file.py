"""Files of gigabytes written around the page cache, hashed as they are written.

A training run writes its weights three or four times over (the best epoch's candidate,
the serving graph's tables, the checkpoint, the optimiser's state: 1.8 GB each for the
10M-row benchmark's NFFM), and reads them back rarely (a reload, a warm start, a
re-export, a worker mapping the tables it gathers). Through the page cache each gigabyte
cost ~2.5 s of system CPU on a VM whose freed memory goes back to its host (a 1.8 GB
torch.save: 4.5 s of system CPU against 0.1 s with ``O_DIRECT``), spent on the cores the
training and scoring beside it needed (docs/DAILY.md). The sha256 is taken on the way, so
a version need not read its files back to describe them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.repository.manifest import VersionFile

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc's from Python 3.12

BLOCK = 4096  # O_DIRECT's alignment of addresses, lengths and offsets on Linux filesystems
CHUNK = 32 << 20
DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere writes go through the page cache


class UncachedWriter(io.RawIOBase):
    """A new file at ``path`` written with ``O_DIRECT`` where the filesystem takes it (not
    tmpfs), else through the page cache; :attr:`written` is its size and sha256.

    Bytes gather in a page-aligned buffer and go out a whole buffer at a time; closing
    writes the last whole blocks directly and the tail (under a block) through the cache.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            self._fd = os.open(path, flags | DIRECT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not DIRECT:
                raise
            self._fd = os.open(path, flags, 0o644)
        self._buffer = mmap.mmap(-1, CHUNK)
        self._view = memoryview(self._buffer)
        self._filled = 0
        self._size = 0
        self._digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, data: Buffer) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)  # hashlib lets go of the GIL on large buffers
        done = 0
        while done < len(view):
            taken = min(CHUNK - self._filled, len(view) - done)
            self._view[self._filled : self._filled + taken] = view[done : done + taken]
            self._filled += taken
            done += taken
            if self._filled == CHUNK:
                self._write_out(self._view)
                self._filled = 0
        self._size += len(view)
        return len(view)

    def write_array(self, array: np.ndarray) -> None:
        """Write ``array``'s elements in C order; a strided view (a table without its
        last column) is copied a few rows at a time, never whole."""
        if array.flags.c_contiguous:
            self.write(array.reshape(-1).data.cast("B"))
            return
        if array.ndim < 2:
            self.write(np.ascontiguousarray(array).data.cast("B"))
            return
        per_row = max(1, array[0].nbytes)
        rows = max(1, CHUNK // per_row)
        staging = np.empty((min(rows, len(array)), *array.shape[1:]), array.dtype)
        for start in range(0, len(array), rows):
            part = staging[: min(rows, len(array) - start)]
            np.copyto(part, array[start : start + len(part)])
            self.write(part.reshape(-1).data.cast("B"))

    def pad_to(self, alignment: int) -> None:
        """Write zeros up to the next multiple of ``alignment`` bytes."""
        self.write(bytes(-self._size % alignment))

    def close(self) -> None:
        if self.closed:
            return
        try:
            whole = self._filled - self._filled % BLOCK
            self._write_out(self._view[:whole])
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~DIRECT)
            self._write_out(self._view[whole : self._filled])
        finally:
            os.close(self._fd)
            self._view.release()
            self._buffer.close()
            super().close()

    @property
    def written(self) -> VersionFile:
        """The size and sha256 of what was written."""
        return VersionFile(bytes=self._size, sha256=self._digest.hexdigest())

    def _write_out(self, view: memoryview) -> None:
        while len(view):
            view = view[os.write(self._fd, view) :]
