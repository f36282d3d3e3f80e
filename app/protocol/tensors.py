"""Open Inference Protocol (KServe V2) tensors: decode requests, encode responses.

Shared by the HTTP routes (JSON and Triton's binary tensor data extension) and the gRPC
service (``raw_input_contents`` or typed contents), so both speak exactly one dialect:

- one input tensor per model field, named as the field, shape ``[N]`` or ``[N, 1]``;
- categorical fields as ``BYTES`` (UTF-8 strings); numeric fields as ``FP32``, ``FP64``,
  ``INT32`` or ``INT64``, or as ``BYTES`` holding numbers written as text; ids may also be
  sent as integers to a categorical field;
- missing is an empty string (``BYTES``), NaN (binary floating point) or null (JSON
  floating point); a field with no tensor is missing in every row;
- one output, :data:`OUTPUT_NAME`, ``FP32`` of shape ``[N]``.

Everything here is columnar numpy: a 1,000-row request is a few array operations per field,
not a Python call per value. No FastAPI, no gRPC.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from app.features.spec import CategoricalField, FeatureSpec

OUTPUT_NAME = "score"
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "ctrserve"
EXTENSIONS = ("binary_tensor_data",)
# Little-endian, as the binary tensor data extension and gRPC raw contents lay them out.
NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = ("BYTES", *NUMERIC_DTYPES)
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix
# BYTES elements are cut into fixed-width rows while those take at most this many times
# the data's own size.
_WIDEST_CUT = 4
# BYTES tensors this short are scanned in Python: docs/THRESHOLDS.md#scan_elements
_SCAN_ELEMENTS = 64
_SCAN_EQUAL_ELEMENTS = 8  # of equal lengths: docs/THRESHOLDS.md#scan_equal_elements


class ProtocolError(ValueError):
    """A request the protocol cannot accept; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: one 1-D array per input, all of ``num_rows`` rows."""

    arrays: dict[str, NDArray[Any]]
    num_rows: int
    id: str = ""
    binary_output: bool = False
    outputs: tuple[str, ...] = field(default=(OUTPUT_NAME,))


# -- the JSON part of an HTTP request ----------------------------------------------------


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    datatype: str
    shape: list[int] = Field(min_length=1, max_length=2)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    # Checked by _from_json, element by element for its datatype: validating arbitrary JSON
    # here first would double the cost of a request's data.
    data: list[Any] | None = None


class _Output(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, JsonValue] = Field(default_factory=dict)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = ""
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    inputs: list[_Tensor] = Field(min_length=1)
    outputs: list[_Output] | None = None


def parse_http(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an HTTP infer body: JSON, or JSON followed by binary tensors.

    Args:
        header_length: the ``Inference-Header-Content-Length`` header (``None``: all JSON).
    """
    if header_length is None:
        head, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
        if not 0 <= size <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length {size} is outside the {len(body)}-byte body"
            )
        head, binary = body[:size], body[size:]
    try:
        request = _Request.model_validate_json(head)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        raise ProtocolError(f"invalid inference request: {where}: {first['msg']}") from None
    decoded: list[tuple[str, NDArray[Any] | None, int]] = []
    strings: list[tuple[str, memoryview, int]] = []  # binary BYTES inputs, decoded together
    offset = 0
    view = memoryview(binary)
    for tensor in request.inputs:
        count = _element_count(tensor.name, tensor.shape)
        size_param = tensor.parameters.get("binary_data_size")
        values: NDArray[Any] | None = None
        if size_param is None:
            if tensor.data is None:
                raise ProtocolError(f"input '{tensor.name}': no 'data' and no binary_data_size")
            values = _from_json(tensor.name, tensor.datatype, tensor.data, len(tensor.shape))
        else:
            if not isinstance(size_param, int) or isinstance(size_param, bool) or size_param < 0:
                raise ProtocolError(f"input '{tensor.name}': binary_data_size must be a byte count")
            if offset + size_param > len(binary):
                raise ProtocolError(
                    f"input '{tensor.name}': binary_data_size {size_param} but only "
                    f"{len(binary) - offset} bytes of binary data are left"
                )
            raw = view[offset : offset + size_param]
            if tensor.datatype == "BYTES":
                strings.append((tensor.name, raw, count))
            else:
                values = decode_raw(tensor.name, tensor.datatype, raw, count)
            offset += size_param
        decoded.append((tensor.name, values, count))
    if offset != len(binary):
        raise ProtocolError(
            f"{len(binary) - offset} bytes of binary data follow the last binary input"
        )
    arrays = _gathered(decoded, decode_bytes_tensors(strings))
    wanted = request.outputs or []
    binary_output = request.parameters.get("binary_data_output") is True or any(
        o.parameters.get("binary_data") is True for o in wanted
    )
    return InferRequest(
        arrays=arrays,
        num_rows=_rows(arrays),
        id=request.id,
        binary_output=binary_output,
        outputs=tuple(o.name for o in wanted) or (OUTPUT_NAME,),
    )


def _from_json(name: str, datatype: str, data: list[Any], rank: int) -> NDArray[Any]:
    flat: list[Any] = data
    for _ in range(rank - 1):  # nested ([[v], [v]]) or already flat: the protocol allows both
        flat = [x for item in flat for x in (item if isinstance(item, list) else [item])]
    # The types of a tensor's values as one set, built in C (not a generator in Python),
    # then the offending value named.
    types = set(map(type, flat))
    if datatype == "BYTES":
        if not types <= {str}:
            bad = next(value for value in flat if type(value) is not str)
            raise ProtocolError(
                f"input '{name}': BYTES data must be strings, got {type(bad).__name__}"
            )
        # numpy's fixed-width strings drop trailing NULs: keep such values exact as objects
        exact = "\x00" in "".join(flat) and any(value.endswith("\x00") for value in flat)
        return np.array(flat, dtype=object if exact else np.str_)
    dtype = _numeric_dtype(name, datatype)
    if dtype.kind == "b":
        if not types <= {bool}:
            raise ProtocolError(f"input '{name}': BOOL data must be true or false")
        return np.array(flat, dtype=dtype)
    # JSON has no NaN: null is a missing value of a floating-point tensor.
    allowed = (int, float, type(None)) if dtype.kind == "f" else (int,)
    if not types <= set(allowed):
        bad = next(value for value in flat if type(value) not in allowed)
        kind = "numbers or null" if dtype.kind == "f" else "integers"
        raise ProtocolError(
            f"input '{name}': {datatype} data must be {kind}, got {type(bad).__name__}"
        )
    if dtype.kind == "f":
        flat = [math.nan if value is None else value for value in flat]
    try:
        # a number too large for a float type becomes inf, which the encoder refuses by name
        with np.errstate(over="ignore"):
            return np.array(flat, dtype=dtype)
    except OverflowError:
        raise ProtocolError(f"input '{name}': a value does not fit {datatype}") from None


def decode_raw(name: str, datatype: str, raw: bytes | memoryview, count: int) -> NDArray[Any]:
    """One numeric tensor's raw bytes (binary extension or gRPC ``raw_input_contents``);
    BYTES tensors are decoded together, by :func:`decode_bytes_tensors`."""
    dtype = _numeric_dtype(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"input '{name}': {len(raw)} bytes of {datatype} data for {count} elements "
            f"(expected {count * dtype.itemsize})"
        )
    return np.frombuffer(raw, dtype=dtype)


def decode_bytes_tensors(
    tensors: Sequence[tuple[str, bytes | memoryview, int]],
) -> list[NDArray[Any]]:
    """Several BYTES tensors of one request, as :func:`decode_bytes` decodes each.

    Text tensors of many elements are decoded as one chain: their data joined, the
    elements found and cut out with one set of numpy calls instead of a set a tensor (a
    1,000-row request of 8 such fields: docs/BENCHMARKS.md, "Decoding a BYTES tensor"), or
    each tensor cut out alone where some values need exact text. When the joined data is not
    such a chain exactly (not text, malformed), every tensor is decoded alone, which also
    names what is wrong; tensors of a few elements always are.
    """
    decoded: list[NDArray[Any] | None] = [None] * len(tensors)
    many = [i for i, (_, _, count) in enumerate(tensors) if count > _SCAN_ELEMENTS]
    if len(many) > 1:
        joined = _joined_text([tensors[i][1] for i in many], [tensors[i][2] for i in many])
        for i, values in zip(many, joined or (), strict=False):
            decoded[i] = values
    return [
        decode_bytes(name, raw, count) if values is None else values
        for (name, raw, count), values in zip(tensors, decoded, strict=True)
    ]


def _joined_text(
    parts: Sequence[bytes | memoryview], counts: Sequence[int]
) -> list[NDArray[Any]] | None:
    """Text tensors decoded as one chain (the text path of :func:`decode_bytes`), or
    ``None`` when they do not make one exactly, each tensor starting at its own first
    element."""
    data = b"".join(parts)
    buffer = np.frombuffer(data, dtype=np.uint8)
    found = _text_starts(buffer, sum(counts))
    if found is None:
        return None
    starts, sizes = found
    lengths = [len(part) for part in parts]
    firsts, begins = np.cumsum(counts) - counts, np.cumsum(lengths) - lengths
    if (starts[firsts] != begins).any():
        return None
    # the common case, cut out in one go: bytes for every tensor, as each alone would be
    # (one long element among a tensor's short ones makes that tensor text alone)
    widest = np.maximum.reduceat(sizes, firsts.astype(np.intp))
    each_fits = (np.asarray(counts) * widest <= _WIDEST_CUT * np.asarray(lengths)).all()
    if each_fits and _fits_fixed_width(data, starts, sizes):
        return np.split(_cut(data, starts, sizes), firsts[1:])
    # else each tensor alone, as text where it needs to be
    return [
        _elements(data[begin : begin + length], starts[first : first + count] - begin,
                  sizes[first : first + count])
        for first, count, begin, length in zip(
            firsts.tolist(), counts, begins.tolist(), lengths, strict=True)
    ]  # fmt: skip


def decode_bytes(name: str, raw: bytes | memoryview, count: int) -> NDArray[Any]:
    """BYTES elements, each a 4-byte little-endian length then its bytes.

    Every element's place depends on the lengths before it, so finding the places is the
    work. Up to _SCAN_ELEMENTS elements (a request of a few rows), a scan from length to
    length in Python beats numpy's fixed cost a call; past it, three paths, each checked to
    give exactly the protocol's chain of elements:

    - equal lengths (hashed ids, fixed-width codes): one numpy view;
    - text (elements shorter than 256 bytes, empty ones allowed): numpy finds each
      non-empty element as a length byte, three zeros and a first byte, the empty ones as
      the four-zero gaps between, and checks that reading byte for byte (a fraction of a
      scan's time: docs/BENCHMARKS.md);
    - anything else: a scan from length to length, which also names what is malformed.

    The elements are then cut out with one row gather. Elements ending
    in a NUL byte, which numpy's fixed-width byte strings would drop, come back as an object
    array of text instead (exact, encoded value by value).
    """
    data = bytes(raw)
    if count == 0:
        if data:
            raise ProtocolError(f"input '{name}': {len(data)} bytes of BYTES data for 0 elements")
        return np.array([], dtype=np.bytes_)
    if len(data) < 4:
        raise ProtocolError(f"input '{name}': BYTES data ends inside an element's length")
    width = int.from_bytes(data[:4], "little")
    equal = len(data) == count * (4 + width)  # every element may be `width` long
    if count <= _SCAN_ELEMENTS and not (equal and count > _SCAN_EQUAL_ELEMENTS):
        return _scanned(name, data, count)
    if equal:
        framed = np.frombuffer(data, dtype=np.dtype([("n", "<u4"), ("v", f"S{width}")]))
        if (framed["n"] == width).all():
            last = np.frombuffer(data, dtype=np.uint8)[3 + width :: 4 + width]
            if width == 0 or not (last == 0).any():
                return framed["v"].copy()
    buffer = np.frombuffer(data, dtype=np.uint8)
    found = _text_starts(buffer, count)
    if found is None:
        places, lengths = _scan(name, data, count)
        found = np.array(places, dtype=np.int64), np.array(lengths, dtype=np.int64)
    return _elements(data, *found)


def _elements(data: bytes, starts: NDArray[np.int64], sizes: NDArray[np.int64]) -> NDArray[Any]:
    """The elements of ``data`` at ``starts`` (``sizes`` long): fixed-width bytes, or exact
    text where those would change them or blow them up."""
    if _fits_fixed_width(data, starts, sizes):
        return _cut(data, starts, sizes)
    return _as_text(data, starts.tolist(), sizes.tolist())


def _fits_fixed_width(data: bytes, starts: NDArray[np.int64], sizes: NDArray[np.int64]) -> bool:
    """Whether numpy's fixed-width bytes hold these elements as they are: they drop
    trailing NULs, and one long element among many short ones would make every row as
    wide (past ``_WIDEST_CUT`` times the data, the elements are kept as text instead)."""
    last = np.frombuffer(data, dtype=np.uint8)[starts + 3 + sizes]  # a prefix byte if empty
    ends_in_nul = bool(((sizes > 0) & (last == 0)).any())
    return not ends_in_nul and len(starts) * int(sizes.max()) <= _WIDEST_CUT * len(data)


def _text_starts(
    buffer: NDArray[np.uint8], count: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """Where each element starts, and its length, if the data is text: ``None`` when it is
    not (or is malformed), for the scan to decide.

    A non-empty element of text is the only place where a non-zero byte (its length) is
    followed by three zeros and a non-zero byte (its first); between two of them, and at
    either end, lie only empty elements: four zero bytes each. That reading is checked
    byte for byte (the gaps' lengths and contents, the count), so it is the data's one
    chain, or ``None``.
    """
    size = len(buffer)
    if size < 4:
        return None
    zero = buffer == 0
    head = ~zero[:-4]
    head &= zero[1:-3]
    head &= zero[2:-2]
    head &= zero[3:-1]
    head &= ~zero[4:]
    found = np.flatnonzero(head)
    lengths = buffer[found].astype(np.int64)
    gap_from = np.concatenate(([0], found + 4 + lengths))
    gaps = np.concatenate((found, [size])) - gap_from
    if (gaps < 0).any() or (gaps & 3).any():
        return None
    empties = gaps >> 2
    if len(found) + int(empties.sum()) != count:
        return None
    if not empties.any():
        return found, lengths
    # the empty elements: where each gap's start, and their places among all elements
    places = np.arange(len(gaps)) + np.cumsum(empties)  # of the element after each gap
    runs = empties > 0
    k = empties[runs]
    within = np.arange(count - len(found)) - np.repeat(np.cumsum(k) - k, k)
    empty_starts = np.repeat(gap_from[runs], k) + 4 * within
    if buffer[empty_starts[:, None] + np.arange(4)].any():
        return None  # a gap holds something other than empty elements
    starts = np.empty(count, dtype=np.int64)
    sizes = np.zeros(count, dtype=np.int64)
    starts[places[:-1]], sizes[places[:-1]] = found, lengths
    starts[np.repeat(places[runs] - k, k) + within] = empty_starts
    return starts, sizes


def _scanned(name: str, data: bytes, count: int) -> NDArray[Any]:
    """A few elements, found by the scan and cut out in Python (the same arrays, and the
    same text fallback, as the numpy paths give)."""
    starts, lengths = _scan(name, data, count)
    elements = [data[p + 4 : p + 4 + n] for p, n in zip(starts, lengths, strict=True)]
    if count * max(lengths) > _WIDEST_CUT * len(data) or any(e[-1:] == b"\0" for e in elements):
        return _as_text(data, starts, lengths)
    return np.array(elements, dtype=np.bytes_)


def _as_text(data: bytes, starts: list[int], lengths: list[int]) -> NDArray[np.object_]:
    """The elements exact, as text, one by one: for those numpy's fixed-width bytes would
    change (a trailing NUL dropped) or blow up (one long element making every row as wide)."""
    return np.array(
        [data[p + 4 : p + 4 + n].decode("utf-8", "replace") for p, n in
         zip(starts, lengths, strict=True)],
        dtype=object,
    )  # fmt: skip


def _scan(name: str, data: bytes, count: int) -> tuple[list[int], list[int]]:
    """Where each of ``count`` elements' length prefix starts, and its length, stepping from
    length to length (checked to end the data)."""
    starts: list[int] = []
    lengths: list[int] = []
    position, end = 0, len(data)
    try:
        for _ in range(count):
            if position == end:
                raise ProtocolError(
                    f"input '{name}': {len(starts)} BYTES elements for shape of {count}"
                )
            (length,) = _LENGTH.unpack_from(data, position)
            starts.append(position)
            lengths.append(length)
            position += 4 + length
    except struct.error:
        raise ProtocolError(f"input '{name}': BYTES data ends inside an element's length") from None
    if position > end:
        raise ProtocolError(f"input '{name}': the last BYTES element runs past the data")
    if position < end:
        raise ProtocolError(f"input '{name}': more BYTES elements than the shape's {count}")
    return starts, lengths


def _cut(data: bytes, starts: NDArray[np.int64], sizes: NDArray[np.int64]) -> NDArray[np.bytes_]:
    """The elements at ``starts`` as fixed-width byte strings: one row gather from windows
    over the data, then the bytes past each element's length zeroed."""
    width = max(int(sizes.max()), 1)
    padded = np.frombuffer(data + bytes(width), dtype=np.uint8)
    windows = as_strided(padded, (len(data) + 1, width), (1, 1), writeable=False)
    cells = windows[starts + 4]
    cells *= np.arange(width, dtype=np.int32) < sizes.astype(np.int32)[:, None]
    return cells.view(f"S{width}").ravel()


def _numeric_dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = NUMERIC_DTYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(
            f"input '{name}': datatype {datatype!r} is not one of {', '.join(DATATYPES)}"
        )
    return dtype


def _element_count(name: str, shape: Sequence[int]) -> int:
    rank = len(shape)
    if rank not in (1, 2) or any(d < 0 for d in shape) or (rank == 2 and shape[1] != 1):
        raise ProtocolError(
            f"input '{name}': shape {list(shape)} is not [N] or [N, 1] (one value per row)"
        )
    return math.prod(shape)


def _add(arrays: dict[str, NDArray[Any]], name: str, values: NDArray[Any], count: int) -> None:
    if name in arrays:
        raise ProtocolError(f"input '{name}' appears twice")
    if len(values) != count:
        raise ProtocolError(f"input '{name}': {len(values)} values for a shape of {count}")
    arrays[name] = values


def _gathered(
    decoded: Sequence[tuple[str, NDArray[Any] | None, int]], strings: Sequence[NDArray[Any]]
) -> dict[str, NDArray[Any]]:
    """Every input's array in the request's order: ``decoded``'s, its gaps (``None``) filled
    from ``strings`` in turn."""
    arrays: dict[str, NDArray[Any]] = {}
    remaining = iter(strings)
    for name, values, count in decoded:
        _add(arrays, name, next(remaining) if values is None else values, count)
    return arrays


def _rows(arrays: Mapping[str, NDArray[Any]]) -> int:
    counts = {name: len(values) for name, values in arrays.items()}
    if len(set(counts.values())) > 1:
        raise ProtocolError(f"inputs disagree on the number of rows: {counts}")
    rows = next(iter(counts.values()))
    if rows == 0:
        raise ProtocolError("the inputs hold no rows")
    return rows


def check_outputs(outputs: Sequence[str]) -> None:
    unknown = [name for name in outputs if name != OUTPUT_NAME]
    if unknown:
        raise ProtocolError(f"unknown output '{unknown[0]}'; this model has '{OUTPUT_NAME}'")


# -- gRPC -----------------------------------------------------------------------------


def gather_grpc(
    inputs: Sequence[tuple[str, str, Sequence[int], NDArray[Any] | None]],
    raw: Sequence[bytes],
) -> tuple[dict[str, NDArray[Any]], int]:
    """Arrays of a gRPC request: each input's typed contents, or its ``raw_input_contents``.

    Args:
        inputs: ``(name, datatype, shape, typed contents or None)`` per input, in order.
        raw: ``raw_input_contents``, one entry per input when used at all.
    """
    if raw and len(raw) != len(inputs):
        raise ProtocolError(
            f"{len(raw)} raw_input_contents for {len(inputs)} inputs (one per input, or none)"
        )
    if not inputs:
        raise ProtocolError("the request has no inputs")
    decoded: list[tuple[str, NDArray[Any] | None, int]] = []
    strings: list[tuple[str, bytes, int]] = []  # raw BYTES inputs, decoded together
    for i, (name, datatype, shape, typed) in enumerate(inputs):
        count = _element_count(name, shape)
        values: NDArray[Any] | None = None
        if raw and datatype == "BYTES":
            strings.append((name, raw[i], count))
        elif raw:
            values = decode_raw(name, datatype, raw[i], count)
        elif typed is not None:
            values = typed
        else:
            raise ProtocolError(f"input '{name}': no contents")
        decoded.append((name, values, count))
    arrays = _gathered(decoded, decode_bytes_tensors(strings))
    return arrays, _rows(arrays)


# -- responses and metadata -----------------------------------------------------------


def http_response(
    model_name: str,
    version: str,
    request_id: str,
    scores: NDArray[np.float32],
    binary: bool,
    cache_hits: int,
) -> tuple[dict[str, JsonValue], bytes]:
    """The JSON part of an infer response, and the binary part (empty unless asked for)."""
    output: dict[str, JsonValue] = {
        "name": OUTPUT_NAME,
        "datatype": "FP32",
        "shape": [len(scores)],
    }
    raw = b""
    if binary:
        raw = scores.astype("<f4", copy=False).tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = scores.tolist()
    answer: dict[str, JsonValue] = {
        "model_name": model_name,
        "model_version": version,
        "parameters": {"cache_hits": cache_hits},
        "outputs": [output],
    }
    if request_id:
        answer["id"] = request_id
    return answer, raw


def server_metadata(version: str) -> dict[str, JsonValue]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(name: str, version: str, spec: FeatureSpec) -> dict[str, JsonValue]:
    """What a client should send: BYTES per categorical field, FP32 per numeric one."""
    inputs: list[JsonValue] = [
        {
            "name": f.name,
            "datatype": "BYTES" if isinstance(f, CategoricalField) else "FP32",
            "shape": [-1],
        }
        for f in spec.fields
    ]
    outputs: list[JsonValue] = [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1]}]
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    }
