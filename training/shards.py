"""Encoded rows on disk: one ``.npy`` file per split and column, written by appending and
read back by row range.

Files are read with plain ``read`` calls, not memory-mapped: mapped pages count in the
trainer's resident memory, so a mapped 10M-row shard would make memory grow with the rows
it has read. Read this way, they live in the OS page cache, which the kernel reclaims.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Rows a shuffled block holds, and blocks a shuffle buffer mixes: 16 random blocks of 16k
# rows, about 2.5M index values (10 MB at int32 for 40 fields).
BLOCK_ROWS = 16_384
BUFFER_BLOCKS = 16


def index_dtype(largest_index: int) -> np.dtype:
    """The smallest signed integer type that holds every index (torch reads signed ints)."""
    for dtype in (np.int8, np.int16, np.int32):
        if largest_index <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


class ColumnWriter:
    """Append rows to a ``.npy`` file whose final shape is known in advance."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.written = 0
        self.handle: io.BufferedWriter = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_2_0(self.handle, {**header, "shape": shape})

    def append(self, rows: np.ndarray) -> None:
        if self.written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: more rows than the {self.shape[0]} counted")
        self.handle.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.written += len(rows)

    def close(self) -> None:
        self.handle.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.written} rows written, {self.shape[0]} due")


class Column:
    """One ``.npy`` file, read by row range without mapping it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array is not a shard")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        self.row_bytes = self.dtype.itemsize * self.row_items

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = len(self) if stop is None else min(stop, len(self))
        count = max(stop - start, 0)
        with self.path.open("rb") as handle:
            handle.seek(self.offset + start * self.row_bytes)
            data = np.fromfile(handle, dtype=self.dtype, count=count * self.row_items)
        return data.reshape((count, *self.shape[1:]))


@dataclass(frozen=True)
class Arrays:
    """Rows in memory: indices ``(N, F)``, labels, and weights/oracle when the data has them."""

    indices: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    oracle: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray | slice) -> Arrays:
        return Arrays(
            self.indices[rows],
            self.labels[rows],
            None if self.weights is None else self.weights[rows],
            None if self.oracle is None else self.oracle[rows],
        )


@dataclass(frozen=True)
class Split:
    """One split's encoded rows on disk."""

    name: str
    indices: Column
    labels: Column
    weights: Column | None = None
    oracle: Column | None = None

    @classmethod
    def open(cls, directory: Path, name: str) -> Split:
        def column(kind: str) -> Column | None:
            path = directory / f"{name}.{kind}.npy"
            return Column(path) if path.exists() else None

        indices, labels = column("indices"), column("labels")
        if indices is None or labels is None:
            raise FileNotFoundError(f"{directory}: the {name} split is incomplete")
        return cls(name, indices, labels, column("weights"), column("oracle"))

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, start: int = 0, stop: int | None = None) -> Arrays:
        return Arrays(
            self.indices.read(start, stop),
            self.labels.read(start, stop),
            None if self.weights is None else self.weights.read(start, stop),
            None if self.oracle is None else self.oracle.read(start, stop),
        )

    def load(self) -> Arrays:
        """Every row in memory: for small splits and for baselines that want arrays."""
        return self.read()

    def blocks(
        self, rows: int = BLOCK_ROWS * BUFFER_BLOCKS, start: int = 0, stop: int | None = None
    ) -> Iterator[Arrays]:
        """Rows ``start:stop`` in order, ``rows`` at a time (evaluation)."""
        stop = len(self) if stop is None else min(stop, len(self))
        for first in range(start, stop, rows):
            yield self.read(first, min(first + rows, stop))

    def shuffled(
        self,
        batch_size: int,
        rng: np.random.Generator,
        block_rows: int = BLOCK_ROWS,
        buffer_blocks: int = BUFFER_BLOCKS,
        blocks: np.ndarray | None = None,
    ) -> Iterator[Arrays]:
        """Seeded shuffled mini-batches in bounded memory: the blocks in a random order,
        ``buffer_blocks`` of them at a time read and their rows permuted together.

        Args:
            blocks: block numbers to read (a rank's share); all blocks by default.
        """
        chosen = np.arange(-(-len(self) // block_rows)) if blocks is None else blocks
        order = rng.permutation(chosen)
        for group in range(0, len(order), buffer_blocks):
            parts = [
                self.read(int(b) * block_rows, (int(b) + 1) * block_rows)
                for b in order[group : group + buffer_blocks]
            ]
            buffer = Arrays(
                np.concatenate([p.indices for p in parts]),
                np.concatenate([p.labels for p in parts]),
                None if self.weights is None else np.concatenate([p.weights for p in parts]),  # type: ignore[misc]
            )
            permuted = rng.permutation(len(buffer))
            for start in range(0, len(buffer), batch_size):
                yield buffer.take(permuted[start : start + batch_size])
