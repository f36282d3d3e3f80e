"""Every size threshold of the serving path, measured on both sides of it.

    make bench-thresholds    # or: .venv/bin/python -m benchmarks.thresholds

Each threshold chooses between two exact ways of doing one thing by the size of the input
(value by value or with numpy, dicts or a hash table, a Python scan or numpy). Here each is
forced to one side and then the other (the constant set past every size, then to zero),
and the same public call runs on the same inputs at a sweep of sizes, the two sides taking
turns call by call, each call on freshly decoded values as a request brings them. The
report gives each side's median, the side the threshold picks, and what that pick costs
against the faster side at each size. Beside them: the score cache doorkeeper's sparsity,
the vocabulary table's window, how long encoding a large batch holds the event loop, and
FastAPI's telemetry on and off. Writes docs/THRESHOLDS.md and docs/thresholds.json; the
code's comments link their sections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import numpy as np

import app.features.encoder as encoder_module
import app.features.table as table_module
import app.protocol.tensors as tensors_module
from app.cache import ScoreCache
from app.features.encoder import FeatureEncoder
from app.features.spec import CategoricalField, FeatureSpec, NumericField
from app.features.table import VocabularyDicts, VocabularyTable
from app.protocol.tensors import decode_bytes
from app.repository.store import POINTER_FILE
from benchmarks.asgi import per_request_us
from support.payloads import bytes_tensor, load_spec, unique_rows
from support.reports import machine, relative
from support.servers import ROOT

PAST_ANY = 10**9  # a threshold no size reaches: the small side everywhere
BUDGET_S = 0.15  # each side's time per size: enough calls for a steady median
Patches = tuple[tuple[Any, str, object], ...]  # (owner, attribute, value) set for a call
Call = Callable[[], object]  # one timed call, its inputs made
Fresh = Callable[[], list[object]]  # a maker of a request's values, freshly decoded


@dataclass
class Sweep:
    """One threshold measured on both sides at each size."""

    key: str  # the report's anchor
    title: str
    where: str  # the constant, where the code keeps it
    value: int
    unit: str  # what a size counts
    small: str  # the side at or below the threshold
    large: str  # the side above it
    workload: str
    sizes: list[int] = field(default_factory=list)
    small_us: list[float] = field(default_factory=list)
    large_us: list[float] = field(default_factory=list)

    def picks_small(self, size: int) -> bool:
        return size <= self.value

    def add(self, size: int, small_us: float, large_us: float) -> None:
        self.sizes.append(size)
        self.small_us.append(small_us)
        self.large_us.append(large_us)

    def crossover(self) -> int | None:
        """The first size from which the large side is faster at every size measured."""
        found = None
        for size, small, large in zip(self.sizes, self.small_us, self.large_us, strict=True):
            faster = large < small
            found = (found or size) if faster else None
        return found

    def worst_loss(self) -> float:
        """The most the threshold's pick costs against the faster side, as a fraction."""
        losses = []
        for size, small, large in zip(self.sizes, self.small_us, self.large_us, strict=True):
            picked = small if self.picks_small(size) else large
            losses.append(picked / min(small, large) - 1.0)
        return max(losses, default=0.0)


@contextmanager
def forced(patches: Patches) -> Iterator[None]:
    """Module or class attributes set for the block (a threshold forced to one side)."""
    with ExitStack() as stack:
        for owner, name, value in patches:
            stack.enter_context(mock.patch.object(owner, name, value))
        yield


def in_turns(
    small: Callable[[], Call],
    large: Callable[[], Call],
    small_side: Patches,
    large_side: Patches,
    agree: Callable[[Any, Any], bool] | None = None,
) -> tuple[float, float]:
    """Median µs of each side's call, taking turns: ``small()`` and ``large()`` prepare one
    call each (fresh inputs, untimed) and return it; each runs with its side forced. The
    two sides' first answers must be the same (``agree``; by default equal values): a
    threshold chooses between exact ways, never between answers."""
    times: tuple[list[float], list[float]] = ([], [])
    answers: list[Any] = []
    spent = 0.0
    sides = [(small, small_side, times[0]), (large, large_side, times[1])]
    while spent < 2 * BUDGET_S or len(times[0]) < 20:
        # every other turn the other side first, so neither always runs on a warmer cache
        for prepare, patches, out in sides if len(times[0]) % 2 == 0 else sides[::-1]:
            with forced(patches):
                call = prepare()
                started = time.perf_counter()
                answer = call()
                took = time.perf_counter() - started
            out.append(took)
            spent += took
            if len(answers) < 2:
                answers.append(answer)
        if len(times[0]) == 1 and not (agree or _same)(*answers):
            raise SystemExit(f"the two sides answer differently: {answers[0]!r} / {answers[1]!r}")
        if len(times[0]) >= 20_000:
            break
    return statistics.median(times[0][1:]) * 1e6, statistics.median(times[1][1:]) * 1e6


def _same(one: Any, other: Any) -> bool:
    return bool(np.asarray(one).tolist() == np.asarray(other).tolist())


def _fresh(values: list[object]) -> Fresh:
    """A maker of ``values`` as a request brings them: decoded from JSON each time, so each
    string is a new object whose hash is not computed yet."""
    body = msgspec.json.encode(values)
    return lambda: msgspec.json.decode(body)


def _row_values(
    encoder: FeatureEncoder, rows: Sequence[Mapping[str, object]]
) -> tuple[list[object], list[object]]:
    categorical = [row.get(name) for row in rows for name in encoder.categorical_names]
    numeric = [row.get(name) for row in rows for name in encoder.numeric_names]
    return categorical, numeric


def small_batch_values(label: str, spec: FeatureSpec) -> Sweep:
    """The service's batch encoding: value by value, or the batch at once with numpy."""
    encoder = FeatureEncoder(spec)
    encoder.warm_lookups()
    fields = len(spec.fields)
    sweep = Sweep(
        "small_batch_values",
        f"Encoding a /predict batch: value by value or the batch at once ({label})",
        "app/features/encoder.py: SMALL_BATCH_VALUES",
        encoder_module.SMALL_BATCH_VALUES,
        "values (rows x fields)",
        "value by value",
        "the batch at once",
        f"{label}, {fields} fields: `FeatureEncoder.encode_values` on a batch's values, "
        "decoded from JSON for every call",
    )
    for rows in (1, 2, 4, 6, 8, 12, 16, 24, 32, 64, 128):
        categorical, numeric = _row_values(encoder, unique_rows(spec, rows, seed=rows))
        fresh_categorical, fresh_numeric = _fresh(categorical), _fresh(numeric)

        def prepare(c: Fresh = fresh_categorical, n: Fresh = fresh_numeric, r: int = rows) -> Call:
            a, b = c(), n()
            return lambda: encoder.encode_values(a, b, r)

        small, large = in_turns(
            prepare,
            prepare,
            ((encoder_module, "SMALL_BATCH_VALUES", PAST_ANY),),
            ((encoder_module, "SMALL_BATCH_VALUES", 0),),
        )
        sweep.add(rows * fields, small, large)
    return sweep


def small_column_rows(label: str, spec: FeatureSpec) -> Sweep:
    """V2 tensors (typed columns): each value in Python, or each column with numpy."""
    encoder = FeatureEncoder(spec)
    encoder.warm_lookups()
    sweep = Sweep(
        "small_column_rows",
        f"Encoding V2 tensors: value by value or a column at a time ({label})",
        "app/features/encoder.py: SMALL_COLUMN_ROWS",
        encoder_module.SMALL_COLUMN_ROWS,
        "rows",
        "value by value",
        "a column at a time",
        f"{label}, {len(spec.fields)} fields: `FeatureEncoder.encode_columns` on one typed "
        "array a field (text as str, numbers as float64), as the V2 protocol decodes them",
    )
    for rows in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128):
        sample = unique_rows(spec, rows, seed=rows)
        columns: dict[str, np.ndarray] = {}
        for f in spec.fields:
            values = [row.get(f.name) for row in sample]
            if isinstance(f, CategoricalField):
                columns[f.name] = np.array(["" if v is None else str(v) for v in values])
            else:
                columns[f.name] = np.array([np.nan if v is None else v for v in values], float)

        def prepare(c: dict[str, np.ndarray] = columns, r: int = rows) -> Call:
            return lambda: encoder.encode_columns(c, r)

        small, large = in_turns(
            prepare,
            prepare,
            ((encoder_module, "SMALL_COLUMN_ROWS", PAST_ANY),),
            ((encoder_module, "SMALL_COLUMN_ROWS", 0),),
        )
        sweep.add(rows, small, large)
    return sweep


def merged_bins(label: str, spec: FeatureSpec) -> Sweep:
    """A batch's numbers binned in one search of all fields' edges, or a field at a time."""
    numeric = FeatureSpec(fields=tuple(f for f in spec.fields if isinstance(f, NumericField)))
    encoder = FeatureEncoder(numeric)
    edges = sum(len(f.bin_edges) for f in numeric.fields if isinstance(f, NumericField))
    bins = encoder_module._Bins
    sweep = Sweep(
        "merged_max_rows",
        f"Binning a batch's numbers: all fields' edges at once or a field at a time ({label})",
        "app/features/encoder.py: _Bins.MERGED_MAX_ROWS",
        bins.MERGED_MAX_ROWS,
        "rows",
        "one search of all edges",
        "a search a field",
        f"{label}'s {len(numeric.fields)} numeric fields ({edges} edges in all): "
        "`FeatureEncoder.encode_values` with numbers only, decoded from JSON for every call",
    )
    for rows in (8, 32, 64, 96, 128, 192, 256, 512, 1024):
        _, values = _row_values(encoder, unique_rows(spec, rows, seed=rows))
        fresh = _fresh(values)

        def prepare(n: Fresh = fresh, r: int = rows) -> Call:
            v = n()
            return lambda: encoder.encode_values([], v, r)

        small, large = in_turns(
            prepare,
            prepare,
            ((encoder_module, "SMALL_BATCH_VALUES", 0), (bins, "MERGED_MAX_ROWS", PAST_ANY)),
            ((encoder_module, "SMALL_BATCH_VALUES", 0), (bins, "MERGED_MAX_ROWS", 0)),
        )
        sweep.add(rows, small, large)
    return sweep


def _vocabularies(fields: int, values: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [
        [f"f{j}_{v:x}{rng.integers(1 << 20):05x}" for v in range(values)] for j in range(fields)
    ]


def dicts_or_table() -> Sweep:
    """A batch's categorical values looked up in one dict a field, or one numpy table."""
    rows = 100
    sweep = Sweep(
        "dicts_max_values",
        "Looking up a batch's categorical values: dicts or one hash table",
        "app/features/table.py: DICTS_MAX_VALUES",
        table_module.DICTS_MAX_VALUES,
        "vocabulary values, all fields",
        "one dict a field",
        "one hash table",
        f"{rows}-row batches, every value drawn from its field's vocabulary (2% unseen), "
        "decoded from JSON for every call: `VocabularyDicts.find` against `VocabularyTable.find`",
    )
    shapes = (
        (10, 200),
        (26, 250),
        (26, 500),
        (26, 750),
        (26, 1_000),
        (26, 2_000),
        (26, 5_000),
        (26, 20_000),
    )
    for fields, per_field in shapes:
        vocabularies = _vocabularies(fields, per_field, seed=per_field)
        dicts, table = VocabularyDicts(vocabularies), VocabularyTable(vocabularies)
        rng = np.random.default_rng(fields * per_field)
        values: list[object] = [
            f"unseen-{rng.integers(1 << 30)}"
            if rng.uniform() < 0.02
            else vocabularies[j][int(rng.integers(per_field))]
            for _ in range(rows)
            for j in range(fields)
        ]
        fresh = _fresh(values)

        def dict_call(f: Fresh = fresh, d: VocabularyDicts = dicts) -> Call:
            v = f()
            return lambda: d.find(v, rows)

        def table_call(f: Fresh = fresh, t: VocabularyTable = table) -> Call:
            v = f()
            return lambda: t.find(v, rows)

        small, large = in_turns(dict_call, table_call, (), (), agree=_agree_where_found)
        sweep.add(fields * per_field, small, large)
    return sweep


def _agree_where_found(dicts: np.ndarray, table: np.ndarray) -> bool:
    """The table leaves a few keys to the exact lookup (NOT_FOUND); the rest must agree."""
    both = (dicts != table_module.NOT_FOUND) & (table != table_module.NOT_FOUND)
    return bool((dicts[both] == table[both]).all()) and bool(both.mean() > 0.9)


def scan_elements(equal: bool) -> Sweep:
    """A BYTES tensor decoded by a scan in Python, or found and cut with numpy."""
    rng = np.random.default_rng(3)
    constant = "_SCAN_EQUAL_ELEMENTS" if equal else "_SCAN_ELEMENTS"
    kind = "equal lengths (hashed ids)" if equal else "mixed lengths"
    sweep = Sweep(
        "scan_equal_elements" if equal else "scan_elements",
        f"Decoding a BYTES tensor of {kind}: a scan or numpy",
        f"app/protocol/tensors.py: {constant}",
        getattr(tensors_module, constant),
        "elements",
        "a scan in Python",
        "numpy",
        "`decode_bytes` on one tensor framed as the binary tensor extension lays it out: "
        + (
            "16-character hex ids"
            if equal
            else "ids of 1 to 12 characters (the same number decides which of a request's "
            "text tensors are decoded as one chain, not measured here)"
        ),
    )
    for count in (1, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256):
        if equal:
            elements = [f"{int(v):016x}".encode() for v in rng.integers(1 << 62, size=count)]
        else:
            elements = [f"{int(v):x}"[: int(n)].encode() for v, n in
                        zip(rng.integers(1 << 48, size=count), rng.integers(1, 13, size=count),
                            strict=True)]  # fmt: skip
        raw = bytes_tensor(elements)

        def prepare(r: bytes = raw, n: int = count) -> Call:
            return lambda: decode_bytes("c0", r, n)

        scan_side = (
            (tensors_module, "_SCAN_ELEMENTS", PAST_ANY),
            (tensors_module, "_SCAN_EQUAL_ELEMENTS", PAST_ANY),
        )
        small, large = in_turns(
            prepare, prepare, scan_side, ((tensors_module, "_SCAN_ELEMENTS", 0),)
        )
        sweep.add(count, small, large)
    return sweep


def doorkeeper(maxsize: int = 100_000, rows: int = 100) -> list[dict[str, float]]:
    """The score cache's admission at a few sparsities: the memory the cache takes at start
    (its doorkeeper's tables, traced), how many one-off rows of an all-miss batch it lets
    through (false positives), and what a batch's lookup and store cost with it, against
    the cache off."""
    rng = np.random.default_rng(5)
    results = []
    for bits in (4, 16, 64, 256):
        with mock.patch("app.cache._BITS_PER_ENTRY", bits):
            tracemalloc.start()
            cache = ScoreCache(maxsize, ttl_s=3600)
            allocated = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
        cache.serve({"v": 1 << 20})
        _all_miss_batches(cache, rng, maxsize // 1000, 1000)  # a generation of marks
        us, through = _all_miss_batches(cache, rng, 400, rows)
        results.append(
            {"bits": bits, "mib": allocated / 2**20, "false_positives": through / rows, "us": us}
        )
    us, _ = _all_miss_batches(ScoreCache(0, ttl_s=3600), rng, 400, rows)
    results.append({"bits": 0, "mib": 0.0, "false_positives": 0.0, "us": us})
    return results


def _all_miss_batches(
    cache: ScoreCache, rng: np.random.Generator, batches: int, rows: int
) -> tuple[float, float]:
    """Median µs of a batch of rows never seen, looked up and stored, and the mean rows a
    batch the cache looked up (past its doorkeeper)."""
    times, through = [], []
    for _ in range(batches):
        indices = rng.integers(1 << 20, size=(rows, 10))
        started = time.perf_counter()
        lookup = cache.lookup("v", indices)
        lookup.scores[lookup.misses] = 0.5
        cache.store(lookup)
        times.append(time.perf_counter() - started)
        through.append(len(lookup.looked_up))
    return statistics.median(times) * 1e6, float(np.mean(through))


def telemetry(model_dir: Path) -> dict[str, float]:
    """µs a request through the whole app in process, FastAPI's telemetry off and on."""
    from app.core.config import Settings
    from app.main import create_app

    spec = load_spec(model_dir)
    hit = [json.dumps({"features": unique_rows(spec, 1, seed=4)[0]}).encode()]
    out: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3):
        for name, flag in (("off", "false"), ("on", "true")):
            env = {"CTR_MODEL_REPOSITORY": str(model_dir), "CTR_OTEL": flag}
            with mock.patch.dict(os.environ, env):
                app = create_app(Settings())
            out[name].append(per_request_us(app, hit, 5_000))
    return {name: statistics.median(values) for name, values in out.items()}


def encode_hold(spec: FeatureSpec) -> list[dict[str, float]]:
    """How long encoding a large batch holds the event loop, by rows, against what a hand-off
    to a thread costs (the service encodes in a thread past ``LARGE_BATCH_ROWS``)."""
    encoder = FeatureEncoder(spec)
    encoder.warm_lookups()
    results = []
    for rows in (256, 1024, 4096):
        categorical, numeric = _row_values(encoder, unique_rows(spec, rows, seed=rows))
        fresh_c, fresh_n = _fresh(categorical), _fresh(numeric)
        times = []
        for _ in range(max(5, 2000 // rows)):
            a, b = fresh_c(), fresh_n()
            started = time.perf_counter()
            encoder.encode_values(a, b, rows)
            times.append(time.perf_counter() - started)
        results.append({"rows": rows, "ms": statistics.median(times) * 1e3})

    async def hand_offs() -> float:
        times = []
        for _ in range(2000):
            started = time.perf_counter()
            await asyncio.to_thread(int)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e3

    results.append({"rows": 0, "ms": asyncio.run(hand_offs())})
    return results


def table_window(spec: FeatureSpec, rows: int = 100) -> list[dict[str, float]]:
    """The hash table's window: keys it leaves to the exact lookup, and a batch's find."""
    vocabularies = [list(f.vocabulary) for f in spec.fields if isinstance(f, CategoricalField)]
    rng = np.random.default_rng(6)
    values: list[object] = [
        vocabulary[int(rng.integers(len(vocabulary)))]
        for _ in range(rows)
        for vocabulary in vocabularies
    ]
    fresh = _fresh(values)
    tables = {}
    for window in (2, 4, 8, 16):
        further = np.arange(1, window)
        with forced(((table_module, "WINDOW", window), (table_module, "_FURTHER", further))):
            tables[window] = VocabularyTable(vocabularies)
    times: dict[int, list[float]] = {window: [] for window in tables}
    for _ in range(1000):
        for window, table in tables.items():
            further = np.arange(1, window)
            with forced(((table_module, "WINDOW", window), (table_module, "_FURTHER", further))):
                given = fresh()
                started = time.perf_counter()
                table.find(given, rows)
                times[window].append(time.perf_counter() - started)
    keys = sum(len(v) + 2 for v in vocabularies)
    return [
        {"window": window, "keys": keys, "unstored": table.unstored,
         "us": statistics.median(times[window]) * 1e6}
        for window, table in tables.items()
    ]  # fmt: skip


def run(model_dir: Path, production_dir: Path) -> dict[str, Any]:
    specs = {"default model": load_spec(model_dir)}
    if (production_dir / POINTER_FILE).is_file():
        specs["production NFFM"] = load_spec(production_dir)
    sweeps: list[Sweep] = []
    for label, spec in specs.items():
        sweeps.append(small_batch_values(label, spec))
    for label, spec in specs.items():
        sweeps.append(small_column_rows(label, spec))
    sweeps.append(merged_bins(*list(specs.items())[-1]))
    sweeps.append(dicts_or_table())
    sweeps.append(scan_elements(equal=False))
    sweeps.append(scan_elements(equal=True))
    largest = list(specs.items())[-1]
    return {
        "sweeps": [asdict(s) for s in sweeps],
        "doorkeeper": doorkeeper(),
        "window": {"model": largest[0], "by_window": table_window(largest[1])},
        "encode_hold": {
            "model": largest[0],
            "fields": len(largest[1].fields),
            "by_rows": encode_hold(largest[1]),
        },
        "telemetry": telemetry(model_dir),
        "models": {label: len(spec.fields) for label, spec in specs.items()},
    }


def _us(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _anchor(key: str) -> str:
    return f'<a id="{key}"></a>'


def _sweep_section(sweep: dict[str, Any], anchored: set[str]) -> list[str]:
    s = Sweep(**sweep)
    crossover = s.crossover()
    lines = [] if s.key in anchored else [_anchor(s.key)]
    anchored.add(s.key)
    lines += [
        f"## {s.title}",
        "",
        f"`{s.where} = {s.value:,}`: {s.small} up to {s.value:,} {s.unit}, {s.large} past it. "
        f"{s.workload}; median µs a call, the two sides taking turns.",
        "",
        f"| {s.unit} | {s.small} µs | {s.large} µs | faster | the threshold picks "
        "| its pick costs |",
        "|---|---|---|---|---|---|",
    ]
    for size, small, large in zip(s.sizes, s.small_us, s.large_us, strict=True):
        picked = small if s.picks_small(size) else large
        faster = s.small if small <= large else s.large
        pick = s.small if s.picks_small(size) else s.large
        cost = picked / min(small, large) - 1
        lines.append(
            f"| {size:,} | {_us(small)} | {_us(large)} | {faster} | {pick} | {cost:+.0%} |"
        )
    where = "at no size measured" if crossover is None else f"from {crossover:,} {s.unit} on"
    lines += ["", f"{s.large.capitalize()} is faster {where}; the threshold's pick costs at "
              f"most {s.worst_loss():+.0%} against the faster side.", ""]  # fmt: skip
    return lines


def report(results: dict[str, Any], started: str) -> str:
    sweeps = [Sweep(**s) for s in results["sweeps"]]
    lines = [
        "# The serving path's thresholds, measured on both sides",
        "",
        f"Generated by `make bench-thresholds` (benchmarks/thresholds.py) on {started}. "
        f"Machine: {machine()}. In process, one thread; compare figures within one run only.",
        "",
        "Each threshold picks one of two exact ways of doing a thing by the size of the input. "
        "Each is forced to one side, then the other, and the same public call runs on the same "
        "inputs at each size, the two sides taking turns call by call, every call on values "
        "freshly decoded from JSON (a new string's hash is not computed yet, as in a request). "
        "*Its pick costs*: the threshold's side against the faster one at that size.",
        "",
        "| threshold | value | the larger side is faster from | its pick costs at most |",
        "|---|---|---|---|",
    ]
    for s in sweeps:
        crossover = s.crossover()
        found = "never measured" if crossover is None else f"{crossover:,} {s.unit}"
        lines.append(
            f"| [{s.where}](#{s.key}): {s.title[0].lower()}{s.title[1:]} "
            f"| {s.value:,} | {found} | {s.worst_loss():+.0%} |"
        )
    lines.append("")
    anchored: set[str] = set()
    for sweep in results["sweeps"]:
        lines += _sweep_section(sweep, anchored)
    off = next(d for d in results["doorkeeper"] if d["bits"] == 0)
    lines += [
        _anchor("doorkeeper"),
        "## The score cache's doorkeeper: bits an entry",
        "",
        "`app/cache.py: _BITS_PER_ENTRY = 64`. A cache of 100,000 entries after a generation of "
        "marks (100,000 distinct rows), then 100-row batches of rows never seen: how many the "
        "doorkeeper lets through to a lookup and a store (its false positives, each a wasted "
        "lookup and store) and the batch's lookup + store, median µs; against the cache off "
        f"({_us(off['us'])} µs).",
        "",
        "| bits an entry | doorkeeper MiB | one-off rows let through "
        "| µs a 100-row all-miss batch |",
        "|---|---|---|---|",
    ]
    for d in results["doorkeeper"]:
        if d["bits"]:
            lines.append(
                f"| {d['bits']} | {d['mib']:.1f} | {d['false_positives']:.1%} | {_us(d['us'])} |"
            )
    window = results["window"]
    lines += [
        "",
        _anchor("window"),
        "## The vocabulary hash table's window",
        "",
        f"`app/features/table.py: WINDOW = 8`. The {window['model']}'s vocabularies in one table "
        "(a load of at most 1/2): keys that fit no slot of their window (left to the exact "
        "lookup), and a 100-row batch's find, median µs.",
        "",
        "| window | keys | left to the exact lookup | µs a 100-row find |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {w['window']} | {w['keys']:,} | {w['unstored']:,} | {_us(w['us'])} |"
        for w in window["by_window"]
    ]
    hold = results["encode_hold"]
    hand_off = next(h for h in hold["by_rows"] if h["rows"] == 0)
    lines += [
        "",
        _anchor("large_batch_rows"),
        "## Encoding a large batch off the event loop",
        "",
        "`app/scoring/service.py: LARGE_BATCH_ROWS = 1024`: past it a batch is encoded in a "
        "thread, so the event loop keeps answering others. What encoding holds the loop, "
        f"{hold['model']} ({hold['fields']} fields), median ms; a hand-off to a thread and "
        f"back (`asyncio.to_thread`) costs the request {hand_off['ms']:.3f} ms.",
        "",
        "| rows | encoding holds the loop, ms |",
        "|---|---|",
    ]
    lines += [f"| {h['rows']:,} | {h['ms']:.2f} |" for h in hold["by_rows"] if h["rows"]]
    otel = results["telemetry"]
    lines += [
        "",
        _anchor("otel"),
        "## FastAPI's telemetry (`CTR_OTEL`, off by default)",
        "",
        "A cache hit through the whole app in process (benchmarks/asgi.py), the default "
        "model, telemetry off and on, 3 rounds taking turns, median µs a request: "
        f"**{otel['off']:.1f} off, {otel['on']:.1f} on** ({otel['on'] - otel['off']:+.1f} µs; "
        "with no provider configured, every request still asks OpenTelemetry for one).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    parser.add_argument("--production-dir", type=Path, default=ROOT / "models/production/nffm")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/THRESHOLDS.md")
    args = parser.parse_args()
    if not (args.model_dir / POINTER_FILE).is_file():
        parser.error(f"{relative(args.model_dir)}: no model (`make model` trains it)")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = run(args.model_dir.resolve(), args.production_dir.resolve())
    text = report(results, started)
    args.out.write_text(text)
    args.out.with_name("thresholds.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
