"""The rows pass 2 will encode, kept on disk by pass 1 when they are a small share of the
source: under negative down-sampling pass 2 encodes every positive and a share w of the
negatives, and reading, checking and splitting the rows it then drops was most of its time
(17 s of 20 over a 10M-row Parquet file at w = 0.1). Pass 1 reads every row anyway (the
vocabularies count the dropped negatives too); it appends the kept ones, checked and with
their split, to an Arrow IPC file (LZ4), and pass 2 reads that file instead of the source.

Without sampling every row is kept, and the file would be a second copy of the data, so
pass 2 reads the source again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from training.data import Batch

_SPLITS = "splits"
_LABELS = "labels"
_POSITIONS = "positions"
_WEIGHTS = "weights"
_ORACLE = "oracle"
_TIME = "time"
_CATEGORICAL = "categorical/"
_NUMERIC = "numeric/"
_KEPT = "kept/"


class KeptRows:
    """An Arrow IPC file of checked rows and their splits, written batch by batch, read back
    as the same :class:`Batch` objects in the same order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._schema: pa.Schema | None = None
        self.rows = 0

    def add(self, batch: Batch, splits: np.ndarray) -> None:
        """Append ``batch``'s rows with their ``splits`` (the caller chose the rows)."""
        if len(batch) == 0:
            return
        record = _to_record(batch, splits)
        if self._writer is None:
            self._schema = record.schema
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self._writer = pa.ipc.new_file(str(self.path), self._schema, options=options)
        elif not record.schema.equals(self._schema):
            # a column Arrow typed differently in this batch (a CSV column all null, say)
            assert self._schema is not None
            record = record.cast(self._schema)
        self._writer.write_batch(record)
        self.rows += len(batch)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def batches(self) -> Iterator[tuple[Batch, np.ndarray]]:
        """The rows written, batch by batch, with their splits (nothing if none was)."""
        self.close()
        if not self.path.exists():
            return
        with pa.memory_map(str(self.path)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield _from_record(reader.get_batch(i))

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _to_record(batch: Batch, splits: np.ndarray) -> pa.RecordBatch:
    columns: dict[str, pa.Array] = {
        _SPLITS: pa.array(splits.astype(np.int8)),
        _LABELS: pa.array(batch.labels),
        _POSITIONS: pa.array(batch.positions),
    }
    if batch.weights is not None:
        columns[_WEIGHTS] = pa.array(batch.weights)
    if batch.oracle is not None:
        columns[_ORACLE] = pa.array(batch.oracle)
    if batch.time is not None:
        columns[_TIME] = batch.time
    columns |= {_CATEGORICAL + name: column for name, column in batch.categorical.items()}
    columns |= {_NUMERIC + name: pa.array(values) for name, values in batch.numeric.items()}
    columns |= {_KEPT + name: column for name, column in batch.kept.items()}
    return pa.record_batch(columns)


def _from_record(record: pa.RecordBatch) -> tuple[Batch, np.ndarray]:
    def numbers(name: str) -> np.ndarray:
        return record.column(name).to_numpy(zero_copy_only=False)

    def optional(name: str) -> np.ndarray | None:
        return numbers(name) if name in record.schema.names else None

    def group(prefix: str) -> dict[str, pa.Array]:
        return {
            name[len(prefix) :]: record.column(name)
            for name in record.schema.names
            if name.startswith(prefix)
        }

    batch = Batch(
        categorical=group(_CATEGORICAL),
        numeric={
            name: column.to_numpy(zero_copy_only=False) for name, column in group(_NUMERIC).items()
        },
        labels=numbers(_LABELS),
        weights=optional(_WEIGHTS),
        positions=numbers(_POSITIONS),
        oracle=optional(_ORACLE),
        time=record.column(_TIME) if _TIME in record.schema.names else None,
        kept=group(_KEPT),
    )
    return batch, numbers(_SPLITS)
