"""Request rows drawn from a model's own spec.json, for load tests and benchmarks.

Torch-free (numpy + the shared spec). Values follow the vocabulary order, which is sorted by
training count, so a Zipf draw over it looks like real traffic: a hot head, a long tail, a
few values never seen in training, some missing fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.features.spec import CategoricalField, FeatureSpec
from app.repository.manifest import ModelManifest
from app.repository.store import resolve_model_dir

Row = dict[str, str | float | None]


def load_spec(model_dir: Path) -> FeatureSpec:
    """The feature spec of ``model_dir``'s current version (or of a flat directory)."""
    return ModelManifest.load(resolve_model_dir(model_dir)).features


def _zipf_choice(rng: np.random.Generator, size: int, count: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return rng.choice(size, size=count, p=weights / weights.sum())


def random_rows(
    spec: FeatureSpec,
    count: int,
    seed: int = 0,
    unseen_rate: float = 0.02,
    missing_rate: float = 0.03,
    exponent: float = 1.1,
) -> list[Row]:
    """``count`` rows; each field is Zipf over its vocabulary (or uniform over its bins)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list[str | float | None]] = {}
    for field in spec.fields:
        if isinstance(field, CategoricalField) and field.vocabulary:
            picks = _zipf_choice(rng, len(field.vocabulary), count, exponent)
            values: list[str | float | None] = [field.vocabulary[i] for i in picks]
            for i in np.flatnonzero(rng.uniform(size=count) < unseen_rate):
                values[i] = f"unseen-{rng.integers(1 << 30)}"
        elif isinstance(field, CategoricalField):
            values = [None] * count
        else:
            edges = np.asarray(field.bin_edges or (0.0,))
            low, high = edges[0] - 1.0, edges[-1] + 1.0
            values = [round(float(v), 4) for v in rng.uniform(low, high, count)]
        for i in np.flatnonzero(rng.uniform(size=count) < missing_rate):
            values[i] = None
        columns[field.name] = values
    return [{name: columns[name][i] for name in spec.names} for i in range(count)]


def unique_rows(spec: FeatureSpec, count: int, seed: int = 0) -> list[Row]:
    """Rows whose encoded forms are pairwise distinct (cache misses by construction).

    The first categorical fields are drawn uniformly from their whole vocabulary, so the
    combination space is far larger than ``count``; exact duplicates are dropped and redrawn.
    """
    seen: set[tuple[object, ...]] = set()
    rows: list[Row] = []
    rng = np.random.default_rng(seed)
    while len(rows) < count:
        for row in random_rows(spec, count, int(rng.integers(1 << 30)), exponent=0.0):
            key = tuple(row.values())
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows[:count]


def zipf_stream(pool_size: int, count: int, exponent: float, seed: int = 0) -> np.ndarray:
    """Positions into a pool of ``pool_size`` rows, Zipf-distributed: repeats hit the cache."""
    return _zipf_choice(np.random.default_rng(seed), pool_size, count, exponent)


def v2_tensors(spec: FeatureSpec, rows: list[Row]) -> dict[str, np.ndarray]:
    """Rows as Open Inference Protocol tensors: one array per field, in the model's order.

    Categorical fields are BYTES (object arrays of bytes, as tritonclient takes them),
    numeric ones FP32; an empty string or NaN spells missing.
    """
    tensors: dict[str, np.ndarray] = {}
    for field in spec.fields:
        values = [row.get(field.name) for row in rows]
        if isinstance(field, CategoricalField):
            tensors[field.name] = np.array(
                [b"" if v is None else str(v).encode() for v in values], dtype=object
            )
        else:
            tensors[field.name] = np.array(
                [np.nan if v is None else v for v in values], dtype=np.float32
            )
    return tensors


def v2_json_body(spec: FeatureSpec, rows: list[Row]) -> dict[str, object]:
    """An infer request in the protocol's plain JSON form."""
    inputs = []
    for name, values in v2_tensors(spec, rows).items():
        if values.dtype == object:
            data: list[object] = [v.decode() for v in values]
            datatype = "BYTES"
        else:
            data = [None if np.isnan(v) else float(v) for v in values.tolist()]
            datatype = "FP32"
        inputs.append({"name": name, "datatype": datatype, "shape": [len(rows)], "data": data})
    return {"inputs": inputs}


def bytes_tensor(values: Iterable[bytes]) -> bytes:
    """BYTES elements as the binary tensor data extension lays them out: a 4-byte
    little-endian length, then the bytes, for each."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def v2_binary_body(spec: FeatureSpec, rows: list[Row]) -> tuple[bytes, int]:
    """An infer request in the binary tensor data form: (body, JSON header length).

    BYTES elements are a 4-byte little-endian length and the bytes; FP32 values raw. It
    asks for the scores back as binary FP32.
    """
    inputs, blobs = [], []
    for name, values in v2_tensors(spec, rows).items():
        if values.dtype == object:
            raw = bytes_tensor(values)
            datatype = "BYTES"
        else:
            raw, datatype = values.astype("<f4").tobytes(), "FP32"
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": [len(rows)],
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), len(head)


def triton_inputs(module: Any, rows: list[Row], tensors: Sequence[tuple[str, str]]) -> list[Any]:
    """Inputs of the stock Triton client ``module`` (``tritonclient.http`` or ``.grpc``):
    one tensor per ``(field, datatype)``, BYTES as UTF-8, numbers as FP32."""
    inputs = []
    for name, datatype in tensors:
        if datatype == "BYTES":
            values = np.array([str(row[name]).encode() for row in rows], dtype=object)
        else:
            values = np.array([row[name] for row in rows], dtype=np.float32)
        tensor = module.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    return inputs
