"""Read click logs (CSV/TSV with a header, Criteo layout, Parquet) into a checked table.

Every problem with a file is raised as :class:`DataError` naming the file and, where it
applies, the line and column -- never a traceback from deep inside pandas.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DataFormat = Literal["csv", "tsv", "criteo", "parquet"]
Task = Literal["binary", "regression"]

CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL)

# Columns that are never features unless named explicitly: ids and the generator's oracle.
_DEFAULT_IGNORED = ("id", "p_true", "impressions", "clicks")
_LABEL_CANDIDATES = ("label", "click", "rate")


class DataError(ValueError):
    """A data file cannot be used; the message names the file (and line/column)."""


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
) -> Table:
    """Read ``path`` and check it against the task.

    Args:
        fmt: file layout; inferred from the suffix when ``None`` (Criteo must be named).
        roles: column roles; the label, categorical and numeric columns are inferred when
            left empty (integer and string columns are categorical, float columns numeric).
    """
    roles = roles or ColumnRoles()
    fmt = fmt or detect_format(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if fmt == "criteo":
        frame = _read_delimited(path, "\t", header=False, names=CRITEO_COLUMNS)
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
    else:
        frame = _read_delimited(path, "\t" if fmt == "tsv" else ",", header=True)
    if frame.empty:
        raise DataError(f"{path}: no data rows")
    return _resolve(path, frame, roles, task, header=fmt not in {"criteo", "parquet"})


def _read_delimited(
    path: Path, sep: str, header: bool, names: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Read every column as text first; types are checked afterwards with line numbers."""
    _check_column_counts(path, sep, header, expected=len(names) if names else None)
    try:
        return pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=list(names) if names else None,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            engine="c",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from None


def _check_column_counts(path: Path, sep: str, header: bool, expected: int | None) -> None:
    """Find the first line whose column count differs, so the error can name it."""
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle, delimiter=sep)
            for line_no, row in enumerate(reader, start=1):
                if expected is None:
                    expected = len(row)
                    continue
                if row and len(row) != expected:
                    raise DataError(
                        f"{path}: line {line_no}: expected {expected} columns, found {len(row)}"
                    )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    if header and expected is None:
        raise DataError(f"{path}: the file is empty")


def _resolve(
    path: Path, frame: pd.DataFrame, roles: ColumnRoles, task: Task, header: bool
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

    offset = 2 if header else 1  # data row i sits on line i + offset
    for column in (label, *numeric, *([weight] if weight else [])):
        frame[column] = _to_numbers(path, frame[column], column, offset)
    _check_label(path, frame[label], label, task, offset)
    if weight is not None:
        bad = ~(frame[weight] >= 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: line {row + offset}, column {weight!r}: weights must be >= 0, "
                f"got {frame[weight].iloc[row]!r}"
            )
    for column in categorical:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return Table(path, frame, label, weight, tuple(categorical), tuple(numeric))


def _looks_fractional(column: pd.Series) -> bool:
    text = column.dropna().astype(str)
    if text.empty:
        return False
    numbers = pd.to_numeric(text, errors="coerce")
    return bool(numbers.notna().all() and text.str.contains(r"[.eE]", regex=True).any())


def _to_numbers(path: Path, column: pd.Series, name: str, offset: int) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    bad = numbers.isna() & column.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: line {row + offset}, column {name!r}: expected a number, "
            f"got {column.iloc[row]!r}"
        )
    return numbers.astype(np.float64)


def _check_label(path: Path, label: pd.Series, name: str, task: Task, offset: int) -> None:
    if task == "binary":
        bad = ~label.isin([0.0, 1.0])
        expectation = "binary labels must be 0 or 1"
    else:
        bad = ~np.isfinite(label.to_numpy(dtype=np.float64))
        expectation = "regression targets must be finite numbers"
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = label.iloc[row]
        raise DataError(
            f"{path}: line {row + offset}, column {name!r}: {expectation}, got "
            f"{'an empty value' if pd.isna(value) else repr(value)}"
        )
