"""Streaming readers: layouts, roles, shards of files, and bad data named by file, line and
column."""

import gzip
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

from support.training_files import write_criteo  # noqa: E402
from training.data import (  # noqa: E402
    CRITEO_CATEGORICAL,
    CRITEO_NUMERIC,
    BadRowLog,
    Batch,
    ColumnRoles,
    DataError,
    open_source,
)


def _read(path: Path, *args: object, bad_rows: str = "error", **kwargs: object) -> list[Batch]:
    return list(open_source(path, *args, **kwargs).batches(BadRowLog(bad_rows)))  # type: ignore[arg-type]


def _labels(batches: list[Batch]) -> list[float]:
    return [float(v) for b in batches for v in b.labels]


def test_criteo_layout(tmp_path: Path) -> None:
    path = write_criteo(tmp_path / "c.txt")
    source = open_source(path, "criteo")
    assert source.label == "label"
    assert source.categorical == CRITEO_CATEGORICAL
    assert source.numeric == CRITEO_NUMERIC
    batches = list(source.batches())
    assert sum(len(b) for b in batches) == 20
    assert set(_labels(batches)) <= {0.0, 1.0}
    assert batches[0].categorical["C1"].null_count > 0  # empty fields are missing, not ""


def test_csv_roles_are_inferred(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,click,site,hour,price\n1,0,a,10,1.5\n2,1,b,11,2.25\n")
    source = open_source(path)
    assert source.label == "click"
    assert source.categorical == ("site", "hour")  # integer columns are ids, not numbers
    assert source.numeric == ("price",)


def test_criteo_names_with_a_header_get_criteo_roles(tmp_path: Path) -> None:
    header = "\t".join(["label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL])
    row = "\t".join(["1", *["3"] * 13, *["ab"] * 26])
    path = tmp_path / "c.tsv"
    path.write_text(f"{header}\n{row}\n")
    source = open_source(path)
    assert source.numeric == CRITEO_NUMERIC  # integer counts, binned: not ids


def test_explicit_roles(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("y,site,hour\n0,a,10\n1,b,11\n")
    source = open_source(path, roles=ColumnRoles(label="y", numeric=("hour",)))
    assert source.categorical == ("site",)
    assert source.numeric == ("hour",)


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"label": [0, 1], "site": ["a", "b"], "price": [1.5, 2.5]}), path)
    source = open_source(path)
    assert source.categorical == ("site",)
    assert source.numeric == ("price",)
    assert _labels(list(source.batches())) == [0.0, 1.0]


def test_gzip_directories_and_globs_are_one_source(tmp_path: Path) -> None:
    shards = tmp_path / "day"
    shards.mkdir()
    (shards / "part-0.csv").write_text("label,site\n0,a\n1,b\n")
    with gzip.open(shards / "part-1.csv.gz", "wt") as handle:
        handle.write("label,site\n1,c\n")
    for data in (shards, tmp_path / "day" / "part-*"):
        batches = _read(data)
        assert _labels(batches) == [0.0, 1.0, 1.0]
        positions = np.concatenate([b.positions for b in batches])
        assert positions.tolist() == [0, 1, 2]  # numbered across the files


def test_batches_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,site\n" + "".join(f"{i % 2},s{i}\n" for i in range(1000)))
    batches = list(open_source(path, batch_rows=128).batches())
    assert max(len(b) for b in batches) == 128
    assert sum(len(b) for b in batches) == 1000


def test_files_with_other_columns_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("label,site\n0,a\n")
    (tmp_path / "b.csv").write_text("label,page\n0,a\n")
    with pytest.raises(DataError, match=r"b\.csv: columns .* differ"):
        open_source(tmp_path)


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ("", None, "the file is empty"),
        ("label,site\n", None, "no data rows"),
        ("label,site\n0,a\n1,b,extra\n", None, "line 3: expected 2 columns, found 3"),
        (
            "label,site,price\n0,a,1.5\n1,b,cheap\n",
            None,
            "line 3, column 'price': expected a finite number",
        ),
        ("label,site\n0,a\n2,b\n", None, "line 3, column 'label': binary labels must be 0 or 1"),
        ("label,site\n0,a\n,b\n", None, "line 3, column 'label'.*empty value"),
        ("site\na\n", None, "no label column"),
        ("1\t2\n", "criteo", "line 1: expected 40 columns, found 2"),
    ],
)
def test_bad_files_name_file_line_and_column(
    tmp_path: Path, content: str, fmt: str | None, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    roles = ColumnRoles(numeric=("price",)) if "price" in content else None
    with pytest.raises(DataError, match=message) as info:
        _read(path, fmt, roles)
    assert str(path) in str(info.value)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"label": [0, 1, 3], "site": ["a", "b", "c"]}), path)
    with pytest.raises(DataError, match="line 3, column 'label'"):
        _read(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "nope.csv")


def test_regression_target_and_weight(tmp_path: Path) -> None:
    path = tmp_path / "agg.csv"
    path.write_text("rate,weight,site\n0.5,0.2,a\n0.1,0.8,b\n")
    source = open_source(path, task="regression")
    assert source.label == "rate"
    assert source.weight == "weight"
    (batch,) = source.batches()
    assert batch.weights is not None
    assert batch.weights.tolist() == pytest.approx([0.2, 0.8])


def test_negative_weight_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agg.csv"
    path.write_text("rate,weight,site\n0.5,-1,a\n")
    with pytest.raises(DataError, match="line 2, column 'weight'"):
        _read(path, task="regression")


def test_skip_mode_counts_and_reports_every_malformed_row(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "label,site,price\n"
        "0,a,1.5\n"
        "1,b,2.5,extra\n"  # line 3: too many columns
        "1,c,cheap\n"  # line 4: not a number
        "\n"
        "7,d,1.0\n"  # line 6: label out of range
        "1,e,3.0\n"
    )
    roles = ColumnRoles(numeric=("price",))
    with pytest.raises(DataError, match="line 3: expected 3 columns, found 4"):
        _read(path, roles=roles)
    log = BadRowLog("skip")
    batches = list(open_source(path, roles=roles).batches(log))
    assert [s for b in batches for s in b.categorical["site"].to_pylist()] == ["a", "e"]
    assert [(s.line, s.reason.split(":")[0]) for s in log.rows] == [
        (3, "expected 3 columns, found 4"),
        (4, "column 'price'"),
        (6, "column 'label'"),
    ]


def test_line_numbers_hold_across_batches(tmp_path: Path) -> None:
    lines = ["label,site"] + [f"{i % 2},s{i}" for i in range(500)]
    lines[100] = "0,s,extra"  # line 101
    lines[400] = "9,bad"  # line 401
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines) + "\n")
    log = BadRowLog("skip")
    list(open_source(path, batch_rows=64).batches(log))
    assert [s.line for s in log.rows] == [101, 401]
