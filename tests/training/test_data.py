from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")

from support.training_files import write_criteo
from training.data import (
    CRITEO_CATEGORICAL,
    CRITEO_NUMERIC,
    ColumnRoles,
    DataError,
    read_table,
)


def test_criteo_layout(tmp_path: Path) -> None:
    table = read_table(write_criteo(tmp_path / "c.txt"), "criteo")
    assert table.label == "label"
    assert table.categorical == CRITEO_CATEGORICAL
    assert table.numeric == CRITEO_NUMERIC
    assert len(table.frame) == 20
    assert set(np.unique(table.labels)) <= {0.0, 1.0}
    missing = table.frame["C1"].isna() | (table.frame["C1"].map(lambda v: v is None))
    assert missing.any()  # empty fields became missing, not the string ""


def test_csv_roles_are_inferred(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,click,site,hour,price\n1,0,a,10,1.5\n2,1,b,11,2.25\n")
    table = read_table(path)
    assert table.label == "click"
    assert table.categorical == ("site", "hour")  # integer columns are ids, not numbers
    assert table.numeric == ("price",)


def test_explicit_roles(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("y,site,hour\n0,a,10\n1,b,11\n")
    table = read_table(path, roles=ColumnRoles(label="y", numeric=("hour",)))
    assert table.categorical == ("site",)
    assert table.numeric == ("hour",)


def test_parquet(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"label": [0, 1], "site": ["a", "b"], "price": [1.5, 2.5]}).to_parquet(path)
    table = read_table(path)
    assert table.categorical == ("site",)
    assert table.numeric == ("price",)


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ("", None, "the file is empty"),
        ("label,site\n", None, "no data rows"),
        ("label,site\n0,a\n1,b,extra\n", None, "line 3: expected 2 columns, found 3"),
        (
            "label,site,price\n0,a,1.5\n1,b,cheap\n",
            None,
            "line 3, column 'price': expected a number",
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
    with pytest.raises(DataError, match=message) as info:
        read_table(path, fmt, roles=ColumnRoles(numeric=("price",)) if "price" in content else None)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "nope.csv")


def test_regression_target_and_weight(tmp_path: Path) -> None:
    path = tmp_path / "agg.csv"
    path.write_text("rate,weight,site\n0.5,0.2,a\n0.1,0.8,b\n")
    table = read_table(path, task="regression")
    assert table.label == "rate"
    assert table.weight == "weight"
    assert table.weights is not None
    assert table.weights.tolist() == pytest.approx([0.2, 0.8])


def test_negative_weight_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agg.csv"
    path.write_text("rate,weight,site\n0.5,-1,a\n")
    with pytest.raises(DataError, match="line 2, column 'weight'"):
        read_table(path, task="regression")


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
    with pytest.raises(DataError, match="line 3: expected 3 columns, found 4"):
        read_table(path, roles=ColumnRoles(numeric=("price",)))
    table = read_table(path, roles=ColumnRoles(numeric=("price",)), bad_rows="skip")
    assert table.frame["site"].tolist() == ["a", "e"]
    assert [(s.line, s.reason.split(":")[0]) for s in table.skipped] == [
        (3, "expected 3 columns, found 4"),
        (4, "column 'price'"),
        (6, "column 'label'"),
    ]


def test_skip_mode_with_nothing_left(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("label,site\n5,a\n")
    with pytest.raises(DataError, match="every row is malformed"):
        read_table(path, bad_rows="skip")
