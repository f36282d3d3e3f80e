"""Hypothesis strategies shared by the encoder's fuzz tests and the reliability suite."""

from __future__ import annotations

from hypothesis import strategies as st

from app.features.encoder import FeatureEncoder
from app.features.spec import CategoricalField, FeatureSpec, NumericField

SPEC = FeatureSpec(
    fields=(
        CategoricalField(name="site", vocabulary=("news", "5", "sports")),
        NumericField(name="age", binning="quantile", bin_edges=(18.0, 30.0, 50.0)),
        CategoricalField(name="empty", vocabulary=()),
    )
)
ENCODER = FeatureEncoder(SPEC)
FIELD_NAMES = ("site", "age", "empty", "other")  # "other" is not a field of SPEC

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=5,
)
rows = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values)
