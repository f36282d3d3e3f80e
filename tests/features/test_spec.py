from pathlib import Path

import pytest

from app.features.errors import SpecError
from app.features.spec import CategoricalField, FeatureSpec, NumericField, load_json_model


def _spec() -> FeatureSpec:
    return FeatureSpec(
        fields=(
            CategoricalField(name="site", vocabulary=("a", "b", "c")),
            NumericField(name="age", binning="quantile", bin_edges=(1.0, 5.0)),
        )
    )


def test_round_trip(tmp_path: Path) -> None:
    spec = _spec()
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    assert load_json_model(FeatureSpec, tmp_path / "spec.json") == spec


def test_sizes_include_reserved_rows() -> None:
    assert _spec().field_dims == (2 + 3, 2 + 3)


def test_duplicate_field_names_are_refused() -> None:
    field = CategoricalField(name="site", vocabulary=("a",))
    with pytest.raises(ValueError, match="duplicate field names"):
        FeatureSpec(fields=(field, field))


@pytest.mark.parametrize("edges", [(1.0, 1.0), (2.0, 1.0)])
def test_bin_edges_must_increase(edges: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        NumericField(name="x", binning="quantile", bin_edges=edges)


def test_empty_string_cannot_be_a_value() -> None:
    with pytest.raises(ValueError, match="missing"):
        CategoricalField(name="x", vocabulary=("a", ""))


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read"), ("{not json", "not valid JSON"), ('{"fields": []}', "fields")],
)
def test_load_errors_name_the_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "spec.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError, match=message) as info:
        load_json_model(FeatureSpec, path)
    assert str(path) in str(info.value)
