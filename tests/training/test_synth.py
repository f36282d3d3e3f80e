from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")

from training import synth


def test_deterministic_and_well_formed() -> None:
    a, b = synth.generate(2000, seed=5), synth.generate(2000, seed=5)
    assert a.equals(b)
    assert a["p_true"].between(0, 1).all()
    assert set(a["label"].unique()) <= {0, 1}
    # labels are drawn from p_true: the observed rate tracks the mean probability
    assert a["label"].mean() == pytest.approx(a["p_true"].mean(), abs=0.03)


def test_values_are_zipf_distributed() -> None:
    frame = synth.generate(20_000, seed=0)
    counts = frame["c0"].value_counts()
    assert counts.iloc[0] > 10 * counts.iloc[50]  # a heavy head and a long tail


def test_truth_depends_on_seed_only() -> None:
    """One world per seed, whatever the row count: each file's p_true is that world's
    probability of its rows, and another seed's world scores the same rows differently."""
    small, large = synth.generate(500, seed=1), synth.generate(5000, seed=1)
    for frame in (small, large):
        np.testing.assert_allclose(synth.true_probability(frame, 1), frame["p_true"], atol=1e-6)
    elsewhere = synth.true_probability(large, 2)
    assert np.abs(elsewhere - large["p_true"]).mean() > 0.05
    with pytest.raises(ValueError, match="rows"):
        synth.generate(0)


def test_aggregate_keeps_every_impression() -> None:
    frame = synth.generate(5000, seed=2)
    agg = synth.aggregate(frame)
    assert agg["impressions"].sum() == 5000
    assert agg["clicks"].sum() == frame["label"].sum()
    assert agg["weight"].sum() == pytest.approx(1.0)
    assert np.allclose(agg["rate"], agg["clicks"] / agg["impressions"])


def test_criteo_layout_world(tmp_path) -> None:
    """The Criteo-shaped world: 13 counts + 26 tokens, written chunk by chunk (gzip here),
    readable with Criteo's roles, labels drawn from p_true."""
    from training.data import CRITEO_CATEGORICAL, CRITEO_NUMERIC, open_source
    from training.synth_criteo import CARDINALITIES

    path = tmp_path / "criteo.tsv.gz"
    assert synth.write(path, 30_000, seed=1, layout="criteo") == 30_000
    source = open_source(path)
    assert (source.categorical, source.numeric) == (CRITEO_CATEGORICAL, CRITEO_NUMERIC)
    assert source.has_oracle
    batches = list(source.batches())
    labels = np.concatenate([b.labels for b in batches])
    oracle = np.concatenate([b.oracle for b in batches])
    assert labels.mean() == pytest.approx(oracle.mean(), abs=0.02)
    counts = np.concatenate([b.numeric["I1"] for b in batches])
    assert (counts[~np.isnan(counts)] == 0).mean() > 0.15  # counts with a mass at zero
    biggest = CARDINALITIES.index(max(CARDINALITIES))
    tokens = {t for b in batches for t in b.categorical[f"C{biggest + 1}"].to_pylist()}
    assert len(tokens) > 5_000  # a long tail of ids, as in the real logs


def test_a_criteo_shaped_day_drifts_in_the_fields_it_shifts(tmp_path) -> None:
    """Another day of the Criteo-shaped world: shifted fields bring values never drawn
    before (tokens of their own), the others keep their values; p_true still drives labels."""
    from training.data import open_source

    def tokens(path: Path, field: str) -> set[str]:
        return {t for b in open_source(path).batches() for t in b.categorical[field].to_pylist()}

    day0, day1 = tmp_path / "day0.tsv", tmp_path / "day1.tsv"
    synth.write(day0, 20_000, seed=1, layout="criteo")
    synth.write(day1, 20_000, seed=1, layout="criteo", day=1, shift=("C7",))
    shifted_before, shifted_after = tokens(day0, "C7") - {None}, tokens(day1, "C7") - {None}
    kept_before, kept_after = tokens(day0, "C1") - {None}, tokens(day1, "C1") - {None}
    assert len(shifted_after - shifted_before) > 0.5 * len(shifted_after)
    assert len(kept_after & kept_before) > 0.8 * len(kept_after)
    batches = list(open_source(day1).batches())
    labels = np.concatenate([b.labels for b in batches])
    oracle = np.concatenate([b.oracle for b in batches])
    assert labels.mean() == pytest.approx(oracle.mean(), abs=0.02)
    with pytest.raises(ValueError, match="--shift names no categorical field"):
        synth.write(tmp_path / "bad.tsv", 10, seed=1, layout="criteo", day=1, shift=("c0",))
