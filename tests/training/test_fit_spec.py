from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from app.features.spec import CategoricalField, NumericField
from training.data import Table
from training.fit_spec import fit_bins, fit_spec, fit_vocabulary


def test_vocabulary_is_sorted_by_count_then_value() -> None:
    values = np.array(["b", "a", "c", "a", "b", None, "", "d"], dtype=object)
    field = fit_vocabulary(values, "x", min_count=1)
    assert field.vocabulary == ("a", "b", "c", "d")


def test_min_count_drops_rare_values() -> None:
    values = np.array(["a", "a", "b"], dtype=object)
    assert fit_vocabulary(values, "x", min_count=2).vocabulary == ("a",)


def test_quantile_bins_are_equal_count() -> None:
    values = np.arange(1000, dtype=np.float64)
    field = fit_bins(values, "x", "quantile", num_bins=4)
    assert field.bin_edges == pytest.approx((249.75, 499.5, 749.25))


def test_log_bins_cover_the_range() -> None:
    values = np.array([0.0, 3.0, 100.0, np.nan])
    field = fit_bins(values, "x", "log", num_bins=4)
    assert field.bin_edges[0] == 0.0
    assert field.bin_edges[-1] >= 100.0


def test_constant_or_empty_numeric_column() -> None:
    assert fit_bins(np.array([np.nan, np.nan]), "x", "quantile", 8).bin_edges == ()
    assert len(fit_bins(np.full(10, 3.0), "x", "quantile", 8).bin_edges) == 1


def test_fit_spec_keeps_table_order() -> None:
    frame = pd.DataFrame(
        {"label": [0.0, 1.0], "site": ["a", "b"], "price": [1.0, 2.0]}, dtype=object
    )
    table = Table(
        path=None,
        frame=frame,
        label="label",
        weight=None,  # type: ignore[arg-type]
        categorical=("site",),
        numeric=("price",),
    )
    spec = fit_spec(replace(table))
    assert [type(f) for f in spec.fields] == [CategoricalField, NumericField]
    assert spec.names == ("site", "price")
