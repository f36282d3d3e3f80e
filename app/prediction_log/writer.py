"""The prediction log's writer process: frames of records in, whole Parquet files out.

```
worker ─► stdin: <u32 length><pickled frame> … ─► Arrow ─► row groups of 16,384 ─► the
          open file, hidden (.name.open) ─► rolled by rows, bytes or age: renamed, whole
       ◄─ stdout: "ack <rows> <dropped>" per frame, "published <rows>" or "lost <rows>" per file
```

Each serving worker starts one (``python -m app.prediction_log.writer``, see
app/prediction_log/log.py), so turning a request's Python values into Arrow and Parquet
runs on a core of its own, never on the interpreter lock that the worker's event loop needs.
Each model's records go to a folder of their own (``<log>/<model>/``). A reader
(``ctrserve join``, ``drift``, pyarrow, DuckDB) lists ``*.parquet`` and never sees a
file being written: the open file is hidden and renamed only once its footer is written. When
its worker goes away (even by SIGKILL) the writer reads the end of its input, publishes what it
holds and exits; SIGINT and SIGTERM, which a terminal or a pod's shutdown send to the worker,
are left to the worker, whose own close ends the input. A URI (``s3://bucket/log``, anything
``pyarrow.fs`` opens) is written the same way into a local spool and copied up whole when a
file closes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from numpy.typing import NDArray

from app.request import key_token

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
ROW_GROUP_ROWS = 16_384  # rows of one Parquet row group (fewer in the last of a file)
FRAME_HEADER = struct.Struct("<I")  # a frame's length, before its pickled records


class PredictionLogError(ValueError):
    """The prediction log cannot be written where it is configured (refused at start-up)."""


def open_target(target: str) -> tuple[pafs.FileSystem, str, bool]:
    """The filesystem and directory of ``target``, created and checked writable, and whether
    it is remote (written through a local spool).

    Raises:
        PredictionLogError: it cannot be opened, created or written.
    """
    try:
        if "://" in target:
            filesystem, root = pafs.FileSystem.from_uri(target)
        else:
            filesystem, root = pafs.LocalFileSystem(), os.path.abspath(target)
        filesystem.create_dir(root, recursive=True)
    except (OSError, pa.ArrowException) as exc:
        raise PredictionLogError(f"prediction log {target!r}: {exc}") from None
    if not isinstance(filesystem, pafs.LocalFileSystem):
        return filesystem, root.rstrip("/"), True
    if not os.access(root, os.W_OK | os.X_OK):
        raise PredictionLogError(f"prediction log {target!r}: the directory is not writable")
    return filesystem, root, False


def as_list(values: Sequence[object] | NDArray[Any]) -> list[object]:
    """A column of a request as Python values (bytes tensors as text)."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "S":
            return [v.decode("utf-8", "replace") for v in values.tolist()]
        return values.tolist()  # type: ignore[no-any-return]
    return values if isinstance(values, list) else list(values)


# -- a frame's records as Arrow ---------------------------------------------------------------
def to_batch(frame: Mapping[str, Any]) -> pa.RecordBatch:
    """The records of one frame (built by ``prediction_log._Rows``): the log's columns,
    then every field of the model. A frame's segments, in arrival order, are
    ``("rows", [(served_at, request_id, model, version, score, cached, shadow_version,
    shadow_score, values), ...])`` for consecutive single rows, and ``("batch", served_at,
    request_id, model, version, scores, cached, logged rows or None, (shadow version, shadow
    scores) or None, columns)`` for one batch."""
    categorical, numeric = frame["fields"]
    log: dict[str, list[Any]] = {name: [] for name in LOG_COLUMNS}
    fields: dict[str, list[object]] = {name: [] for name in (*categorical, *numeric)}
    for segment in frame["segments"]:
        if segment[0] == "rows":
            _add_rows(segment[1], log, fields)
        else:
            _add_batch(segment[1:], log, fields)
    served_at = (np.asarray(log["served_at"], dtype=np.float64) * 1e6).astype("datetime64[us]")
    arrays: dict[str, pa.Array] = {
        "request_id": pa.array(log["request_id"], pa.string()),
        "row": pa.array(log["row"], pa.int32()),
        "served_at": pa.array(served_at, pa.timestamp("us", tz="UTC")),
        "model": pa.array(log["model"], pa.string()),
        "version": pa.array(log["version"], pa.string()),
        "score": pa.array(log["score"], pa.float32()),
        "cached": pa.array(log["cached"], pa.bool_()),
        "shadow_version": pa.array(log["shadow_version"], pa.string()),
        "shadow_score": pa.array(log["shadow_score"], pa.float32()),
    }
    for name in categorical:
        arrays[name] = _categorical(fields[name])
    for name in numeric:
        arrays[name] = _numeric(fields[name])
    return pa.RecordBatch.from_pydict(arrays)


def _add_rows(
    rows: list[tuple[Any, ...]], log: dict[str, list[Any]], fields: dict[str, list[object]]
) -> None:
    served_at, request_id, model, version, score, cached, shadow_version, shadow_score, values = (
        zip(*rows, strict=True)
    )
    log["served_at"] += served_at
    log["request_id"] += request_id
    log["row"] += [0] * len(rows)
    log["model"] += model
    log["version"] += version
    log["score"] += score
    log["cached"] += cached
    log["shadow_version"] += shadow_version
    log["shadow_score"] += shadow_score
    for name, column in fields.items():
        column += [row.get(name) for row in values]


def _add_batch(
    batch: tuple[Any, ...], log: dict[str, list[Any]], fields: dict[str, list[object]]
) -> None:
    served_at, request_id, model, version, scores, cached, chosen, shadow, columns = batch
    if chosen is not None:
        scores, cached = scores[chosen], cached[chosen]
    count = len(scores)
    log["served_at"] += [served_at] * count
    log["request_id"] += [request_id] * count
    log["row"] += range(count) if chosen is None else chosen.tolist()
    log["model"] += [model] * count
    log["version"] += [version] * count
    log["score"] += scores.tolist()
    log["cached"] += cached.tolist()
    if shadow is None:
        log["shadow_version"] += [None] * count
        log["shadow_score"] += [None] * count
    else:
        shadow_scores = shadow[1] if chosen is None else shadow[1][chosen]
        log["shadow_version"] += [shadow[0]] * count
        log["shadow_score"] += shadow_scores.tolist()
    for name, column in fields.items():
        given = columns.get(name)
        if given is None:
            column += [None] * count
            continue
        items = as_list(given)
        column += items if chosen is None else [items[i] for i in chosen.tolist()]


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


# -- files ----------------------------------------------------------------------------------
class LogFiles:
    """Record batches into rolling Parquet files under ``target``, one folder per model
    (``<target>/<model>/predictions-*.parquet``), each file published whole.

    Each model, and each set of its fields (a canary that adds one), fills a file of its own,
    so a join or a drift reads one model's folder, and requests of two models (or versions)
    interleaved never close one another's file at every request.

    Args:
        target: a directory, or a URI ``pyarrow.fs`` opens.
        roll_rows, roll_bytes, roll_s: a file is closed and published once it holds this
            many rows, reaches this size, or is this old, whichever comes first.
        report: told ``("published", rows)`` for each file published and ``("lost", rows)``
            for records a failed write or publish lost.
    """

    def __init__(
        self,
        target: str,
        *,
        roll_rows: int,
        roll_bytes: int,
        roll_s: float,
        report: Callable[[str, int], None],
    ) -> None:
        self.filesystem, self.root, remote = open_target(target)
        self._spool = tempfile.mkdtemp(prefix="ctrserve-log-") if remote else None
        self.roll_rows, self.roll_bytes, self.roll_s = roll_rows, roll_bytes, roll_s
        self.report = report
        self._prefix = f"{_safe(socket.gethostname())}-{os.getpid()}-"
        self._sequence = 0
        self._streams: dict[tuple[str, tuple[str, ...]], _Stream] = {}

    @property
    def rows(self) -> int:
        """Records taken and not yet published."""
        return sum(stream.rows for stream in self._streams.values())

    def add(self, model: str, batch: pa.RecordBatch) -> None:
        key = (model, tuple(batch.schema.names))
        stream = self._streams.get(key)
        if stream is None:
            folder = model_folder(model)
            remote = None if self._spool is None else f"{self.root}/{folder}"
            local = os.path.join(self._spool or self.root, folder)
            os.makedirs(local, exist_ok=True)
            if remote is not None:
                self.filesystem.create_dir(remote, recursive=True)
            stream = self._streams[key] = _Stream(self, local, remote)
        stream.add(batch)

    def wait_s(self) -> float:
        """Seconds until the first stream's unpublished records are due by age."""
        return min((stream.wait_s() for stream in self._streams.values()), default=self.roll_s)

    def roll_if_due(self) -> None:
        for stream in self._streams.values():
            stream.roll_if_due()

    def publish(self) -> None:
        """Write what is gathered, close every open file and make it visible, whole."""
        for stream in self._streams.values():
            stream.publish()

    def file_name(self) -> str:
        """A new file's name: unique to this writer (host, pid, sequence), sorted by time."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self._sequence += 1
        return f"{FILE_PREFIX}{stamp}-{self._prefix}{self._sequence:05d}{FILE_SUFFIX}"


def model_folder(model: str) -> str:
    """The folder of the log that holds ``model``'s files."""
    return _safe(model)


def model_folders(root: Path) -> list[Path]:
    """The model folders of a local log directory that hold published files."""
    return sorted(
        entry
        for entry in root.iterdir()
        if entry.is_dir() and next(entry.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"), None) is not None
    )


class _Stream:
    """The rolling files of one model's records of one set of fields: the row group being
    gathered and the open file."""

    def __init__(self, owner: LogFiles, local: str, remote: str | None) -> None:
        self._owner = owner
        self._local, self._remote = local, remote  # remote: where a spooled file is copied
        self._pending: list[pa.RecordBatch] = []  # the row group being gathered
        self._pending_rows = 0
        self._file: _OpenFile | None = None
        self._since: float | None = None  # when the unpublished records began

    @property
    def rows(self) -> int:
        return self._pending_rows + (self._file.rows if self._file is not None else 0)

    def add(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._since is None:
            self._since = time.monotonic()
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._write_pending()
        self.roll_if_due()

    def wait_s(self) -> float:
        if self._since is None:
            return self._owner.roll_s
        return max(0.01, self._owner.roll_s - (time.monotonic() - self._since))

    def roll_if_due(self) -> None:
        if self._since is None:
            return
        owner = self._owner
        size = os.path.getsize(self._file.path) if self._file is not None else 0
        if (
            self.rows >= owner.roll_rows
            or size >= owner.roll_bytes
            or time.monotonic() - self._since >= owner.roll_s
        ):
            self.publish()

    def publish(self) -> None:
        self._write_pending()
        open_file, self._file, self._since = self._file, None, None
        if open_file is None:
            return
        try:
            open_file.close()
            if self._remote is None:
                os.replace(open_file.path, os.path.join(self._local, open_file.name))
            else:
                destination = f"{self._remote}/{open_file.name}"
                with (
                    open(open_file.path, "rb") as source,
                    self._owner.filesystem.open_output_stream(destination) as sink,
                ):
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
                os.remove(open_file.path)
        except OSError:
            logger.exception("prediction log: publishing %s failed", open_file.name)
            open_file.abandon()
            self._owner.report("lost", open_file.rows)
            return
        self._owner.report("published", open_file.rows)

    def _write_pending(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending)
        self._pending, self._pending_rows = [], 0
        try:
            if self._file is None:
                self._file = self._open(table.schema)
            self._file.write(table)
        except OSError:
            logger.exception("prediction log: writing %d records failed", table.num_rows)
            lost = table.num_rows
            if self._file is not None:
                lost += self._file.rows
                self._file.abandon()
            self._file = None
            self._owner.report("lost", lost)

    def _open(self, schema: pa.Schema) -> _OpenFile:
        name = self._owner.file_name()
        return _OpenFile(schema, name, os.path.join(self._local, f".{name}{_OPEN_SUFFIX}"))


class _OpenFile:
    def __init__(self, schema: pa.Schema, name: str, path: str) -> None:
        self.name, self.path = name, path
        self.rows = 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

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


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64] or "host"


# -- the process -------------------------------------------------------------------------------
def _read_frames(source: BinaryIO, frames: queue.Queue[bytes | None]) -> None:
    """Frames from the worker, then ``None`` at the end of its input (its close, or its
    death)."""
    with contextlib.suppress(OSError):
        while (header := source.read(FRAME_HEADER.size)) and len(header) == FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack(header)
            payload = source.read(length)
            if len(payload) < length:
                break
            frames.put(payload)
    frames.put(None)


def serve(source: BinaryIO, sink: Callable[[str], None], files: LogFiles) -> None:
    """Write every frame read from ``source`` into ``files`` and tell ``sink`` what became
    of its records, until the input ends; then publish what is held."""
    frames: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_read_frames, args=(source, frames), daemon=True).start()
    while True:
        try:
            payload = frames.get(timeout=files.wait_s())
        except queue.Empty:
            files.roll_if_due()
            continue
        if payload is None:
            break
        rows, dropped = 0, 0
        try:
            frame = pickle.loads(payload)  # written by this writer's own worker
            rows = frame["rows"]
            files.add(frame["model"], to_batch(frame))
        except Exception:  # records the log cannot hold never stop the writer
            logger.exception("prediction log: a frame of records could not be converted")
            dropped = rows
        sink(f"ack {rows} {dropped}")
    files.publish()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", help="a directory, or a URI pyarrow.fs opens")
    parser.add_argument("--roll-rows", type=int, required=True)
    parser.add_argument("--roll-bytes", type=int, required=True)
    parser.add_argument("--roll-s", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when the log ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock = threading.Lock()

    def sink(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    try:
        files = LogFiles(
            args.target,
            roll_rows=args.roll_rows,
            roll_bytes=args.roll_bytes,
            roll_s=args.roll_s,
            report=lambda kind, rows: sink(f"{kind} {rows}"),
        )
    except PredictionLogError as exc:
        logger.error("%s", exc)
        return 2
    serve(sys.stdin.buffer, sink, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
