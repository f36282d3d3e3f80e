"""Stream click logs (CSV/TSV with a header, Criteo layout, gzip, Parquet, directories and
globs of shards) as checked record batches of bounded size.

Nothing here holds a whole file: memory depends on the batch size, never on the row count.
Every problem is a :class:`DataError` naming the file and the line (Parquet: the row) and
column; under ``bad_rows="skip"`` malformed rows are left out and every one is recorded.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.prediction_log.writer import model_folders
from training.read_ahead import read_ahead

DataFormat = Literal["csv", "tsv", "criteo", "parquet"]
Task = Literal["binary", "regression"]
BadRows = Literal["error", "skip"]

CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL)

# Columns that are never features unless named explicitly: ids and the generator's oracle.
_DEFAULT_IGNORED = ("id", "p_true", "impressions", "clicks")
_LABEL_CANDIDATES = ("label", "click", "rate")
ORACLE_COLUMN = "p_true"
PARQUET_SUFFIXES = (".parquet", ".pq")
TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
# Rows per record batch: large enough that per-batch overhead vanishes, small enough that a
# batch of 40 text columns stays a few tens of MB.
BATCH_ROWS = 65_536
_TEXT_BLOCK_BYTES = 8 << 20
# Bytes hashed at each end of a file for its fingerprint.
_FINGERPRINT_BYTES = 1 << 20


class DataError(ValueError):
    """Data cannot be used; the message names the file (and line/column)."""


@dataclass(frozen=True)
class SkippedRow:
    """A malformed row left out under ``bad_rows="skip"``: where it was and why."""

    file: str
    line: int
    reason: str


@dataclass
class BadRowLog:
    """Malformed rows: raise at the first (``error``) or record every one (``skip``)."""

    mode: BadRows = "error"
    rows: list[SkippedRow] = field(default_factory=list)

    def found(self, path: Path, line: int, reason: str) -> None:
        if self.mode == "error":
            raise DataError(f"{path}: line {line}{reason}")
        self.rows.append(SkippedRow(path.name, line, reason.lstrip(":, ")))


@dataclass(frozen=True)
class ColumnRoles:
    """Which column plays which part. Empty tuples mean "infer from the file"."""

    label: str | None = None
    weight: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Batch:
    """Checked rows of one record batch.

    ``categorical`` columns stay Arrow arrays (dictionary-encoded downstream, so no Python
    object is made per value); ``numeric`` columns are float64 with NaN for missing.
    ``positions`` number the rows across all files of the source, from 0, malformed rows
    included, so a row keeps its position (and its split) whatever else is skipped.
    """

    categorical: dict[str, pa.Array]
    numeric: dict[str, np.ndarray]
    labels: np.ndarray  # float32; NaN when the source has no label (scoring, drift)
    weights: np.ndarray | None  # float32
    positions: np.ndarray  # int64
    oracle: np.ndarray | None  # float64 p_true, when the file has it
    time: pa.Array | None  # the time-split column, when one is named
    kept: dict[str, pa.Array] = field(default_factory=dict)  # columns carried as they are

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Batch:
        """The rows at ``rows`` (positions within this batch), every column alike."""
        taken = pa.array(rows, type=pa.int64())

        def subset(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        return Batch(
            categorical={name: column.take(taken) for name, column in self.categorical.items()},
            numeric={name: values[rows] for name, values in self.numeric.items()},
            labels=self.labels[rows],
            weights=subset(self.weights),
            positions=self.positions[rows],
            oracle=subset(self.oracle),
            time=None if self.time is None else self.time.take(taken),
            kept={name: column.take(taken) for name, column in self.kept.items()},
        )


@dataclass(frozen=True)
class DataSource:
    """One or more files with one layout and the role of every column."""

    files: tuple[Path, ...]
    fmt: DataFormat
    label: str | None  # None: rows to score, not to learn from
    weight: str | None
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    task: Task = "binary"
    has_oracle: bool = False
    time_column: str | None = None
    batch_rows: int = BATCH_ROWS
    keep: tuple[str, ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.categorical + self.numeric

    @property
    def name(self) -> str:
        return self.files[0].name if len(self.files) == 1 else f"{len(self.files)} files"

    def batches(self, bad_rows: BadRowLog | None = None) -> Iterator[Batch]:
        """Checked batches of every file in order, read a batch or two ahead of the caller;
        malformed rows go to ``bad_rows`` (complete once the batches are)."""
        return read_ahead(self._read(bad_rows or BadRowLog()))

    def _read(self, log: BadRowLog) -> Iterator[Batch]:
        first = 0
        for path in self.files:
            reader = _ParquetFile(path) if self.fmt == "parquet" else _TextFile(path, self.fmt, log)
            seen = 0
            for raw, lines in reader.record_batches(self.batch_rows, self._columns()):
                batch = _check(self, path, raw, lines, first + seen, log)
                seen += raw.num_rows
                if batch is not None:
                    yield batch
            if seen == 0:
                raise DataError(f"{path}: no data rows")
            first += seen

    def _columns(self) -> list[str]:
        extra = [self.weight, ORACLE_COLUMN if self.has_oracle else None, self.time_column]
        named = [self.label, *self.feature_names, *(c for c in extra if c is not None)]
        return list(dict.fromkeys(c for c in [*named, *self.keep] if c is not None))

    def fingerprint(self) -> str:
        """What the data is: file names, sizes and the bytes at both ends of each file.

        Stored with a model so ``evaluate --split`` can refuse a file that changed, and part
        of the shard cache key. Cheap (2 MiB read per file) rather than a full hash: a log
        is appended to or rewritten, and either changes a size or an end.
        """
        digest = hashlib.blake2b(digest_size=16)
        for path in self.files:
            size = path.stat().st_size
            digest.update(json.dumps([path.name, size]).encode())
            with path.open("rb") as handle:
                digest.update(handle.read(_FINGERPRINT_BYTES))
                handle.seek(max(0, size - _FINGERPRINT_BYTES))
                digest.update(handle.read(_FINGERPRINT_BYTES))
        return digest.hexdigest()

    def modified(self) -> list[int]:
        """Modification times (ns): with the fingerprint, a rewritten file's cache is stale."""
        return [path.stat().st_mtime_ns for path in self.files]

    def estimated_rows(self) -> int:
        """Rows before reading them (to pick size defaults): exact for Parquet, the count of
        line ends (less the header) for text, without parsing."""
        if self.fmt == "parquet":
            return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)
        total = 0
        for path in self.files:
            with pa.input_stream(str(path), compression="detect") as stream:
                while chunk := stream.read(_TEXT_BLOCK_BYTES):
                    total += chunk.count(b"\n")
            total -= 0 if self.fmt == "criteo" else 1
        return max(total, 1)


def detect_format(path: Path) -> DataFormat:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in PARQUET_SUFFIXES:
        return "parquet"
    return "tsv" if last == ".tsv" else "csv"


def one_model_log(root: Path, files: Sequence[Path] = ()) -> Path | None:
    """The folder of a prediction log's one model (``<log>/<model>/``) when ``root`` holds
    model folders and no ``files`` of its own, ``None`` when it holds no model folders;
    :class:`DataError` naming the folders when there are more, or when files of the log's
    older layout (one folder for every model) lie beside them, which no reader should skip."""
    folders = model_folders(root)
    if not folders:
        return None
    names = ", ".join(folder.name for folder in folders)
    if files:
        raise DataError(
            f"{root}: files beside the prediction log's model folders ({names}), as the log's "
            "older layout left them: move each into its model's folder, or name one folder"
        )
    if len(folders) > 1:
        raise DataError(
            f"{root}: a prediction log of models {names}, one folder each: name one ({folders[0]})"
        )
    return folders[0]


def expand_files(data: Path) -> tuple[Path, ...]:
    """A file, every data file of a directory, or a glob, in sorted order."""
    text = str(data)
    if any(char in text for char in "*?["):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise DataError(f"{data}: no file matches")
        return tuple(files)
    if data.is_dir():
        known = (*PARQUET_SUFFIXES, *TEXT_SUFFIXES)
        files = sorted(
            p
            for p in data.iterdir()
            if p.is_file() and not p.name.startswith((".", "_"))
            if any(s in known for s in (x.lower() for x in p.suffixes))
        )
        folder = one_model_log(data, files)
        if folder is not None:
            return expand_files(folder)
        if not files:
            raise DataError(f"{data}: no data files in the directory")
        return tuple(files)
    if not data.is_file():
        raise DataError(f"{data}: no such file")
    return (data,)


def open_source(
    data: Path,
    fmt: DataFormat | None = None,
    roles: ColumnRoles | None = None,
    task: Task = "binary",
    time_column: str | None = None,
    batch_rows: int = BATCH_ROWS,
    labelled: bool = True,
    keep: Sequence[str] = (),
) -> DataSource:
    """Find the files, read the first one's columns and settle every column's role.

    Args:
        fmt: layout; from the first file's suffix when ``None`` (Criteo must be named).
        roles: left empty, the label is ``label``/``click``/``rate`` and the features are
            inferred from the first batch (columns with fractions are numeric, the rest
            categorical); a file with Criteo's column names gets Criteo's roles.
        time_column: a column kept out of the features for a time-based split.
        labelled: ``False`` for rows to score: no label is looked for or read, and the
            features must be named in ``roles``.
        keep: columns carried through unchanged (ids to write beside scores).
    """
    files = expand_files(data)
    for path in files:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty")
    fmt = fmt or detect_format(files[0])
    roles = roles or ColumnRoles()
    if fmt == "criteo":
        columns = list(CRITEO_COLUMNS)
    else:
        columns = _column_names(files[0], fmt)
        for path in files[1:]:
            other = _column_names(path, fmt)
            if not labelled:
                # Rows to score need only their model's columns: a prediction log's folder
                # holds the files of a canary that adds a field beside the others'.
                _require(path, other, (*roles.categorical, *roles.numeric, *keep))
            elif other != columns:
                raise DataError(f"{path}: columns {other} differ from {files[0].name}'s {columns}")
    if fmt == "criteo" or (
        not roles.categorical and not roles.numeric and set(CRITEO_COLUMNS) <= set(columns)
    ):
        roles = ColumnRoles(
            label=roles.label or "label",
            weight=roles.weight,
            categorical=roles.categorical or CRITEO_CATEGORICAL,
            numeric=roles.numeric or CRITEO_NUMERIC,
            ignore=roles.ignore,
        )
    if not labelled:
        _require(files[0], columns, (*roles.categorical, *roles.numeric, *keep))
        return DataSource(
            files=files,
            fmt=fmt,
            label=None,
            weight=None,
            categorical=tuple(roles.categorical),
            numeric=tuple(roles.numeric),
            task=task,
            batch_rows=batch_rows,
            keep=tuple(keep),
        )
    label = roles.label or next((c for c in _LABEL_CANDIDATES if c in columns), None)
    if label is None:
        raise DataError(f"{files[0]}: no label column; name it with --label (columns: {columns})")
    named = (label, roles.weight, time_column, *roles.categorical, *roles.numeric, *roles.ignore)
    _require(files[0], columns, [c for c in (*named, *keep) if c is not None])
    ignored = set(roles.ignore) | {c for c in _DEFAULT_IGNORED if c not in named}
    weight = roles.weight or ("weight" if "weight" in columns and task == "regression" else None)
    ignored |= {"weight"} - {weight}
    free = [c for c in columns if c not in {label, weight, time_column} | ignored]
    categorical, numeric = list(roles.categorical), list(roles.numeric)
    if not categorical and not numeric:
        fractional = _fractional_columns(files[0], fmt, free)
        categorical = [c for c in free if c not in fractional]
        numeric = [c for c in free if c in fractional]
    elif not categorical:
        categorical = [c for c in free if c not in numeric]
    elif not numeric:
        numeric = [c for c in free if c not in categorical]
    if not categorical and not numeric:
        raise DataError(f"{files[0]}: no feature columns besides the label {label!r}")
    return DataSource(
        files=files,
        fmt=fmt,
        label=label,
        weight=weight,
        categorical=tuple(categorical),
        numeric=tuple(numeric),
        task=task,
        has_oracle=ORACLE_COLUMN in columns and ORACLE_COLUMN not in named,
        time_column=time_column,
        batch_rows=batch_rows,
        keep=tuple(keep),
    )


def _require(path: Path, columns: Sequence[str], named: Sequence[str]) -> None:
    missing = [c for c in named if c not in columns]
    if missing:
        raise DataError(f"{path}: columns not in the file: {missing} (columns: {list(columns)})")


def _column_names(path: Path, fmt: DataFormat) -> list[str]:
    if fmt == "parquet":
        try:
            return [str(name) for name in pq.ParquetFile(path).schema_arrow.names]
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            head = stream.read(1 << 20)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = first.decode()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    names = next(csv.reader([text], delimiter="\t" if fmt == "tsv" else ","))
    if len(set(names)) != len(names):
        raise DataError(f"{path}: repeated column names in the header {names}")
    return names


def _fractional_columns(path: Path, fmt: DataFormat, columns: list[str]) -> set[str]:
    """Columns of the first batch whose values are all numbers and include a fraction."""
    if fmt == "parquet":
        schema = pq.ParquetFile(path).schema_arrow
        return {c for c in columns if pa.types.is_floating(schema.field(c).type)}
    first = _TextFile(path, fmt, BadRowLog("skip")).record_batches(BATCH_ROWS, columns)
    raw, _ = next(first, (None, None))
    if raw is None:
        return set()
    found = set()
    for name in columns:
        text = raw.column(name).drop_null()
        if len(text) == 0 or _parse_numbers(text) is None:
            continue
        if pc.any(pc.match_substring_regex(text, r"[.eE]")).as_py():
            found.add(name)
    return found


class _TextFile:
    """A delimited text file (optionally gzip) read as string columns, with line numbers."""

    def __init__(self, path: Path, fmt: DataFormat, log: BadRowLog | None = None) -> None:
        self.path = path
        self.header = fmt != "criteo"
        self.names = list(CRITEO_COLUMNS) if fmt == "criteo" else _column_names(path, fmt)
        self.sep = "\t" if fmt in {"tsv", "criteo"} else ","
        self.log = log or BadRowLog()
        self.skipped_lines: list[int] = []  # lines the parser left out (wrong column count)
        self.pending: list[tuple[int, str]] = []  # ... not yet reported

    def record_batches(
        self, rows: int, columns: Sequence[str]
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """Batches of at most ``rows`` rows and the file line of each row.

        Blank lines come through as all-null rows (dropped by the caller) so that line
        numbers count every physical line. Rows with the wrong number of columns are
        reported to the log before the batch they were in is yielded.
        """
        self.skipped_lines, self.pending = [], []
        try:
            stream = pa.input_stream(str(self.path), compression="detect")
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(
                    column_names=self.names,
                    skip_rows=1 if self.header else 0,
                    block_size=_TEXT_BLOCK_BYTES,
                    use_threads=False,  # the parser then reports line numbers
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.sep,
                    invalid_row_handler=self._invalid_row,
                    ignore_empty_lines=False,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(self.names, pa.string()),
                    include_columns=list(columns),
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{self.path}: {_arrow_reason(exc)}") from None
        offset = 1 if self.header else 0
        seen = 0
        with reader:
            while True:
                try:
                    record_batch = reader.read_next_batch()
                except StopIteration:
                    self._report()
                    return
                except (pa.ArrowInvalid, OSError) as exc:
                    raise DataError(f"{self.path}: {_arrow_reason(exc)}") from None
                self._report()
                for start in range(0, record_batch.num_rows, rows):
                    part = record_batch.slice(start, rows)
                    counted = np.arange(seen, seen + part.num_rows, dtype=np.int64)
                    yield part, self._lines(counted + offset + 1)
                    seen += part.num_rows

    def _invalid_row(self, row: pacsv.InvalidRow) -> str:
        # Raising here would unwind through Arrow's C++; the rows are reported after.
        self.skipped_lines.append(int(row.number))
        reason = f": expected {row.expected_columns} columns, found {row.actual_columns}"
        self.pending.append((int(row.number), reason))
        return "skip"

    def _report(self) -> None:
        for line, reason in self.pending:
            self.log.found(self.path, line, reason)
        self.pending = []

    def _lines(self, counted: np.ndarray) -> np.ndarray:
        """Physical lines of the rows the parser kept, numbered ``counted`` among them."""
        if not self.skipped_lines:
            return counted
        skipped = np.sort(np.asarray(self.skipped_lines, dtype=np.int64))
        lines = counted.copy()
        while True:
            moved = counted + np.searchsorted(skipped, lines, side="right")
            if np.array_equal(moved, lines):
                return lines
            lines = moved


class _ParquetFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record_batches(
        self, rows: int, columns: Sequence[str]
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        try:
            parquet = pq.ParquetFile(self.path)
            seen = 0
            for record_batch in parquet.iter_batches(batch_size=rows, columns=list(columns)):
                lines = np.arange(seen + 1, seen + 1 + record_batch.num_rows, dtype=np.int64)
                seen += record_batch.num_rows
                yield record_batch, lines
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.path}: not a readable Parquet file ({exc})") from None


def _arrow_reason(exc: Exception) -> str:
    text = str(exc)
    if "UTF8" in text:
        return f"not UTF-8 text ({text})"
    return text


def _parse_numbers(text: pa.Array) -> np.ndarray | None:
    """float64 of a string (or numeric) array, NaN where null; ``None`` if any value is not
    a number."""
    try:
        return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _numbers_with_errors(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a mask of values that are present but not finite numbers."""
    numbers = _parse_numbers(column)
    if numbers is None:  # rare: find the bad values one by one
        numbers = np.array([_to_float(v) for v in column.to_pylist()], dtype=np.float64)
    present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return numbers, present & ~np.isfinite(numbers)


def _to_float(value: object) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _check(
    source: DataSource,
    path: Path,
    raw: pa.RecordBatch,
    lines: np.ndarray,
    first_position: int,
    log: BadRowLog,
) -> Batch | None:
    """Types, labels and weights of one raw batch; malformed rows are reported by line."""
    num_rows = raw.num_rows
    positions = np.arange(first_position, first_position + num_rows, dtype=np.int64)
    keep = np.ones(num_rows, dtype=bool)
    if source.fmt != "parquet":
        blank = np.ones(num_rows, dtype=bool)
        for column in raw.columns:
            blank &= np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        keep &= ~blank

    def flag(mask: np.ndarray, column: str, reason: str, values: pa.Array | np.ndarray) -> None:
        for row in np.flatnonzero(mask & keep):
            value = values[row]
            shown = value.as_py() if isinstance(value, pa.Scalar) else value
            shown_text = "an empty value" if shown is None else repr(shown)
            log.found(path, int(lines[row]), f", column {column!r}: {reason}, got {shown_text}")
        keep[mask] = False

    numeric: dict[str, np.ndarray] = {}
    for name in source.numeric:
        column = raw.column(name)
        numbers, bad = _numbers_with_errors(column)
        flag(bad, name, "expected a finite number", column)
        numeric[name] = numbers
    if source.label is None:
        labels = np.full(num_rows, np.nan)
    else:
        label_text = raw.column(source.label)
        labels, bad = _numbers_with_errors(label_text)
        bad |= np.isnan(labels)
        if source.task == "binary":
            bad |= ~np.isin(labels, (0.0, 1.0))
            flag(bad, source.label, "binary labels must be 0 or 1", label_text)
        else:
            flag(bad, source.label, "regression targets must be finite numbers", label_text)
    weights = None
    if source.weight is not None:
        weight_text = raw.column(source.weight)
        weights, bad = _numbers_with_errors(weight_text)
        flag(bad | ~(weights >= 0), source.weight, "weights must be >= 0", weight_text)
    oracle = None
    if source.has_oracle:
        oracle, _ = _numbers_with_errors(raw.column(ORACLE_COLUMN))
    time = None
    if source.time_column is not None:
        time = raw.column(source.time_column)
        missing = np.asarray(time.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        flag(missing, source.time_column, "the time-split column needs a value", time)
    if not keep.any():
        return None
    chosen = None if keep.all() else pa.array(keep)

    def rows(values: np.ndarray) -> np.ndarray:
        return values if chosen is None else values[keep]

    categorical = {}
    for name in source.categorical:
        column = raw.column(name)
        categorical[name] = column if chosen is None else column.filter(chosen)
    return Batch(
        categorical=categorical,
        numeric={name: rows(values) for name, values in numeric.items()},
        labels=rows(labels).astype(np.float32),
        weights=None if weights is None else rows(weights).astype(np.float32),
        positions=rows(positions),
        oracle=None if oracle is None else rows(oracle),
        time=None if time is None else (time if chosen is None else time.filter(chosen)),
        kept={
            name: raw.column(name) if chosen is None else raw.column(name).filter(chosen)
            for name in source.keep
        },
    )
