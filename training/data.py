"""Read click logs (CSV/TSV with a header, Criteo layout, Parquet) into a checked table.

Every problem with a file is raised as :class:`DataError` naming the file and, where it
applies, the line and column -- never a traceback from deep inside pandas.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DataFormat = Literal["csv", "tsv", "criteo", "parquet"]
Task = Literal["binary", "regression"]
BadRows = Literal["error", "skip"]

CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL)

# Columns that are never features unless named explicitly: ids and the generator's oracle.
_DEFAULT_IGNORED = ("id", "p_true", "impressions", "clicks")
_LABEL_CANDIDATES = ("label", "click", "rate")


class DataError(ValueError):
    """A data file cannot be used; the message names the file (and line/column)."""


@dataclass(frozen=True)
class SkippedRow:
    """A malformed row left out under ``bad_rows="skip"``: where it was and why."""

    line: int
    reason: str


class _Problems:
    """Malformed rows: raise at the first (``error``) or collect them all (``skip``)."""

    def __init__(self, path: Path, mode: BadRows) -> None:
        self.path = path
        self.mode = mode
        self.skipped: list[SkippedRow] = []

    def found(self, line: int, reason: str) -> None:
        if self.mode == "error":
            raise DataError(f"{self.path}: line {line}{reason}")
        self.skipped.append(SkippedRow(line, reason.lstrip(":, ")))


@dataclass(frozen=True)
class ColumnRoles:
    """Which column plays which part. Empty tuples mean "infer from the file"."""

    label: str | None = None
    weight: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """A read, checked table: features as columns plus label and optional weight."""

    path: Path
    frame: pd.DataFrame
    label: str
    weight: str | None
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    skipped: tuple[SkippedRow, ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.categorical + self.numeric

    @property
    def labels(self) -> np.ndarray:
        return self.frame[self.label].to_numpy(dtype=np.float32)

    @property
    def weights(self) -> np.ndarray | None:
        if self.weight is None:
            return None
        return self.frame[self.weight].to_numpy(dtype=np.float32)

    def feature_columns(self) -> dict[str, np.ndarray]:
        """Columns as numpy arrays, ready for ``FeatureEncoder.encode_columns``."""
        return {name: self.frame[name].to_numpy() for name in self.feature_names}


def detect_format(path: Path) -> DataFormat:
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    if suffix == ".tsv":
        return "tsv"
    return "csv"


def read_table(
    path: Path,
    fmt: DataFormat | None = None,
    roles: ColumnRoles | None = None,
    task: Task = "binary",
    bad_rows: BadRows = "error",
) -> Table:
    """Read ``path`` and check it against the task.

    Args:
        fmt: file layout; inferred from the suffix when ``None`` (Criteo must be named).
        roles: column roles; the label, categorical and numeric columns are inferred when
            left empty (integer and string columns are categorical, float columns numeric).
        bad_rows: ``error`` stops at the first malformed row, naming file, line and column;
            ``skip`` leaves malformed rows out and lists every one in ``Table.skipped``.
    """
    problems = _Problems(path, bad_rows)
    roles = roles or ColumnRoles()
    fmt = fmt or detect_format(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if fmt == "criteo":
        frame, lines = _read_delimited(path, "\t", False, problems, names=CRITEO_COLUMNS)
        roles = ColumnRoles(
            label=roles.label or "label",
            weight=roles.weight,
            categorical=roles.categorical or CRITEO_CATEGORICAL,
            numeric=roles.numeric or CRITEO_NUMERIC,
            ignore=roles.ignore,
        )
    elif fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        lines = np.arange(1, len(frame) + 1)  # Parquet has rows, not lines: count from 1
    else:
        frame, lines = _read_delimited(path, "\t" if fmt == "tsv" else ",", True, problems)
    if frame.empty:
        raise DataError(f"{path}: no data rows")
    return _resolve(path, frame, lines, roles, task, problems)


def _read_delimited(
    path: Path,
    sep: str,
    header: bool,
    problems: _Problems,
    names: tuple[str, ...] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read every column as text first; types are checked afterwards with line numbers.

    Returns:
        the frame and, for each of its rows, the line of the file it came from.
    """
    bad_lines, good_lines = _check_column_counts(path, sep, header, len(names) if names else None)
    for line, expected, found in bad_lines:
        problems.found(line, f": expected {expected} columns, found {found}")
    skip = {line - 1 for line, _, _ in bad_lines}  # pandas counts lines from 0
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=list(names) if names else None,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            engine="c",
            skiprows=sorted(skip) if skip else None,
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from None
    if len(good_lines) != len(frame):
        raise DataError(f"{path}: could not match {len(frame)} parsed rows to their lines")
    return frame, np.asarray(good_lines)


def _check_column_counts(
    path: Path, sep: str, header: bool, expected: int | None
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Lines whose column count differs from the header's (or ``expected``), and the line
    of every good data row, so later errors can name the line."""
    bad: list[tuple[int, int, int]] = []
    good: list[int] = []
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle, delimiter=sep)
            for row in reader:
                if not row:
                    continue  # blank line: pandas skips it too
                if expected is None:
                    expected = len(row)
                elif len(row) != expected:
                    bad.append((reader.line_num, expected, len(row)))
                else:
                    good.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    if header and expected is None:
        raise DataError(f"{path}: the file is empty")
    return bad, good


def _resolve(
    path: Path,
    frame: pd.DataFrame,
    lines: np.ndarray,
    roles: ColumnRoles,
    task: Task,
    problems: _Problems,
) -> Table:
    frame.columns = [str(c) for c in frame.columns]
    columns = list(frame.columns)
    label = roles.label or next((c for c in _LABEL_CANDIDATES if c in columns), None)
    if label is None:
        raise DataError(f"{path}: no label column; name it with --label (columns: {columns})")
    named = (label, roles.weight, *roles.categorical, *roles.numeric, *roles.ignore)
    missing = [c for c in named if c is not None and c not in columns]
    if missing:
        raise DataError(f"{path}: columns not in the file: {missing} (columns: {columns})")
    ignored = set(roles.ignore) | {c for c in _DEFAULT_IGNORED if c not in named}
    weight = roles.weight or ("weight" if "weight" in columns and task == "regression" else None)
    ignored |= {"weight"} - {weight}
    free = [c for c in columns if c not in {label, weight} | ignored]
    categorical, numeric = list(roles.categorical), list(roles.numeric)
    if not categorical and not numeric:
        for column in free:
            (numeric if _looks_fractional(frame[column]) else categorical).append(column)
    elif not categorical:
        categorical = [c for c in free if c not in numeric]
    elif not numeric:
        numeric = [c for c in free if c not in categorical]
    if not categorical and not numeric:
        raise DataError(f"{path}: no feature columns besides the label {label!r}")

    bad = np.zeros(len(frame), dtype=bool)

    def flag(mask: np.ndarray, column: str, reason: Callable[[int], str]) -> None:
        for row in np.flatnonzero(mask & ~bad):
            problems.found(int(lines[row]), f", column {column!r}: {reason(row)}")
        bad[mask] = True

    for column in (label, *numeric, *([weight] if weight else [])):
        text = frame[column]
        numbers = pd.to_numeric(text, errors="coerce")
        flag(
            (numbers.isna() & text.notna()).to_numpy(),
            column,
            lambda row, t=text: f"expected a number, got {t.iloc[row]!r}",
        )
        frame[column] = numbers.astype(np.float64)
    values = frame[label]
    if task == "binary":
        label_bad = ~values.isin([0.0, 1.0]).to_numpy()
        expectation = "binary labels must be 0 or 1"
    else:
        label_bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
        expectation = "regression targets must be finite numbers"
    flag(label_bad, label, lambda row: f"{expectation}, got {_shown(values.iloc[row])}")
    if weight is not None:
        weights = frame[weight]
        flag(
            ~(weights >= 0).to_numpy(),
            weight,
            lambda row: f"weights must be >= 0, got {_shown(weights.iloc[row])}",
        )
    if bad.any():
        frame = frame.loc[~bad].reset_index(drop=True)
        if frame.empty:
            raise DataError(f"{path}: every row is malformed ({len(problems.skipped)} skipped)")
    for column in categorical:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    skipped = tuple(sorted(problems.skipped, key=lambda s: s.line))
    if skipped:
        logger.warning(
            "%s: skipped %d malformed rows, first: %s",
            path,
            len(skipped),
            "; ".join(f"line {s.line}: {s.reason}" for s in skipped[:3]),
        )
    return Table(path, frame, label, weight, tuple(categorical), tuple(numeric), skipped)


def _shown(value: object) -> str:
    return "an empty value" if pd.isna(value) else repr(value)


def _looks_fractional(column: pd.Series) -> bool:
    text = column.dropna().astype(str)
    if text.empty:
        return False
    numbers = pd.to_numeric(text, errors="coerce")
    return bool(numbers.notna().all() and text.str.contains(r"[.eE]", regex=True).any())
