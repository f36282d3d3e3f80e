"""The prediction log: one Parquet record per scored row, written off the request path.

```
PredictionService.score ─► sampled? ─► PredictionLog.add (past the bound: dropped, counted):
                                       the request's values appended to the row group being
                                       gathered (a few list appends)
       full (16,384 rows) or 1 s old ─► handed to the writer thread ─► Arrow ─► the open
                                       file, hidden ─► rolled by rows, bytes or age: renamed,
                                       whole
```

A request appends what it already holds (its decoded row, or its batch's columns) to plain
Python lists on the event loop; the writer thread turns a whole row group into Arrow and
Parquet at once, pausing between columns, so it never holds the GIL the loop needs for long.
A reader (``ctrserve join``, ``drift``, pyarrow, DuckDB) lists ``*.parquet`` and never sees
a file being written: the open file is hidden and is renamed only once its footer is
written, so a worker killed with SIGKILL loses at most the records of its open file (and of
the row group being gathered). Each worker writes its own files (the host name and the pid
are in the name), so every worker of every replica can share one directory. A URI
(``s3://bucket/log``, anything ``pyarrow.fs`` opens) is written the same way into a local
spool and copied up whole when the file closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from numpy.typing import NDArray

from app.features.encoder import FeatureEncoder
from app.scoring.request import CURRENT_REQUEST, StickyKey, in_share, key_token, new_request_id

logger = logging.getLogger(__name__)

# The log's own columns, before the model's fields (which therefore may not use these names).
LOG_COLUMNS = (
    "request_id",
    "row",
    "served_at",
    "model",
    "version",
    "score",
    "cached",
    "shadow_version",  # the version that scored the request again off its path, if any
    "shadow_score",
)
FILE_PREFIX = "predictions-"
FILE_SUFFIX = ".parquet"
_OPEN_SUFFIX = ".open"
# Rows gathered into one Parquet row group, or fewer once the group is FLUSH_S old.
ROW_GROUP_ROWS = 16_384
FLUSH_S = 1.0
# The writer pauses after each column it converts: its Python work holds the GIL, which the
# event loop would otherwise wait for up to the interpreter's switch interval (5 ms). A
# pause must be a real sleep: a thread that releases the GIL and asks for it at once mostly
# gets it back first.
_PAUSE_S = 0.0002


# A request's values by field: for a batch, a function giving each field's values (Python
# lists or numpy arrays), called only when the request is logged; for one row, the row.
Columns = Callable[[FeatureEncoder], Mapping[str, Sequence[object] | NDArray[Any]]]
Values = Columns | Mapping[str, object]


class PredictionLogError(ValueError):
    """The prediction log cannot be written where it is configured (refused at start-up)."""


class _Entry(NamedTuple):
    served_at: float
    request_id: str
    model: str
    version: str
    scores: NDArray[np.float32]
    cached: NDArray[np.bool_]
    encoder: FeatureEncoder
    values: Values
    rows: NDArray[np.int64] | None  # the sampled rows, when sampling was by a feature
    shadow: tuple[str, NDArray[np.float32]] | None  # a shadow's version and scores


class PredictionLog:
    """Each worker's writer of the prediction log.

    Args:
        target: a directory, or a URI ``pyarrow.fs`` opens.
        sample: the share of requests (or, keyed by a feature, of rows) logged.
        key: sticky sampling key; unset, each request is drawn on its own.
        max_queued_rows: rows waiting for the writer at most; past it records are dropped
            and counted, never waited for.
        roll_rows, roll_bytes, roll_s: a file is closed and published once it holds this
            many rows, reaches this size, or is this old, whichever comes first.
        on_written, on_dropped: told counts of rows written and dropped (metrics).
    """

    def __init__(
        self,
        target: str,
        *,
        sample: float = 1.0,
        key: StickyKey | None = None,
        max_queued_rows: int = 100_000,
        roll_rows: int = 1_000_000,
        roll_bytes: int = 128 << 20,
        roll_s: float = 300.0,
        on_written: Callable[[int, int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if not 0.0 < sample <= 1.0:
            raise PredictionLogError(f"sample must be in (0, 1], got {sample}")
        self.sample = sample
        self.key = key
        self.max_queued_rows = max_queued_rows
        self.roll_rows, self.roll_bytes, self.roll_s = roll_rows, roll_bytes, roll_s
        self._on_written = on_written or (lambda rows, files: None)
        self._on_dropped = on_dropped or (lambda rows: None)
        self.filesystem, self.root, self._spool = _open_target(target)
        self._prefix = f"{FILE_PREFIX}{{}}-{_safe(socket.gethostname())}-{os.getpid()}-"
        self._sequence = 0
        # The loop gathers a row group and hands it over; the writer pops whole groups (a
        # deque does both safely across threads). Each count has one writer: rows added by
        # the loop, rows written (or dropped) by the writer.
        self._gathering: _Rows | None = None
        self._groups: deque[_Rows] = deque()
        self._added_rows = 0
        self._done_rows = 0
        self.dropped_rows = 0
        self._drop_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._file: _OpenFile | None = None
        self._thread = threading.Thread(target=self._run, name="ctr-prediction-log", daemon=True)
        self._thread.start()

    # -- the request path ----------------------------------------------------------------
    def rows_to_log(
        self, encoder: FeatureEncoder, values: Values
    ) -> tuple[NDArray[np.int64] | bool, Values]:
        """Which rows of a request are logged: all (``True``), none (``False``), or these
        (sampling keyed by a feature, decided row by row); and the values to log, a batch's
        columns made once when the key needed them."""
        if self.sample >= 1.0:
            return True, values
        key = self.key
        if key is None:
            return bool(np.random.random() < self.sample), values
        if key.source == "header":
            context = CURRENT_REQUEST.get()
            given = None if context is None else context.header(key.name)
            if given is None:
                return bool(np.random.random() < self.sample), values
            return in_share(given, self.sample), values
        if isinstance(values, Mapping):
            column: Sequence[object] | NDArray[Any] | None = [values.get(key.name)]
        else:
            columns = values(encoder)
            values, column = (lambda _: columns), columns.get(key.name)
        if column is None:
            return bool(np.random.random() < self.sample), values
        tokens = [key_token(value) or "" for value in _as_list(column)]
        return np.flatnonzero([in_share(token, self.sample) for token in tokens]), values

    def add(
        self,
        model: str,
        version: str,
        scores: NDArray[np.float32],
        cached: NDArray[np.bool_],
        encoder: FeatureEncoder,
        values: Values,
        rows: NDArray[np.int64] | None = None,
        shadow: tuple[str, NDArray[np.float32]] | None = None,
    ) -> None:
        """Gather a request's records, on the event loop's thread (never blocks: past the
        bound they are dropped and counted); ``shadow``: the version that scored the
        request again, and its scores."""
        count = len(scores) if rows is None else len(rows)
        if count == 0:
            return
        if self._closing or self.queued_rows + count > self.max_queued_rows:
            self._drop(count)
            return
        context = CURRENT_REQUEST.get()
        request_id = context.request_id if context is not None else new_request_id()
        entry = _Entry(
            time.time(), request_id, model, version, scores, cached, encoder, values, rows, shadow
        )
        group = self._gathering
        try:
            if group is None or group.fields != (encoder.categorical_names, encoder.numeric_names):
                self._hand_over(group)  # a model version of other fields: a new row group
                group = self._gathering = self._start_group(encoder)
            group.add(entry)
        except Exception:  # a value the log cannot hold never fails the request
            logger.exception("prediction log: records of request %s dropped", request_id)
            self._drop(count)
            return
        self._added_rows += count
        if group.rows >= ROW_GROUP_ROWS:
            self._hand_over(group)

    @property
    def queued_rows(self) -> int:
        return self._added_rows - self._done_rows

    def close(self, timeout: float = 30.0) -> None:
        """Write what was gathered, close and publish the open file, stop the writer."""
        self._hand_over(self._gathering)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _start_group(self, encoder: FeatureEncoder) -> _Rows:
        group = _Rows(encoder)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return group  # called outside a loop (scripts): handed over when full or closed
        loop.call_later(FLUSH_S, self._hand_over, group)
        return group

    def _hand_over(self, group: _Rows | None) -> None:
        """Give a gathered row group to the writer (on the loop's thread)."""
        if group is None or group is not self._gathering:
            return
        self._gathering = None
        self._groups.append(group)
        self._wake.set()

    # -- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            closing = self._closing  # read first: whatever was handed over before it is taken
            if not closing and not self._groups:
                self._wake.wait(self._wait_s())
                self._wake.clear()
                closing = self._closing
            while self._groups:
                self._write(self._groups.popleft())
            if self._file is not None and (closing or self._file.due(self, time.monotonic())):
                self._publish()
            if closing:
                return

    def _wait_s(self) -> float:
        if self._file is None:
            return self.roll_s
        return max(0.01, self.roll_s - (time.monotonic() - self._file.opened))

    def _write(self, group: _Rows) -> None:
        try:
            batch = group.batch()
        except Exception:
            logger.exception("prediction log: %d records could not be converted", group.rows)
            self._drop(group.rows)
            self._done_rows += group.rows
            return
        if self._file is not None and batch.schema != self._file.schema:
            self._publish()
        try:
            if self._file is None:
                self._file = self._open(batch.schema)
            self._file.write(pa.Table.from_batches([batch]))
        except OSError:
            logger.exception("prediction log: writing %d records failed", batch.num_rows)
            self._drop(batch.num_rows + (self._file.rows if self._file is not None else 0))
            if self._file is not None:
                self._file.abandon()
            self._file = None
        self._done_rows += group.rows

    def _open(self, schema: pa.Schema) -> _OpenFile:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self._sequence += 1
        name = f"{self._prefix.format(stamp)}{self._sequence:05d}{FILE_SUFFIX}"
        directory = self._spool or self.root
        return _OpenFile(schema, name, os.path.join(directory, f".{name}{_OPEN_SUFFIX}"))

    def _publish(self) -> None:
        """Close the open file and make it visible under its name, whole."""
        open_file, self._file = self._file, None
        if open_file is None:
            return
        try:
            open_file.close()
            if self._spool is None:
                os.replace(open_file.path, os.path.join(self.root, open_file.name))
            else:
                destination = f"{self.root}/{open_file.name}"
                with (
                    open(open_file.path, "rb") as source,
                    self.filesystem.open_output_stream(destination) as sink,
                ):
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
                os.remove(open_file.path)
        except OSError:
            logger.exception("prediction log: publishing %s failed", open_file.name)
            self._drop(open_file.rows)
            open_file.abandon()
            return
        self._on_written(open_file.rows, 1)

    def _drop(self, rows: int) -> None:
        with self._drop_lock:  # the loop and the writer both drop
            self.dropped_rows += rows
        self._on_dropped(rows)


class _OpenFile:
    def __init__(self, schema: pa.Schema, name: str, path: str) -> None:
        self.schema, self.name, self.path = schema, name, path
        self.opened = time.monotonic()
        self.rows = 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def due(self, log: PredictionLog, now: float) -> bool:
        return (
            self.rows >= log.roll_rows
            or now - self.opened >= log.roll_s
            or os.path.getsize(self.path) >= log.roll_bytes
        )

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=len(table))
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()

    def abandon(self) -> None:
        with contextlib.suppress(OSError, pa.ArrowException):
            self._writer.close()
        with contextlib.suppress(OSError):
            os.remove(self.path)


def _open_target(target: str) -> tuple[pafs.FileSystem, str, str | None]:
    """The filesystem and directory of ``target``, created and checked writable, and the
    local spool for a remote one (``None`` when local)."""
    try:
        if "://" in target:
            filesystem, root = pafs.FileSystem.from_uri(target)
        else:
            filesystem, root = pafs.LocalFileSystem(), os.path.abspath(target)
        filesystem.create_dir(root, recursive=True)
    except (OSError, pa.ArrowException) as exc:
        raise PredictionLogError(f"prediction log {target!r}: {exc}") from None
    if not isinstance(filesystem, pafs.LocalFileSystem):
        return filesystem, root.rstrip("/"), tempfile.mkdtemp(prefix="ctrserve-log-")
    if not os.access(root, os.W_OK | os.X_OK):
        raise PredictionLogError(f"prediction log {target!r}: the directory is not writable")
    return filesystem, root, None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64] or "host"


def _as_list(values: Sequence[object] | NDArray[Any]) -> list[object]:
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "S":
            return [v.decode("utf-8", "replace") for v in values.tolist()]
        return values.tolist()  # type: ignore[no-any-return]
    return values if isinstance(values, list) else list(values)


def _number(value: object) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _categorical(values: list[object]) -> pa.Array:
    """Text as the model looked it up; ids sent as numbers or booleans spelled as tokens."""
    try:
        array = pa.array(values, pa.string())  # the common case: text, in one call
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        array = pa.array([key_token(v) for v in values], pa.string())
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)


def _numeric(values: list[object]) -> pa.Array:
    try:
        return pa.array(values, pa.float64(), from_pandas=True)  # NaN is missing (null)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([_number(v) for v in values], pa.float64())


class _Rows:
    """Records gathered for one row group of one model's fields, turned into Arrow arrays
    once for all of them. Single rows are kept as they came (their mappings), batches as
    their columns, in arrival order; a single-row request costs the log a few list
    appends, not an Arrow call a column."""

    def __init__(self, encoder: FeatureEncoder) -> None:
        clash = set(LOG_COLUMNS) & set(encoder.names)
        if clash:
            raise ValueError(f"fields {sorted(clash)} have the names of the log's own columns")
        self.encoder = encoder
        self.fields = (encoder.categorical_names, encoder.numeric_names)
        self.rows = 0
        self._request_id: list[str] = []
        self._row: list[int] = []
        self._served_at: list[float] = []
        self._model: list[str] = []
        self._version: list[str] = []
        self._score: list[float] = []
        self._cached: list[bool] = []
        self._shadow_version: list[str | None] = []
        self._shadow_score: list[float | None] = []
        # consecutive single rows, or one batch's columns, in arrival order
        self._segments: list[list[Mapping[str, object]] | dict[str, list[object]]] = []

    def add(self, entry: _Entry) -> None:
        chosen = entry.rows
        scores, cached = entry.scores, entry.cached
        if chosen is not None:
            scores, cached = scores[chosen], cached[chosen]
        count = len(scores)
        if isinstance(entry.values, Mapping):
            if count:
                last = self._segments[-1] if self._segments else None
                if isinstance(last, list):
                    last.append(entry.values)
                else:
                    self._segments.append([entry.values])
        else:
            given = entry.values(entry.encoder)
            columns: dict[str, list[object]] = {}
            for name in (*self.encoder.categorical_names, *self.encoder.numeric_names):
                column = given.get(name)
                if column is None:
                    columns[name] = [None] * count
                    continue
                items = _as_list(column)
                columns[name] = items if chosen is None else [items[i] for i in chosen.tolist()]
            self._segments.append(columns)
        self._request_id += [entry.request_id] * count
        self._served_at += [entry.served_at] * count
        self._model += [entry.model] * count
        self._version += [entry.version] * count
        self._row += range(count) if chosen is None else chosen.tolist()
        self._score += scores.tolist()
        self._cached += cached.tolist()
        if entry.shadow is None:
            self._shadow_version += [None] * count
            self._shadow_score += [None] * count
        else:
            shadow_version, shadow_scores = entry.shadow
            if chosen is not None:
                shadow_scores = shadow_scores[chosen]
            self._shadow_version += [shadow_version] * count
            self._shadow_score += shadow_scores.tolist()
        self.rows += count

    def _field(self, name: str) -> list[object]:
        values: list[object] = []
        for segment in self._segments:
            if isinstance(segment, list):
                values += [row.get(name) for row in segment]
            else:
                values += segment[name]
        return values

    def batch(self) -> pa.RecordBatch:
        """The log's columns, then every field of the model."""
        served_at = (np.asarray(self._served_at) * 1e6).astype("datetime64[us]")
        arrays: dict[str, pa.Array] = {
            "request_id": pa.array(self._request_id, pa.string()),
            "row": pa.array(self._row, pa.int32()),
            "served_at": pa.array(served_at, pa.timestamp("us", tz="UTC")),
            "model": pa.array(self._model, pa.string()),
            "version": pa.array(self._version, pa.string()),
            "score": pa.array(self._score, pa.float32()),
            "cached": pa.array(self._cached, pa.bool_()),
            "shadow_version": pa.array(self._shadow_version, pa.string()),
            "shadow_score": pa.array(self._shadow_score, pa.float32()),
        }
        for name in self.encoder.categorical_names:
            arrays[name] = _categorical(self._field(name))
            time.sleep(_PAUSE_S)
        for name in self.encoder.numeric_names:
            arrays[name] = _numeric(self._field(name))
            time.sleep(_PAUSE_S)
        return pa.RecordBatch.from_pydict(arrays)
