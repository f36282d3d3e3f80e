"""The spec in one bounded pass: exact counts, the heavy-hitter sketch past the bound,
caps, and numeric bins that keep point masses apart."""

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")

from app.features.encoder import FeatureEncoder  # noqa: E402
from app.features.spec import (  # noqa: E402
    NUM_RESERVED,
    CategoricalField,
    FeatureSpec,
    NumericField,
)
from training.data import Batch  # noqa: E402
from training.fit_spec import SpecBuilder  # noqa: E402


def _batch(
    categorical: dict[str, list] | None = None, numeric: dict[str, np.ndarray] | None = None
) -> Batch:
    columns = {name: pa.array(values) for name, values in (categorical or {}).items()}
    numbers = {name: np.asarray(v, dtype=np.float64) for name, v in (numeric or {}).items()}
    rows = len(next(iter(columns.values()))) if columns else len(next(iter(numbers.values())))
    return Batch(
        categorical=columns,
        numeric=numbers,
        labels=np.zeros(rows, np.float32),
        weights=None,
        positions=np.arange(rows),
        oracle=None,
        time=None,
    )


def _vocabulary(values: list, **finish: object) -> tuple[str, ...]:
    builder = SpecBuilder(["x"], [], exact_values=finish.pop("exact_values", 1000))  # type: ignore[arg-type]
    for start in range(0, len(values), 7):  # several batches, as a stream delivers them
        builder.update(_batch({"x": values[start : start + 7]}))
    field = builder.finish(**finish).fields[0]  # type: ignore[arg-type]
    assert isinstance(field, CategoricalField)
    return field.vocabulary


def _edges(values: np.ndarray, num_bins: int, binning: str = "quantile") -> tuple[float, ...]:
    builder = SpecBuilder([], ["x"], binning, num_bins)  # type: ignore[arg-type]
    for part in np.array_split(values, 5):
        builder.update(_batch(numeric={"x": part}))
    field = builder.finish().fields[0]
    assert isinstance(field, NumericField)
    return field.bin_edges


def test_vocabulary_is_sorted_by_count_then_value() -> None:
    assert _vocabulary(["b", "a", "c", "a", "b", None, "", "d"], min_count=1) == (
        "a",
        "b",
        "c",
        "d",
    )


def test_min_count_and_the_cap_drop_rare_values() -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]
    assert _vocabulary(values, min_count=2) == ("a", "b", "c")
    assert _vocabulary(values, min_count=1, max_vocab=2) == ("a", "b")


def test_without_a_min_count_each_field_picks_its_own() -> None:
    """A long tail of ids (values seen about twice) keeps values seen 5 times or more; a
    field whose values repeat keeps every value, even one seen once."""
    tail = [f"id{i // 2}" for i in range(494)] + ["hot"] * 6
    assert _vocabulary(tail) == ("hot",)
    repeated = ["a"] * 300 + ["b"] * 199 + ["c"]
    assert _vocabulary(repeated) == ("a", "b", "c")
    builder = SpecBuilder(["tail", "repeated"], [])
    builder.update(_batch({"tail": tail, "repeated": repeated}))
    assert [f.min_count for f in builder.finish().fields] == [5, 1]  # type: ignore[union-attr]


def test_integer_ids_are_spelled_as_the_service_spells_numbers() -> None:
    builder = SpecBuilder(["x"], [])
    builder.update(_batch({"x": [7, 7, 12]}))
    vocabulary = builder.finish(min_count=1).fields[0].vocabulary  # type: ignore[union-attr]
    assert vocabulary == ("7", "12")


def test_past_the_bound_the_sketch_keeps_the_heavy_hitters() -> None:
    rng = np.random.default_rng(0)
    ranks = np.minimum(rng.zipf(1.3, 50_000), 20_000)
    values = [f"v{r}" for r in ranks]
    builder = SpecBuilder(["x"], [], exact_values=500)
    for start in range(0, len(values), 5_000):
        builder.update(_batch({"x": values[start : start + 5_000]}))
    assert builder.sketched_fields() == ["x"]
    vocabulary = builder.finish(min_count=20).fields[0].vocabulary  # type: ignore[union-attr]
    counts = {f"v{r}": c for r, c in zip(*np.unique(ranks, return_counts=True), strict=True)}
    frequent = sorted((v for v, c in counts.items() if c >= 40), key=lambda v: -counts[v])
    assert vocabulary[:10] == tuple(frequent[:10])  # the head, in order
    assert set(frequent) <= set(vocabulary)  # nothing clearly frequent is lost
    assert all(counts[v] >= 10 for v in vocabulary)  # and the tail stays out


def test_quantile_bins_are_equal_count() -> None:
    edges = _edges(np.arange(1000, dtype=np.float64), num_bins=4)
    assert edges == pytest.approx((250, 500, 750), abs=2)


def test_point_masses_keep_bins_of_their_own() -> None:
    """A count column that is 60% zeros: 0, 1 and 2 must not share a bin (Criteo's I-columns
    lose their 0-vs-1 signal when they do)."""
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [np.zeros(6000), np.ones(500), np.full(300, 2.0), rng.integers(3, 400, 3200)]
    )
    rng.shuffle(values)
    spec_field = NumericField(name="x", binning="quantile", bin_edges=_edges(values, 16))
    encoder = FeatureEncoder(FeatureSpec(fields=(spec_field,)))
    bins = encoder.encode_field(0, np.array([0.0, 1.0, 2.0, 3.0]))
    assert len(set(bins[:3].tolist())) == 3
    used = np.unique(encoder.encode_field(0, values))
    below_zero = 1  # the open first bin, for negative values this column never has
    assert len(used) == spec_field.size - NUM_RESERVED - below_zero  # no empty bin between


def test_log_bins_cover_the_range() -> None:
    edges = _edges(np.array([0.0, 3.0, 100.0, np.nan, 5.0]), num_bins=4, binning="log")
    assert edges[0] == 0.0
    assert edges[-1] >= 100.0


def test_constant_or_empty_numeric_column() -> None:
    assert _edges(np.array([np.nan, np.nan, np.nan, np.nan, np.nan]), 8) == ()
    assert len(_edges(np.full(10, 3.0), 8)) <= 2  # one value: at most {3} and the rest


def test_fields_keep_the_source_order() -> None:
    builder = SpecBuilder(["site"], ["price"])
    builder.update(_batch({"site": ["a", "b"]}, {"price": [1.0, 2.0]}))
    spec = builder.finish()
    assert [type(f) for f in spec.fields] == [CategoricalField, NumericField]
    assert spec.names == ("site", "price")
