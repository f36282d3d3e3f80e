"""Pass 1's copy of the rows a sampled pass 2 encodes: read back as the batches written."""

from pathlib import Path

import numpy as np
import pyarrow as pa

from training.data import Batch
from training.kept_rows import KeptRows


def _batch(rows: int, start: int, site: pa.Array) -> Batch:
    rng = np.random.default_rng(start)
    return Batch(
        categorical={"site": site},
        numeric={"price": np.where(rng.random(rows) < 0.2, np.nan, rng.random(rows))},
        labels=(rng.random(rows) < 0.3).astype(np.float32),
        weights=rng.random(rows).astype(np.float32),
        positions=np.arange(start, start + rows, dtype=np.int64),
        oracle=rng.random(rows),
        time=pa.array([f"2026-12-0{1 + i % 5}" for i in range(rows)]),
        kept={"request_id": pa.array([f"r{start + i}" for i in range(rows)])},
    )


def _same(read: Batch, written: Batch) -> None:
    assert read.categorical["site"].to_pylist() == written.categorical["site"].to_pylist()
    np.testing.assert_array_equal(read.numeric["price"], written.numeric["price"])  # NaN kept
    for name in ("labels", "weights", "positions", "oracle"):
        np.testing.assert_array_equal(getattr(read, name), getattr(written, name))
    assert read.time is not None
    assert written.time is not None
    assert read.time.to_pylist() == written.time.to_pylist()
    assert read.kept["request_id"].to_pylist() == written.kept["request_id"].to_pylist()


def test_batches_come_back_in_order_with_every_column_and_their_splits(tmp_path: Path) -> None:
    first = _batch(5, 0, pa.array(["a", None, "b", "", "a"]))
    second = _batch(3, 5, pa.nulls(3))  # Arrow typed this batch's column null, not string
    stash = KeptRows(tmp_path / "kept.arrow")
    stash.add(first, np.array([0, 1, 2, 0, 0]))
    stash.add(_batch(0, 8, pa.array([], pa.string())), np.array([], dtype=np.int64))
    stash.add(second, np.array([2, 2, 1]))
    assert stash.rows == 8
    read = list(stash.batches())
    assert [splits.tolist() for _, splits in read] == [[0, 1, 2, 0, 0], [2, 2, 1]]
    _same(read[0][0], first)
    _same(read[1][0], second)
    assert read[1][0].categorical["site"].type == pa.string()
    stash.remove()
    assert not (tmp_path / "kept.arrow").exists()


def test_nothing_written_reads_as_no_batches(tmp_path: Path) -> None:
    stash = KeptRows(tmp_path / "kept.arrow")
    assert list(stash.batches()) == []
    stash.remove()
