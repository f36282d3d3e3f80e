"""``ctrserve join``: the prediction log plus label events -> training rows.

```
prediction log (request_id, row, served_at, …, fields)   label events (request_id, [row], time)
                       └──────── left join on (request_id, row) ────────┘
   label = 1 when an event came within the attribution window after the row was served,
   0 otherwise (no event, or only late ones) ─► Parquet: label + the model's fields
```

``--log`` names one model's folder of the log (``<log>/<model>/``), or the log itself when it
holds one model. DuckDB does the join: it streams the Parquet log, holds the label events in
a hash table and spills to disk past its memory limit, so a day of logs fits on a small
machine. A request id logged twice (a client retrying with the same ``X-Request-ID``) keeps
its first record.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from app.prediction_log.writer import FILE_PREFIX, FILE_SUFFIX, LOG_COLUMNS
from training.data import DataError, one_model_log

LABEL_COLUMN = "label"


@dataclass(frozen=True)
class JoinSummary:
    rows: int  # training rows written (log records, duplicates left out)
    labelled: int  # rows an event reached within the window
    duplicates: int  # log records of a (request id, row) already seen
    late_events: int  # events after the window: their rows count as 0
    unmatched_events: int  # events of no logged row (not sampled, or another day's log)
    seconds: float
    out: str

    @property
    def label_share(self) -> float:
        return self.labelled / self.rows if self.rows else 0.0


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _log_files(log: Path) -> str:
    """The log's published files as a DuckDB list (open files are hidden, never read)."""
    if log.is_dir():
        files = sorted(log.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
        folder = one_model_log(log, files)  # the log's root: its one model's folder
        if folder is not None:
            log, files = folder, sorted(folder.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
        if not files:
            raise DataError(f"{log}: no prediction log files ({FILE_PREFIX}*{FILE_SUFFIX})")
    elif log.is_file():
        if log.suffix.lower() != FILE_SUFFIX:  # DuckDB would say only "no magic bytes"
            raise DataError(
                f"{log}: not a prediction log file; name the log's directory or one of its "
                f"{FILE_SUFFIX} files"
            )
        files = [log]
    else:
        raise DataError(f"{log}: no such file or directory")
    return "[" + ", ".join(_quoted(str(f)) for f in files) + "]"


def _label_relation(labels: Path) -> str:
    if not labels.is_file():
        raise DataError(f"{labels}: no such file")
    suffixes = [s.lower() for s in labels.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return f"read_parquet({_quoted(str(labels))})"
    if ".csv" in suffixes or ".tsv" in suffixes or ".txt" in suffixes:
        return f"read_csv({_quoted(str(labels))}, header = true)"
    raise DataError(f"{labels}: name a .parquet or a .csv file of label events")


def join(
    log: Path,
    labels: Path,
    out: Path,
    window_s: float,
    memory_limit: str = "512MB",
    threads: int | None = None,
) -> JoinSummary:
    """Write the training rows of ``log`` with their labels from ``labels`` to ``out``.

    ``labels`` holds one row per event: ``request_id``, ``time`` (a timestamp, ISO text or
    epoch seconds) and optionally ``row`` (the row of a batch request it is for; 0 when
    absent).
    """
    if window_s <= 0:
        raise DataError(f"--window must be positive, got {window_s} s")
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise DataError(f"--out {out}: name a .parquet file")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with tempfile.TemporaryDirectory(prefix="ctrserve-join-") as spill:
        db = duckdb.connect(
            config={
                "memory_limit": memory_limit,
                "threads": threads or os.cpu_count() or 1,
                "temp_directory": spill,
                "preserve_insertion_order": False,
            }
        )
        try:
            summary = _join(db, log, labels, partial, window_s)
        except duckdb.Error as exc:
            partial.unlink(missing_ok=True)
            raise DataError(f"join: {exc}") from None
        finally:
            db.close()
    os.replace(partial, out)
    return JoinSummary(**summary, seconds=time.perf_counter() - started, out=str(out))


def _join(
    db: duckdb.DuckDBPyConnection, log: Path, labels: Path, out: Path, window_s: float
) -> dict[str, int]:
    db.execute(
        f"CREATE VIEW log AS SELECT * FROM read_parquet({_log_files(log)}, union_by_name = true)"
    )
    db.execute(f"CREATE VIEW events_raw AS SELECT * FROM {_label_relation(labels)}")
    log_columns = [row[0] for row in db.execute("DESCRIBE log").fetchall()]
    missing = [c for c in ("request_id", "row", "served_at") if c not in log_columns]
    if missing:
        raise DataError(f"{log}: not a prediction log (no {', '.join(missing)} column)")
    fields = [c for c in log_columns if c not in LOG_COLUMNS]
    if LABEL_COLUMN in fields:
        raise DataError(f"{log}: a model field is named {LABEL_COLUMN!r}, the output's label")
    event_types = {row[0]: row[1] for row in db.execute("DESCRIBE events_raw").fetchall()}
    for needed in ("request_id", "time"):
        if needed not in event_types:
            raise DataError(f"{labels}: no {needed!r} column (columns: {', '.join(event_types)})")
    kind = event_types["time"].upper()
    if kind.startswith("TIMESTAMP"):
        event_time = "CAST(time AS TIMESTAMPTZ)"
    elif kind in ("VARCHAR", "DATE"):
        event_time = "CAST(CAST(time AS VARCHAR) AS TIMESTAMPTZ)"
    else:  # a number: seconds since the epoch
        event_time = "to_timestamp(CAST(time AS DOUBLE))"
    row = "CAST(row AS INTEGER)" if "row" in event_types else "0"
    db.execute(
        f"CREATE TEMP TABLE events AS SELECT CAST(request_id AS VARCHAR) AS request_id, "
        f"{row} AS row, {event_time} AS time FROM events_raw"
    )
    window = f"INTERVAL {float(window_s)} SECOND"
    features = ", ".join(f"l.{_identifier(f)}" for f in fields)
    db.execute(
        """
        CREATE TEMP VIEW served AS
        SELECT * FROM log
        QUALIFY row_number() OVER (PARTITION BY request_id, row ORDER BY served_at) = 1
        """
    )
    db.execute(
        f"""
        CREATE TEMP TABLE hits AS
        SELECT DISTINCT l.request_id, l.row
        FROM events e
        JOIN served l
          ON e.request_id = l.request_id AND e.row = l.row
         AND e.time >= l.served_at AND e.time <= l.served_at + {window}
        """
    )
    db.execute(
        f"""
        COPY (
            SELECT CAST(h.request_id IS NOT NULL AS TINYINT) AS {LABEL_COLUMN}, {features}
            FROM served l
            LEFT JOIN hits h ON h.request_id = l.request_id AND h.row = l.row
        ) TO {_quoted(str(out))} (FORMAT PARQUET, COMPRESSION ZSTD)
        """
    )
    rows, labelled = db.execute(
        f"SELECT count(*), coalesce(sum({LABEL_COLUMN}), 0) FROM read_parquet({_quoted(str(out))})"
    ).fetchone()  # type: ignore[misc]
    (records,) = db.execute("SELECT count(*) FROM log").fetchone()  # type: ignore[misc]
    late, unmatched = db.execute(
        f"""
        SELECT
          count(*) FILTER (WHERE l.request_id IS NOT NULL AND e.time > l.served_at + {window}),
          count(*) FILTER (WHERE l.request_id IS NULL)
        FROM events e
        LEFT JOIN served l ON e.request_id = l.request_id AND e.row = l.row
        """
    ).fetchone()  # type: ignore[misc]
    return {
        "rows": int(rows),
        "labelled": int(labelled),
        "duplicates": int(records) - int(rows),
        "late_events": int(late),
        "unmatched_events": int(unmatched),
    }
