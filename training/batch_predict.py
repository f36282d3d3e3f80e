"""``ctrserve predict``: score a file, or a directory of files, with an exported model.

The offline scoring job: rows stream from any format the trainer reads (no label needed),
are encoded by the serving encoder and scored by onnxruntime a record batch at a time, and
go to Parquet or CSV with the chosen id columns kept beside the score. Memory depends on the
batch size, never on the number of rows; the output appears under its name only once it is
complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.model.scorer import Scorer
from app.repository.store import resolve_model_dir
from training.data import BadRowLog, ColumnRoles, DataError, DataFormat, DataSource, open_source
from training.dataset import encode_batch

SCORE_COLUMN = "score"
# Rows per onnxruntime call: a 39-field NFFM (k=16) holds rows x 741 pairs x 16 floats per
# interaction tensor, ~50 MB for 1,024 rows, and onnxruntime's arena keeps its largest call.
SCORE_ROWS = 1024


@dataclass(frozen=True)
class PredictSummary:
    rows: int
    skipped_rows: int
    seconds: float
    out: str
    version: str

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def model_source(
    scorer: Scorer, data: Path, fmt: DataFormat | None = None, keep: Sequence[str] = ()
) -> DataSource:
    """``data`` read for ``scorer``'s fields, with no label."""
    encoder = scorer.encoder
    roles = ColumnRoles(categorical=encoder.categorical_names, numeric=encoder.numeric_names)
    return open_source(data, fmt, roles, scorer.manifest.task, labelled=False, keep=keep)


def score_indices(scorer: Scorer, indices: np.ndarray) -> np.ndarray:
    """Scores of encoded rows, ``SCORE_ROWS`` per onnxruntime call."""
    parts = [
        scorer.score_indices(indices[start : start + SCORE_ROWS])
        for start in range(0, len(indices), SCORE_ROWS)
    ]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def predict_file(
    model_dir: Path,
    data: Path,
    out: Path,
    fmt: DataFormat | None = None,
    keep: Sequence[str] = (),
    bad_rows: BadRowLog | None = None,
) -> PredictSummary:
    """Score ``data`` into ``out`` (``.parquet`` or ``.csv``): the ``keep`` columns as they
    were, then ``score``."""
    scorer = Scorer.load(resolve_model_dir(model_dir))
    if SCORE_COLUMN in keep:
        raise DataError(f"--keep {SCORE_COLUMN!r}: the output's own column has that name")
    kind = _output_kind(out)
    source = model_source(scorer, data, fmt, keep)
    log = bad_rows or BadRowLog()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    started = time.perf_counter()
    rows = 0
    writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
    try:
        for batch in source.batches(log):
            scores = score_indices(scorer, encode_batch(scorer.encoder, batch))
            table = pa.table(
                {**{name: batch.kept[name] for name in keep}, SCORE_COLUMN: pa.array(scores)}
            )
            if writer is None:
                writer = (
                    pq.ParquetWriter(partial, table.schema, compression="zstd")
                    if kind == "parquet"
                    else pacsv.CSVWriter(partial, table.schema)
                )
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:
            raise DataError(f"{data}: no rows to score")
        writer.close()
        os.replace(partial, out)
    except BaseException:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
        raise
    return PredictSummary(
        rows, len(log.rows), time.perf_counter() - started, str(out), scorer.manifest.version
    )


def _output_kind(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise DataError(f"--out {out}: name a .parquet or a .csv file")
