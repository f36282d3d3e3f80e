"""Turn raw feature values into the int64 index arrays every model reads.

Pure numpy, no torch and no pandas: the trainer encodes whole columns with it and the
service encodes request rows with it, so training and serving cannot disagree.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from app.features.errors import EncodeError
from app.features.spec import (
    MISSING_INDEX,
    NUM_RESERVED,
    UNSEEN_INDEX,
    CategoricalField,
    FeatureSpec,
    NumericField,
)


def canonical_token(value: object) -> str | None:
    """The token a categorical value is looked up by, or ``None`` for missing.

    JSON numbers are spelled the way a CSV reader spells them (``5``, ``5.0`` -> ``"5"``), so a
    client that sends ids as numbers hits the same vocabulary entry as the training file.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            raise TypeError(f"{number} is not a value; send null for missing")
        if number.is_integer():
            return str(int(number))
        return repr(number)
    raise TypeError(f"expected a string, number or null, got {type(value).__name__}")


class _CategoricalColumn:
    def __init__(self, field: CategoricalField, max_chars: int | None) -> None:
        self.name = field.name
        self.max_chars = max_chars
        # "" is mapped here too, so the common case (a str) is one dict lookup.
        self.lookup: dict[str, int] = {"": MISSING_INDEX}
        self.lookup.update((v, NUM_RESERVED + i) for i, v in enumerate(field.vocabulary))

    def index(self, value: object) -> int:
        if type(value) is str:
            found = self.lookup.get(value)
            if found is not None:
                return found
            if self.max_chars is not None and len(value) > self.max_chars:
                # Only unseen strings can be long: every vocabulary value passed above.
                raise EncodeError(
                    self.name, f"value of {len(value)} characters exceeds {self.max_chars}"
                )
            return UNSEEN_INDEX
        try:
            token = canonical_token(value)
        except TypeError as exc:
            raise EncodeError(self.name, str(exc)) from None
        return MISSING_INDEX if token is None else self.lookup.get(token, UNSEEN_INDEX)

    def encode(self, values: Iterable[object], count: int) -> NDArray[np.int64]:
        return np.fromiter(map(self.index, values), dtype=np.int64, count=count)


class _NumericColumn:
    def __init__(self, field: NumericField, max_chars: int | None) -> None:
        self.name = field.name
        self.max_chars = max_chars
        self.edges = np.asarray(field.bin_edges, dtype=np.float64)
        self._edge_list = list(field.bin_edges)

    def index(self, value: object) -> int:
        """One request value's index: the bins of :meth:`encode`, without numpy overhead.

        Here NaN is an error, not "missing": a client says missing with null.
        """
        number = self._as_float(value)
        if not math.isfinite(number):
            if value is None or value == "":
                return MISSING_INDEX
            raise EncodeError(self.name, f"{value!r} is not a finite number; send null for missing")
        return NUM_RESERVED + bisect.bisect_right(self._edge_list, number)

    def _as_float(self, value: object) -> float:
        if value is None or value == "":
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float | str | np.number):
            raise EncodeError(self.name, f"expected a number or null, got {type(value).__name__}")
        if isinstance(value, str) and self.max_chars is not None and len(value) > self.max_chars:
            raise EncodeError(
                self.name, f"value of {len(value)} characters exceeds {self.max_chars}"
            )
        try:
            return float(value)
        except ValueError:
            raise EncodeError(self.name, f"expected a number, got {value!r}") from None

    def encode(self, values: Iterable[object], count: int) -> NDArray[np.int64]:
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            numbers = values.astype(np.float64, copy=False)
        else:
            numbers = np.fromiter(map(self._as_float, values), dtype=np.float64, count=count)
        if np.isinf(numbers).any():
            raise EncodeError(self.name, "infinite values are not allowed")
        missing = np.isnan(numbers)
        bins = np.searchsorted(self.edges, np.where(missing, 0.0, numbers), side="right")
        return np.where(missing, MISSING_INDEX, NUM_RESERVED + bins).astype(np.int64)


class FeatureEncoder:
    """Encode raw rows or columns with one :class:`FeatureSpec`.

    Args:
        max_value_chars: refuse longer strings (the service's limit); ``None`` for no limit.
    """

    def __init__(self, spec: FeatureSpec, max_value_chars: int | None = None) -> None:
        self.spec = spec
        self.names = spec.names
        self._name_set = frozenset(self.names)
        self._columns = [
            _CategoricalColumn(f, max_value_chars)
            if isinstance(f, CategoricalField)
            else _NumericColumn(f, max_value_chars)
            for f in spec.fields
        ]
        self._getters = [(column.name, column.index) for column in self._columns]

    def check_names(self, names: Iterable[str]) -> None:
        """Reject field names the model does not know, listing the ones it does."""
        unknown = sorted(set(names) - self._name_set)
        if unknown:
            raise EncodeError(unknown[0], f"unknown field; allowed fields are {list(self.names)}")

    def encode_columns(
        self, columns: Mapping[str, Sequence[object] | NDArray[np.generic]], num_rows: int
    ) -> NDArray[np.int64]:
        """Encode column-major data (the trainer's path). Absent columns are all missing.

        Returns:
            int64 array of shape ``(num_rows, num_fields)``.
        """
        self.check_names(columns)
        out = np.full((num_rows, len(self._columns)), MISSING_INDEX, dtype=np.int64)
        for j, column in enumerate(self._columns):
            values = columns.get(column.name)
            if values is not None:
                if len(values) != num_rows:
                    raise EncodeError(column.name, f"has {len(values)} values, expected {num_rows}")
                out[:, j] = column.encode(values, num_rows)
        return out

    def encode_rows(self, rows: Sequence[Mapping[str, object]]) -> NDArray[np.int64]:
        """Encode request rows (the service's path). A key left out of a row means missing.

        Every value is type-checked here: strings, numbers, booleans or null; NaN and
        infinities are refused (JSON has no such numbers; null means missing).

        Returns:
            int64 array of shape ``(len(rows), num_fields)``.
        """
        # Row by row in plain Python: a request holds few rows, and per-column numpy calls
        # cost more than they save below a few thousand rows.
        getters = self._getters
        encoded = []
        for row in rows:
            if not self._name_set.issuperset(row):
                self.check_names(row)
            get = row.get
            encoded.append([index(get(name)) for name, index in getters])
        return np.array(encoded, dtype=np.int64).reshape(len(rows), len(getters))
