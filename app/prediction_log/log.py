"""The prediction log: one Parquet record per scored row, written off the request path.

```
PredictionService.score ─► sampled? ─► PredictionLog.add (past the bound: dropped, counted):
                                       the request's values appended to the frame being
                                       gathered (a few list appends)
    256 rows or 0.5 s old ─► pickled (one C call) ─► sender thread ─► pipe ─► the writer
                                       process (app/prediction_log/writer.py): Arrow, Parquet,
                                       whole files ─► acks back ─► reader thread: counts
```

A request appends what it already holds (its decoded row, or its batch's columns) to plain
Python lists on the event loop; a frame of them is pickled at once and sent down a pipe to
the worker's own writer process, which turns them into Arrow and Parquet on a core of its own:
the worker's threads only wait on the pipe, so the log never takes the interpreter lock from
the event loop for longer than one frame's pickling. The writer's acks free room in the queue
(``max_queued_rows``: rows gathered, sent and not yet converted); past it records are dropped
and counted, never waited for. A worker killed with SIGKILL loses the frame it was gathering
(its writer publishes the rest); a writer that dies loses its unpublished records, counted as
dropped, and the next frame starts another. Each writer names its files by host and pid, so
every worker of every replica can share one directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from app.features.encoder import FeatureEncoder
from app.prediction_log.writer import (
    FRAME_HEADER,
    LOG_COLUMNS,
    PredictionLogError,
    as_list,
    open_target,
)
from app.request import CURRENT_REQUEST, StickyKey, in_share, key_token, new_request_id

logger = logging.getLogger(__name__)

# A frame: rows gathered on the loop and pickled at once (on the loop: small, so it never
# holds it for long), or fewer once it is HAND_OVER_S old; the log's cost a request at
# 100% sampling, open and closed loop: docs/FEEDBACK.md.
FRAME_ROWS = 256
HAND_OVER_S = 0.5
_RESTART_S = 1.0  # a writer that died is replaced at most this often


# A request's values by field: for a batch, a function giving each field's values (Python
# lists or numpy arrays), called only when the request is logged; for one row, the row.
Columns = Callable[[FeatureEncoder], Mapping[str, Sequence[object] | NDArray[Any]]]
Values = Columns | Mapping[str, object]


_GroupKey = tuple[str, tuple[str, ...], tuple[str, ...]]


def _group_key(model: str, encoder: FeatureEncoder) -> _GroupKey:
    """What a frame gathers records of: one model and its fields (a request finds its
    frame by it, and a frame hands itself over under it)."""
    return (model, encoder.categorical_names, encoder.numeric_names)


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
    """Each worker's side of the prediction log: sampling, gathering, and its writer process.

    Args:
        target: a directory, or a URI ``pyarrow.fs`` opens (checked here, at start-up).
        sample: the share of requests (or, keyed by a feature, of rows) logged.
        key: sticky sampling key; unset, each request is drawn on its own.
        max_queued_rows: rows gathered and not yet taken by the writer at most; past it
            records are dropped and counted, never waited for.
        roll_rows, roll_bytes, roll_s: a file is closed and published once it holds this
            many rows, reaches this size, or is this old, whichever comes first.
        on_written, on_dropped: told counts of rows written (and files) and dropped (metrics),
            from the log's own threads.
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
        open_target(target)  # a log that cannot be written is refused now, not per record
        self.sample = sample
        self.key = key
        self.max_queued_rows = max_queued_rows
        self._command = [
            sys.executable, "-m", "app.prediction_log.writer", target,
            "--roll-rows", str(roll_rows), "--roll-bytes", str(roll_bytes),
            "--roll-s", str(roll_s),
        ]  # fmt: skip
        self._on_written = on_written or (lambda rows, files: None)
        self._on_dropped = on_dropped or (lambda rows: None)
        # The loop gathers a frame and hands it over pickled; the sender pops whole frames
        # (a deque does both safely across threads). Rows added are counted by the loop, rows
        # done with (written or dropped) by the log's threads, under the lock.
        self._gathering: dict[_GroupKey, _Rows] = {}  # by model and its fields
        self._frames: deque[tuple[int, bytes]] = deque()
        self._added_rows = 0
        self._done_rows = 0
        self.dropped_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        try:
            self._writer: _Writer | None = _Writer(self._command, self)
        except OSError as exc:
            raise PredictionLogError(f"prediction log: its writer cannot start: {exc}") from None
        self._started = time.monotonic()
        self._sender = threading.Thread(target=self._send, name="ctr-prediction-log", daemon=True)
        self._sender.start()

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
        tokens = [key_token(value) or "" for value in as_list(column)]
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
        key = _group_key(model, encoder)
        try:
            group = self._gathering.get(key)
            if group is None:  # each model (and each set of its fields) has frames of its own
                group = self._gathering[key] = self._start_group(model, encoder)
            group.add(entry)
        except Exception:  # a value the log cannot hold never fails the request
            logger.exception("prediction log: records of request %s dropped", request_id)
            self._drop(count)
            return
        self._added_rows += count
        if group.rows >= FRAME_ROWS:
            self._hand_over(group)

    @property
    def queued_rows(self) -> int:
        return self._added_rows - self._done_rows

    def close(self, timeout: float = 30.0) -> None:
        """Send what was gathered, let the writer publish its open file, stop."""
        for group in list(self._gathering.values()):
            self._hand_over(group)
        self._closing = True
        self._wake.set()
        self._sender.join(timeout)

    def _start_group(self, model: str, encoder: FeatureEncoder) -> _Rows:
        group = _Rows(model, encoder)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return group  # called outside a loop (scripts): handed over when full or closed
        loop.call_later(HAND_OVER_S, self._hand_over, group)
        return group

    def _hand_over(self, group: _Rows) -> None:
        """Pickle a gathered frame and give it to the sender (on the loop's thread)."""
        if self._gathering.get(group.key) is not group:
            return  # handed over already (full, then its timer)
        del self._gathering[group.key]
        try:
            payload = pickle.dumps(group.frame(), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a value pickle cannot carry: the frame's records only
            logger.exception("prediction log: %d records could not be pickled", group.rows)
            self._done(group.rows, dropped=group.rows)
            return
        self._frames.append((group.rows, payload))
        self._wake.set()

    # -- the log's threads ---------------------------------------------------------------
    def _send(self) -> None:
        """The sender thread: frames down the pipe to the writer, started (again) on demand."""
        while True:
            closing = self._closing  # read first: whatever was handed over before it is sent
            if not closing and not self._frames:
                self._wake.wait()
                self._wake.clear()
                continue
            while self._frames:
                rows, payload = self._frames.popleft()
                writer = self._writer_alive()
                if writer is None or not writer.send(rows, payload):
                    self._done(rows, dropped=rows)
            if closing:
                if self._writer is not None:
                    self._writer.finish()
                return

    def _writer_alive(self) -> _Writer | None:
        """The writer process, started again if it died (at most once every _RESTART_S)."""
        writer = self._writer
        if writer is not None and not writer.dead:
            return writer
        time.sleep(max(0.0, self._started + _RESTART_S - time.monotonic()))
        self._started = time.monotonic()
        try:
            self._writer = _Writer(self._command, self)
        except OSError:  # frames are dropped and counted until one starts
            logger.exception("prediction log: the writer process could not be started")
            self._writer = None
        return self._writer

    def _done(self, rows: int, dropped: int = 0) -> None:
        """``rows`` left the queue (the writer took them, or they were lost), ``dropped`` of
        them lost."""
        with self._lock:
            self._done_rows += rows
        if dropped:
            self._drop(dropped)

    def _drop(self, rows: int) -> None:
        with self._lock:  # the loop and the log's threads both drop
            self.dropped_rows += rows
        self._on_dropped(rows)


class _Writer:
    """One writer process, what it was sent and has not yet answered for, and the thread
    that reads its answers."""

    def __init__(self, command: list[str], log: PredictionLog) -> None:
        self._log = log
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False
        )
        self._lock = threading.Lock()
        self._sent: deque[int] = deque()  # rows of each frame sent and not yet acknowledged
        self._unpublished = 0  # rows the writer took and has not yet published
        self._finishing = False
        self.dead = False
        self._reader = threading.Thread(
            target=self._read, name="ctr-prediction-log-acks", daemon=True
        )
        self._reader.start()

    def send(self, rows: int, payload: bytes) -> bool:
        """Send one frame (blocks on a full pipe, never the event loop); ``False``: the
        writer is gone and the frame was not sent."""
        with self._lock:
            if self.dead:
                return False
            self._sent.append(rows)  # before the write: its ack may come at once
        stdin: IO[bytes] = self._process.stdin  # type: ignore[assignment]
        # a writer that died (its pipe broken, or closed by its reader): the reader counts
        with contextlib.suppress(OSError, ValueError):
            stdin.write(FRAME_HEADER.pack(len(payload)))
            stdin.write(payload)
            stdin.flush()
        return True

    def finish(self, timeout: float = 30.0) -> None:
        """End the writer's input: it publishes what it holds and exits."""
        self._finishing = True
        with contextlib.suppress(OSError, ValueError):
            self._process.stdin.close()  # type: ignore[union-attr]
        self._reader.join(timeout)

    def _read(self) -> None:
        """The reader thread: the writer's acks, until it exits; then what it lost."""
        stdout: IO[bytes] = self._process.stdout  # type: ignore[assignment]
        for line in stdout:
            kind, *numbers = line.split()
            counts = [int(n) for n in numbers]
            if kind == b"ack":
                rows, dropped = counts
                with self._lock:
                    self._sent.popleft()
                    self._unpublished += rows - dropped
                self._log._done(rows, dropped)
            elif kind in (b"published", b"lost"):
                with self._lock:
                    self._unpublished -= counts[0]
                if kind == b"published":
                    self._log._on_written(counts[0], 1)
                else:
                    self._log._drop(counts[0])
        code = self._process.wait()
        for pipe in (stdout, self._process.stdin):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]
        with self._lock:
            self.dead = True
            sent, lost = sum(self._sent), self._unpublished
            self._sent.clear()
        if sent or lost:
            self._log._done(sent, dropped=sent + lost)
        if not self._finishing or code != 0:
            logger.error(
                "prediction log: the writer process exited (%s), %d records lost", code, sent + lost
            )


class _Rows:
    """Records gathered for one frame of one model and its fields, in arrival order: a single row
    as one tuple of what the request already holds (its values as they came), a batch as its
    columns and score arrays. A request costs the log an append; the writer process turns
    them into columns."""

    def __init__(self, model: str, encoder: FeatureEncoder) -> None:
        clash = set(LOG_COLUMNS) & set(encoder.names)
        if clash:
            raise ValueError(f"fields {sorted(clash)} have the names of the log's own columns")
        self.model = model
        self.fields = (encoder.categorical_names, encoder.numeric_names)
        self.key = _group_key(model, encoder)
        self._names = (*encoder.categorical_names, *encoder.numeric_names)
        self.rows = 0
        self._segments: list[tuple[Any, ...]] = []  # see log_writer.to_batch
        self._singles: list[tuple[Any, ...]] | None = None  # the open run of single rows

    def add(self, entry: _Entry) -> None:
        values, chosen, shadow = entry.values, entry.rows, entry.shadow
        if isinstance(values, Mapping) and len(entry.scores) == 1:
            if chosen is not None and not len(chosen):
                return
            if self._singles is None:
                self._singles = []
                self._segments.append(("rows", self._singles))
            self._singles.append((
                entry.served_at, entry.request_id, entry.model, entry.version,
                float(entry.scores[0]), bool(entry.cached[0]),
                None if shadow is None else shadow[0],
                None if shadow is None else float(shadow[1][0]),
                values,
            ))  # fmt: skip
            self.rows += 1
            return
        self._singles = None
        if isinstance(values, Mapping):  # one row's values given for a batch: not expected
            raise ValueError("a batch's values must be its columns")
        given = values(entry.encoder)
        columns = {name: given[name] for name in self._names if given.get(name) is not None}
        self._segments.append(
            ("batch", entry.served_at, entry.request_id, entry.model, entry.version,
             entry.scores, entry.cached, chosen, shadow, columns)
        )  # fmt: skip
        self.rows += len(entry.scores) if chosen is None else len(chosen)

    def frame(self) -> dict[str, Any]:
        """What the writer process needs, as plain values (writer.py: ``to_batch``)."""
        return {
            "model": self.model,
            "fields": self.fields,
            "rows": self.rows,
            "segments": self._segments,
        }
