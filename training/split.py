"""Which split a row belongs to, decided from the row alone (no row count needed).

``hash``: a seeded hash of the row's position, compared with the fractions, so a streamed
file splits the same way on every pass, in every process, on every machine.
``time``: by a column -- rows before ``val_from`` train, rows from ``test_from`` on test,
the rest validate: how CTR models are judged in practice (the future is held out).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data import Batch, DataError

TRAIN, VAL, TEST = 0, 1, 2
# a negative left out by negative down-sampling is marked by its split plus DROPPED (its
# kept neighbours in validation and test weigh 1 / w)
DROPPED = 3
DROPPED_VAL, DROPPED_TEST = VAL + DROPPED, TEST + DROPPED
SPLIT_NAMES = ("train", "val", "test")
_SAMPLING_SALT = 0x5A3B_1E5D  # the sampling draw is independent of the split's

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a well-mixed 64-bit hash of each value, vectorised."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        return z ^ (z >> np.uint64(31))


def row_hash(positions: np.ndarray, salt: np.uint64 | int = 0) -> np.ndarray:
    """A seeded 64-bit hash of row positions: the same for a row in any batch or process."""
    return _splitmix64(_splitmix64(positions.astype(np.uint64)) ^ np.uint64(salt))


@dataclass(frozen=True)
class SplitRule:
    """How rows are split; ``time_column`` set means a time split."""

    val_fraction: float
    test_fraction: float
    seed: int
    time_column: str | None = None
    val_from: str | None = None
    test_from: str | None = None
    negative_sampling: float = 1.0  # share of the negatives kept, in every split

    def __post_init__(self) -> None:
        if self.time_column is None:
            return
        if self.val_from is None or self.test_from is None:
            raise DataError("a time split needs both --val-from and --test-from")
        if _as_number(self.val_from) is not None and _as_number(self.test_from) is not None:
            if float(self.val_from) > float(self.test_from):
                raise DataError(f"--val-from {self.val_from} is after --test-from {self.test_from}")
        elif self.val_from > self.test_from:
            raise DataError(f"--val-from {self.val_from} is after --test-from {self.test_from}")

    def assign(self, batch: Batch) -> np.ndarray:
        """``TRAIN``/``VAL``/``TEST`` (int8) for every row of ``batch``; ``DROPPED``,
        ``DROPPED_VAL`` and ``DROPPED_TEST`` for the negatives negative down-sampling leaves
        out (a seeded draw by position: the same rows on every pass and in every process).
        Validation and test are sampled too, so that early stopping, the calibration and
        the test metrics score a fraction of them: AUC is unchanged in expectation by
        dropping negatives at random, and the kept negatives carry the weight 1 / w there,
        which makes every metric an estimate of the unsampled one. ``ctrserve evaluate
        --split`` scores a split's every row (:meth:`unsampled`)."""
        splits = self._split(batch)
        if self.negative_sampling < 1.0:
            negatives = np.flatnonzero(batch.labels <= 0)
            salt = (self.seed ^ _SAMPLING_SALT) & 0xFFFFFFFFFFFFFFFF
            mixed = row_hash(batch.positions[negatives], salt)
            uniform = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
            splits[negatives[uniform >= self.negative_sampling]] += DROPPED
        return splits

    def unsampled(self) -> SplitRule:
        """The same split without negative down-sampling: every row of every split."""
        return replace(self, negative_sampling=1.0)

    def _split(self, batch: Batch) -> np.ndarray:
        if self.time_column is None:
            return self.by_position(batch.positions)
        if batch.time is None or self.val_from is None or self.test_from is None:
            raise DataError(f"a time split needs the column {self.time_column!r} in the data")
        time = batch.time
        val_from: object = self.val_from
        test_from: object = self.test_from
        numbers = _numeric_times(time)
        if numbers is not None:
            val_from, test_from = _bound(self.val_from), _bound(self.test_from)
            time = numbers
        else:
            time = time.cast(pa.string())
        out = np.full(len(time), TRAIN, dtype=np.int8)
        out[pc.greater_equal(time, val_from).to_numpy(zero_copy_only=False)] = VAL
        out[pc.greater_equal(time, test_from).to_numpy(zero_copy_only=False)] = TEST
        return out

    def by_position(self, positions: np.ndarray) -> np.ndarray:
        """The hash split of rows at ``positions`` (their place in the source, from 0)."""
        mixed = row_hash(positions, self.seed & 0xFFFFFFFFFFFFFFFF)
        uniform = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        out = np.full(len(positions), TRAIN, dtype=np.int8)
        out[uniform < self.test_fraction + self.val_fraction] = VAL
        out[uniform < self.test_fraction] = TEST
        return out


def time_cuts(times: pa.Array, val_fraction: float, test_fraction: float) -> tuple[str, str]:
    """``--val-from`` and ``--test-from`` from the time column's values: the earliest
    ``1 - val_fraction - test_fraction`` of the rows train, the latest ``test_fraction``
    test (rows sharing the cut-off's time all go to the later split)."""
    numbers = _numeric_times(times)
    values = pc.drop_null(numbers if numbers is not None else times.cast(pa.string()))
    if len(values) == 0:
        raise DataError("the time column holds no values to split by")
    ordered = pc.sort_indices(values)
    last = len(values) - 1

    def at(share: float) -> str:
        value = values[ordered[min(last, int(len(values) * share))].as_py()].as_py()
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else repr(value)
        return str(value)

    val_from, test_from = at(1 - val_fraction - test_fraction), at(1 - test_fraction)
    first = at(0.0)
    if val_from in (test_from, first):
        raise DataError(
            f"too few distinct times to split {val_fraction:.0%} / {test_fraction:.0%} by "
            f"time (the cut-offs would be {first!r}, {val_from!r}, {test_from!r}); give "
            "--val-from and --test-from"
        )
    return val_from, test_from


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _bound(text: str) -> float:
    number = _as_number(text)
    if number is None:
        raise DataError(f"the time column holds numbers, so {text!r} must be a number")
    return number


def _numeric_times(time: pa.Array) -> pa.Array | None:
    """The time column as numbers when it holds them (an hour, a day index, epoch seconds),
    else ``None`` (ISO dates and times compare as text)."""
    if pa.types.is_integer(time.type) or pa.types.is_floating(time.type):
        return time.cast(pa.float64())
    if pa.types.is_timestamp(time.type) or pa.types.is_date(time.type):
        return None
    try:
        return pc.cast(time, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
