"""Hypothesis strategies shared by the encoder's fuzz tests and the reliability suite."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import strategies as st

from app.features.encoder import FeatureEncoder
from app.features.spec import CategoricalField, FeatureSpec, NumericField
from support.payloads import bytes_tensor

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

# -- the Open Inference Protocol's infer framing ----------------------------------------

DATATYPES = ["BYTES", "FP32", "FP64", "INT64", "INT32", "BOOL", "UINT8", "FP16", "STRING", ""]


FIELDS = {"c0": "BYTES", "c1": "BYTES", "c3": "BYTES", "n0": "FP32", "n1": "FP32"}
FAULTS = [
    "none",
    "none",
    "truncate",
    "header",
    "datatype",
    "shape",
    "size",
    "name",
    "junk",
    "rows",
]


@st.composite
def v2_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A valid request of N rows, in JSON or binary, then at most one fault."""
    n = draw(st.integers(1, 6))
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=5, unique=True))
    inputs: list[dict[str, object]] = []
    blobs: list[bytes] = []
    for name in names:
        datatype = FIELDS[name]
        data: list[str] | list[float]
        if datatype == "BYTES" or (draw(st.booleans()) and name.startswith("n")):
            values = draw(st.lists(st.text(max_size=6), min_size=n, max_size=n))
            if name.startswith("n"):
                values = [str(draw(st.floats(-1e3, 1e3))) if v else "" for v in values]
            datatype, raw, data = "BYTES", bytes_tensor(v.encode() for v in values), values
        else:
            numbers = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n, max_size=n))
            datatype = draw(st.sampled_from(["FP32", "FP64"]))
            dtype = "<f4" if datatype == "FP32" else "<f8"
            raw, data = np.array(numbers, dtype=dtype).tobytes(), numbers
        entry: dict[str, object] = {"name": name, "datatype": datatype, "shape": [n]}
        if draw(st.booleans()):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        inputs.append(entry)
    fault = draw(st.sampled_from(FAULTS))
    target = inputs[draw(st.integers(0, len(inputs) - 1))]
    if fault == "datatype":
        target["datatype"] = draw(st.sampled_from(DATATYPES))
    elif fault == "shape":
        target["shape"] = draw(st.lists(st.integers(-2, 70), min_size=0, max_size=3))
    elif fault == "size" and "parameters" in target:
        size = target["parameters"]["binary_data_size"]  # type: ignore[index]
        target["parameters"] = {"binary_data_size": size + draw(st.integers(-9, 9))}
    elif fault == "name":
        target["name"] = draw(st.sampled_from(["zzz", "", "C0", "c0 "]))
    elif fault == "rows":
        target["shape"] = [n + 1]
    head: dict[str, object] = {"inputs": inputs}
    if draw(st.booleans()):
        head["parameters"] = {"binary_data_output": draw(st.booleans())}
    if draw(st.booleans()):
        head["outputs"] = [{"name": draw(st.sampled_from(["score", "score", "other"]))}]
    encoded = json.dumps(head).encode()
    body = encoded + b"".join(blobs)
    headers = {"content-type": "application/octet-stream"}
    if blobs or fault == "header":
        headers["Inference-Header-Content-Length"] = str(len(encoded))
    if fault == "header":
        headers["Inference-Header-Content-Length"] = draw(
            st.sampled_from(["12abc", "", "-1", str(len(body) + 1)])
            | st.integers(0, len(body)).map(str)
        )
    elif fault == "truncate":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif fault == "junk":
        body += draw(st.binary(min_size=1, max_size=16))
    return body, headers


# -- hostile bodies: deep nesting, long arrays, any endpoint that reads a body ----------

BODY_ENDPOINTS = ("/predict", "/explain", "/v2/models/{model}/infer", "/admin/reload")
# Where the nesting goes in a body each endpoint otherwise accepts.
_PLACES = (
    '{"features": {"c0": %s}}',
    '{"features": %s}',
    '{"instances": [%s]}',
    '{"instances": %s}',
    '{"inputs": [{"name": "c0", "datatype": "BYTES", "shape": [1], "data": %s}]}',
    '{"inputs": %s}',
    '{"model_dir": %s}',
    "%s",
)


def _nested(kind: str, depth: int) -> str:
    if kind == "objects":
        return '{"a": ' * depth + "1" + "}" * depth
    if kind == "arrays":
        return "[" * depth + "1" + "]" * depth
    if kind == "mixed":
        return '[{"a": ' * (depth // 2) + "null" + "}]" * (depth // 2)
    return "[" + ",".join(['{"c0": "c0_1"}'] * depth) + "]"  # a long array of objects


@st.composite
def hostile_bodies(draw: st.DrawFn, max_bytes: int) -> tuple[str, bytes]:
    """``(endpoint, body)``: objects, arrays or both nested up to 100,000 levels deep, or a
    long array of objects, at some place of a body the endpoint reads; at most
    ``max_bytes + 1`` bytes (one past the limit, so the limit's refusal is drawn too)."""
    endpoint = draw(st.sampled_from(BODY_ENDPOINTS))
    kind = draw(st.sampled_from(("objects", "arrays", "mixed", "long")))
    depth = draw(st.one_of(st.integers(1, 50), st.integers(50, 5_000), st.just(100_000)))
    body = (draw(st.sampled_from(_PLACES)) % _nested(kind, depth)).encode()
    return endpoint, body[: max_bytes + 1]


def body_at(size: int) -> bytes:
    """A /predict batch body of exactly ``size`` bytes (white space pads it)."""
    filler, head, tail = '{"c0": "c0_1"},', '{"instances": [', '{"c0": "c0_2"}]}'
    body = (head + filler * ((size - len(head) - len(tail)) // len(filler)) + tail).encode()
    return body + b" " * (size - len(body))
