"""Two passes to shards: the trainer's vectorised encoding equals the service's per-row
encoding; the split needs no row count; the shard cache is reused and never stale."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from app.features.encoder import FeatureEncoder  # noqa: E402
from app.features.spec import CategoricalField, FeatureSpec, NumericField  # noqa: E402
from training.data import ColumnRoles, DataError, open_source  # noqa: E402
from training.dataset import encode_batch, prepare  # noqa: E402
from training.models import DEFAULTS  # noqa: E402
from training.split import TEST, TRAIN, VAL, SplitRule  # noqa: E402
from training.train import TrainConfig  # noqa: E402

VOCABULARY = ("a", "b", "10", "7", "ü-ñ", "x" * 30)
EDGES = (-1.5, 0.0, 1.0, 2.0, 1e6)
SPEC = FeatureSpec(
    fields=(
        CategoricalField(name="site", vocabulary=VOCABULARY),
        CategoricalField(name="app", vocabulary=("p", "q")),
        NumericField(name="price", binning="quantile", bin_edges=EDGES),
    )
)
_categorical = st.one_of(
    st.sampled_from(VOCABULARY),  # seen
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda t: t and "," not in t and '"' not in t),  # mostly unseen
    st.none(),  # missing
)
_number = st.one_of(
    st.sampled_from(EDGES),  # exactly on an edge: ties go to the upper bin
    st.floats(-1e7, 1e7, allow_nan=False, allow_infinity=False),
    st.integers(-5, 5).map(float),
    st.none(),
)


def _text(value: object) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(_categorical, _categorical, _number), min_size=1, max_size=30))
def test_vectorised_encoding_equals_the_services_row_encoding(
    rows: list[tuple[object, object, object]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The file as the trainer streams it (numbers as text, empty = missing) against the
    same rows as JSON a client posts (numbers as numbers, null = missing)."""
    path = tmp_path_factory.mktemp("prop") / "rows.csv"
    lines = ["label,site,app,price"] + [
        ",".join(["1", _text(s), _text(a), _text(p)]) for s, a, p in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    source = open_source(path, roles=ColumnRoles(categorical=("site", "app"), numeric=("price",)))
    encoder = FeatureEncoder(SPEC)
    streamed = np.concatenate([encode_batch(encoder, batch) for batch in source.batches()])
    posted = encoder.encode_rows([{"site": s, "app": a, "price": p} for s, a, p in rows])
    np.testing.assert_array_equal(streamed, posted)
    as_strings = encoder.encode_rows(
        [{"site": s, "app": a, "price": None if p is None else _text(p)} for s, a, p in rows]
    )
    np.testing.assert_array_equal(streamed, as_strings)  # numbers sent as strings


def test_parquet_integer_ids_encode_as_json_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"label": [0, 1, 1], "site": [10, 7, 99], "app": ["p", None, "q"]}), path
    )
    source = open_source(path, roles=ColumnRoles(categorical=("site", "app")))
    encoder = FeatureEncoder(SPEC)
    (batch,) = source.batches()
    posted = encoder.encode_rows([{"site": 10, "app": "p"}, {"site": 7}, {"site": 99, "app": "q"}])
    np.testing.assert_array_equal(encode_batch(encoder, batch), posted)


def test_hash_split_needs_no_row_count() -> None:
    rule = SplitRule(val_fraction=0.1, test_fraction=0.2, seed=4)
    whole = rule.by_position(np.arange(100_000))
    pieces = np.concatenate(
        [rule.by_position(np.arange(s, s + 999)) for s in range(0, 100_000, 999)]
    )
    np.testing.assert_array_equal(whole[: len(pieces)], pieces[:100_000])
    shares = np.bincount(whole, minlength=3) / len(whole)
    assert shares == pytest.approx([0.7, 0.1, 0.2], abs=0.01)
    other = SplitRule(val_fraction=0.1, test_fraction=0.2, seed=5).by_position(np.arange(1000))
    assert not np.array_equal(other, whole[:1000])


def test_time_split_holds_out_the_future(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    days = ["2026-11-0" + str(d) for d in range(1, 10)]
    path.write_text(
        "label,site,day\n" + "".join(f"{i % 2},s{i % 5},{days[i % 9]}\n" for i in range(900))
    )
    source = open_source(path, time_column="day")
    assert "day" not in source.feature_names
    rule = SplitRule(0.1, 0.1, 0, time_column="day", val_from="2026-11-07", test_from="2026-11-09")
    (batch,) = source.batches()
    splits = rule.assign(batch)
    day = np.array(batch.time.to_pylist())
    assert set(day[splits == TRAIN]) == set(days[:6])
    assert set(day[splits == VAL]) == {"2026-11-07", "2026-11-08"}
    assert set(day[splits == TEST]) == {"2026-11-09"}
    with pytest.raises(DataError, match="after"):
        SplitRule(0.1, 0.1, 0, time_column="day", val_from="2026-11-09", test_from="2026-11-07")


def _config(**settings: object) -> TrainConfig:
    return TrainConfig(model=DEFAULTS["lr"], **settings)  # type: ignore[arg-type]


def test_shards_are_cached_and_a_changed_file_is_never_read_stale(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,site\n" + "".join(f"{i % 2},s{i % 7}\n" for i in range(2000)))
    cache = tmp_path / "cache"
    first = prepare(open_source(path), _config(), cache)
    built = (first.directory / "meta.json").stat().st_mtime_ns
    again = prepare(open_source(path), _config(), cache)
    assert again.directory == first.directory
    assert (again.directory / "meta.json").stat().st_mtime_ns == built  # reused, not rebuilt
    assert len(first.train) + len(first.val) + len(first.test) == 2000
    assert first.train.indices.dtype == np.int8  # 7 values + 2 reserved rows fit in int8

    other_setting = prepare(open_source(path), _config(min_count=300), cache)
    assert other_setting.directory != first.directory
    time.sleep(0.01)
    path.write_text("label,site\n" + "".join(f"{i % 2},t{i % 3}\n" for i in range(2000)))
    changed = prepare(open_source(path), _config(), cache)
    assert changed.directory != first.directory
    assert set(changed.spec.fields[0].vocabulary) == {"t0", "t1", "t2"}  # type: ignore[union-attr]
    meta = json.loads((changed.directory / "meta.json").read_text())
    assert meta["rows"]["train"] == len(changed.train)


def test_every_skipped_row_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rows = [f"{i % 2},s{i % 7}" for i in range(500)]
    rows[10] = "5,s1"
    rows[20] = "1,s1,extra"
    path.write_text("label,site\n" + "\n".join(rows) + "\n")
    prepared = prepare(open_source(path), _config(), tmp_path / "cache", bad_rows="skip")
    assert prepared.skipped == 2
    listed = prepared.skipped_file.read_text().splitlines()[1:]
    assert [line.split("\t")[1] for line in listed] == ["12", "22"]
    assert prepared.rows == 498


def test_oracle_and_weights_follow_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        "label,site,p_true\n"
        + "".join(f"{i % 2},s{i % 3},{(i % 2) * 0.5 + 0.25}\n" for i in range(3000))
    )
    prepared = prepare(open_source(path), _config(), tmp_path / "cache")
    test = prepared.test.load()
    assert test.oracle is not None
    np.testing.assert_allclose(test.oracle, test.labels * 0.5 + 0.25)
    assert not math.isnan(float(test.oracle.mean()))


def test_shuffled_batches_cover_every_row_once(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,site\n" + "".join(f"{i % 2},s{i}\n" for i in range(5000)))
    # every site is seen once: min-count 1 gives each row an index of its own to follow
    prepared = prepare(open_source(path), _config(min_count=1), tmp_path / "cache")
    rng = np.random.default_rng(0)
    batches = list(prepared.train.shuffled(64, rng, block_rows=256, buffer_blocks=3))
    seen = np.concatenate([b.indices[:, 0] for b in batches])
    np.testing.assert_array_equal(np.sort(seen), np.sort(prepared.train.load().indices[:, 0]))
    in_file_order = prepared.train.load().indices[:64, 0]
    assert not np.array_equal(batches[0].indices[:, 0], in_file_order)


def test_the_same_data_and_settings_give_the_same_shards(tmp_path: Path) -> None:
    """No randomness outside the seed: two preparations in two caches agree byte for byte
    (the numeric sample is keyed by row hashes, the split by the seed)."""
    path = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    counts = rng.geometric(0.2, 20_000) * (rng.uniform(size=20_000) < 0.4)
    path.write_text(
        "label,site,count\n" + "".join(f"{i % 2},s{i % 50},{c}\n" for i, c in enumerate(counts))
    )
    roles = ColumnRoles(numeric=("count",))
    first = prepare(open_source(path, roles=roles), _config(), tmp_path / "one")
    second = prepare(open_source(path, roles=roles), _config(), tmp_path / "two")
    assert first.spec == second.spec
    np.testing.assert_array_equal(first.train.load().indices, second.train.load().indices)
