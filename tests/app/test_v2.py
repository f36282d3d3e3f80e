"""The Open Inference Protocol (KServe V2) with the stock Triton clients, HTTP and gRPC."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from support.payloads import bytes_tensor  # noqa: E402
from support.servers import free_port  # noqa: E402
from support.servers import server as start_server  # noqa: E402

pytestmark = pytest.mark.slow  # starts processes: servers or the training CLI

ROWS = [
    {"c0": "c0_1", "c3": "c3_7", "n0": 2.5},
    {"c0": "never-seen", "n1": 0.3},
    {},
    {"c1": "c1_2", "c2": "c2_0", "n0": -4.0, "n1": 1e6},
]


@pytest.fixture(scope="module")
def endpoints(model_dir: Path) -> Iterator[tuple[str, str]]:
    """(HTTP base URL, gRPC address) of one real `python -m app`."""
    grpc_port = free_port()
    env = {"CTR_MODEL_REPOSITORY": str(model_dir), "CTR_GRPC_PORT": str(grpc_port)}
    with start_server([sys.executable, "-m", "app"], env) as base:
        yield base, f"127.0.0.1:{grpc_port}"


def _metadata(base: str) -> dict:
    return httpx.get(f"{base}/v2/models/nffm", timeout=5).json()


def _tensors(metadata: dict, rows: list[dict[str, object]]) -> dict[str, np.ndarray]:
    """Rows as one array per field: '' and NaN spell missing."""
    arrays = {}
    for tensor in metadata["inputs"]:
        name = tensor["name"]
        if tensor["datatype"] == "BYTES":
            arrays[name] = np.array([str(r.get(name, "")).encode() for r in rows], dtype=object)
        else:
            arrays[name] = np.array([r.get(name, np.nan) for r in rows], dtype=np.float32)
    return arrays


def _inputs(module, metadata: dict, rows: list[dict[str, object]]) -> list:
    inputs, arrays = [], _tensors(metadata, rows)
    for tensor in metadata["inputs"]:
        values = arrays[tensor["name"]]
        infer_input = module.InferInput(tensor["name"], [len(rows)], tensor["datatype"])
        infer_input.set_data_from_numpy(values)
        inputs.append(infer_input)
    return inputs


def _predict(base: str, rows: list[dict[str, object]]) -> np.ndarray:
    # /predict gets the same values the float32 tensors carry
    exact = [
        {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in r.items()} for r in rows
    ]
    body = httpx.post(f"{base}/predict", json={"instances": exact}, timeout=10).json()
    return np.array(body["predictions"], dtype=np.float32)


def test_health_and_metadata_over_http(endpoints: tuple[str, str]) -> None:
    base, _ = endpoints
    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("nffm")
    assert not client.is_model_ready("other")
    server = client.get_server_metadata()
    assert server["name"] == "ctrserve"
    assert "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata("nffm")
    version = metadata["versions"][0]
    assert client.get_model_metadata("nffm", model_version=version)["name"] == "nffm"
    assert [t["name"] for t in metadata["inputs"]][:2] == ["c0", "c1"]
    assert {t["datatype"] for t in metadata["inputs"]} == {"BYTES", "FP32"}
    assert metadata["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]


def test_binary_http_infer_equals_predict(endpoints: tuple[str, str]) -> None:
    base, _ = endpoints
    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    metadata = _metadata(base)
    result = client.infer("nffm", _inputs(httpclient, metadata, ROWS), request_id="r-1")
    response = result.get_response()
    assert response["id"] == "r-1"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == 4 * len(ROWS)
    np.testing.assert_array_equal(result.as_numpy("score"), _predict(base, ROWS))
    # the same score cache as /predict: every row is a hit now
    again = client.infer("nffm", _inputs(httpclient, metadata, ROWS))
    assert again.get_response()["parameters"]["cache_hits"] == len(ROWS)


def test_a_large_batch_scores_as_predict_over_http_and_grpc(endpoints: tuple[str, str]) -> None:
    """300 rows: each BYTES tensor past the small-tensor scan, so the request's text tensors
    are decoded as one chain (with missing and unseen values among them)."""
    base, address = endpoints
    rows: list[dict[str, object]] = [
        {
            "c0": f"c0_{i % 40}",
            "c1": "" if i % 7 == 0 else f"c1_{i % 30}",
            "c3": f"never-seen-{i}" if i % 11 == 0 else f"c3_{i % 9}",
            "n0": float(i % 13) - 3.0,
        }
        for i in range(300)
    ]
    metadata = _metadata(base)
    expected = _predict(base, rows)
    over_http = httpclient.InferenceServerClient(base.removeprefix("http://")).infer(
        "nffm", _inputs(httpclient, metadata, rows)
    )
    np.testing.assert_array_equal(over_http.as_numpy("score"), expected)
    over_grpc = grpcclient.InferenceServerClient(address).infer(
        "nffm", _inputs(grpcclient, metadata, rows)
    )
    np.testing.assert_array_equal(over_grpc.as_numpy("score"), expected)


def _streamed(body: bytes) -> Iterator[bytes]:
    """``body`` in pieces a moment apart, so the server reads it in several messages."""
    for start in range(0, len(body), 64):
        time.sleep(0.02)
        yield body[start : start + 64]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v2/models/nffm/infer", "v2 binary"),
        ("/v2/models/nffm/versions/0123/infer", "v2 unknown version"),
        ("/v2/models/nffm/infer", "v2 bad body"),
        ("/predict", "predict"),
    ],
)
def test_a_body_in_pieces_gets_the_answer_of_one_in_one_piece(
    endpoints: tuple[str, str], path: str, kind: str
) -> None:
    """Bodies that arrive whole are answered before routing (app/api/fast_predict.py),
    bodies that stream in by the routes: the same status, headers and answer."""
    base, _ = endpoints
    headers = {"content-type": "application/json"}
    if kind == "predict":
        body = json.dumps({"instances": ROWS}).encode()
    elif kind == "v2 bad body":
        body = b'{"inputs": [{"name": "c0", "datatype": "BYTES", "shape": [2], "data": [1]}]}'
    else:
        inputs = _inputs(httpclient, _metadata(base), ROWS)
        output = httpclient.InferRequestedOutput("score", binary_data=True)
        body, length = httpclient.InferenceServerClient.generate_request_body(inputs, [output])
        headers = {"content-type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(length)}  # fmt: skip
    whole = httpx.post(f"{base}{path}", content=body, headers=headers, timeout=10)
    pieces = httpx.post(f"{base}{path}", content=_streamed(body), headers=headers, timeout=10)
    assert (pieces.status_code, pieces.headers["content-type"]) == (
        whole.status_code,
        whole.headers["content-type"],
    )
    assert pieces.headers.get("inference-header-content-length") == whole.headers.get(
        "inference-header-content-length"
    )
    assert whole.status_code == {"v2 unknown version": 404, "v2 bad body": 400}.get(kind, 200)
    if whole.headers["content-type"] == "application/octet-stream":
        length = int(whole.headers["inference-header-content-length"])
        scores = np.frombuffer(whole.content[length:], dtype="<f4")
        np.testing.assert_array_equal(scores, _predict(base, ROWS))
        assert pieces.content[length:] == whole.content[length:]
    else:
        assert pieces.json() == whole.json()


def test_json_infer_with_nested_shape_and_numbers_as_text(endpoints: tuple[str, str]) -> None:
    base, _ = endpoints
    body = {
        "inputs": [
            {"name": "c0", "datatype": "BYTES", "shape": [2, 1], "data": [["c0_1"], [""]]},
            {"name": "n0", "datatype": "BYTES", "shape": [2], "data": ["2.5", ""]},
            {"name": "c3", "datatype": "BYTES", "shape": [2], "data": ["c3_7", "c3_7"]},
        ]
    }
    response = httpx.post(f"{base}/v2/models/nffm/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["outputs"][0]["name"] == "score"
    expected = _predict(base, [{"c0": "c0_1", "n0": 2.5, "c3": "c3_7"}, {"c3": "c3_7"}])
    np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"], np.float32), expected)


def test_grpc_health_metadata_and_infer(endpoints: tuple[str, str]) -> None:
    base, address = endpoints
    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("nffm")
    assert client.get_server_metadata().name == "ctrserve"
    metadata = client.get_model_metadata("nffm", as_json=True)
    assert metadata["inputs"][0] == {"name": "c0", "datatype": "BYTES", "shape": ["-1"]}
    http_metadata = _metadata(base)
    result = client.infer("nffm", _inputs(grpcclient, http_metadata, ROWS))
    np.testing.assert_array_equal(result.as_numpy("score"), _predict(base, ROWS))
    assert result.get_response().model_version == http_metadata["versions"][0]


def test_grpc_errors_name_the_problem(endpoints: tuple[str, str]) -> None:
    _, address = endpoints
    client = grpcclient.InferenceServerClient(address)
    unknown = grpcclient.InferInput("nope", [1], "BYTES")
    unknown.set_data_from_numpy(np.array([b"x"], dtype=object))
    with pytest.raises(InferenceServerException, match="input 'nope': unknown field"):
        client.infer("nffm", [unknown])
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.infer("other", [unknown])
    text = grpcclient.InferInput("n0", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"cheap"], dtype=object))
    with pytest.raises(InferenceServerException, match="input 'n0': expected a number"):
        client.infer("nffm", [text])
    # one value a row, as over HTTP: [N] or [N, 1], never a deeper or a scalar tensor
    for shape in ([1, 1, 1], []):
        odd = grpcclient.InferInput("n0", shape, "FP32")
        odd.set_data_from_numpy(np.ones(shape, dtype=np.float32))
        with pytest.raises(InferenceServerException, match=r"is not \[N\] or \[N, 1\]"):
            client.infer("nffm", [odd])


def test_fp16_inputs_score_as_over_http(endpoints: tuple[str, str]) -> None:
    """FP16 has no typed contents in the protocol: tritonclient sends it raw, over gRPC as over
    HTTP's binary extension, and both score it as the same values in FP32."""
    base, address = endpoints
    values = np.array([2.5, -4.0, 0.3], dtype=np.float16)
    scores = []
    for module, target in ((grpcclient, address), (httpclient, base.removeprefix("http://"))):
        tensor = module.InferInput("n0", [3], "FP16")
        tensor.set_data_from_numpy(values)
        scores.append(
            module.InferenceServerClient(target).infer("nffm", [tensor]).as_numpy("score")
        )
    as_fp32 = grpcclient.InferInput("n0", [3], "FP32")
    as_fp32.set_data_from_numpy(values.astype(np.float32))
    expected = grpcclient.InferenceServerClient(address).infer("nffm", [as_fp32]).as_numpy("score")
    for got in scores:
        np.testing.assert_array_equal(got, expected)


def _binary_body(
    tensors: list[tuple[str, str, list[int], bytes]], outputs=None
) -> tuple[bytes, int]:
    head = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
            for n, d, s, raw in tensors
        ]
    }
    if outputs is not None:
        head["outputs"] = outputs
    encoded = json.dumps(head).encode()
    return encoded + b"".join(raw for *_, raw in tensors), len(encoded)


JSON_ROW = b'{"inputs": [{"name": "c0", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}'


@pytest.mark.parametrize(
    ("body", "header", "status", "message"),
    [
        (
            *_binary_body([("c0", "BYTES", [2], bytes_tensor([b"a"]))]),
            400,
            "input 'c0': 1 BYTES elements",
        ),
        (*_binary_body([("c0", "BYTES", [1], b"\x05\x00\x00\x00ab")]), 400, "runs past the data"),
        (*_binary_body([("n0", "FP32", [2], b"\x00" * 7)]), 400, "7 bytes of FP32 data"),
        (*_binary_body([("n0", "FP16X", [1], b"\x00" * 4)]), 400, "datatype 'FP16X'"),
        (*_binary_body([("n0", "FP32", [1, 2], b"\x00" * 8)]), 400, "is not [N] or [N, 1]"),
        (
            *_binary_body([("n0", "FP32", [1], b"\x00" * 4), ("n1", "FP32", [2], b"\x00" * 8)]),
            400,
            "disagree on the number of rows",
        ),
        (
            *_binary_body([("c0", "BYTES", [1], bytes_tensor([b"a"]))], [{"name": "p"}]),
            400,
            "output 'p'",
        ),
        (b'{"inputs": [', None, 400, "invalid inference request"),
        (b'{"inputs": []}', None, 400, "inputs"),
        (
            b'{"inputs": [{"name": "n0", "datatype": "FP16", "shape": [1], "data": [1e6]}]}',
            None,
            400,
            "input 'n0': inf is not a finite number",  # too large for FP16
        ),
        (
            b'{"inputs": [{"name": "c0", "datatype": "BYTES", "shape": [2], "data": ["a", 5]}]}',
            None,
            400,
            "input 'c0': BYTES data must be strings, got int",
        ),
        (
            b'{"inputs": [{"name": "n0", "datatype": "FP32", "shape": [2], "data": [1, "2"]}]}',
            None,
            400,
            "input 'n0': FP32 data must be numbers or null, got str",
        ),
        (
            b'{"inputs": [{"name": "n0", "datatype": "INT64", "shape": [1], "data": [1.5]}]}',
            None,
            400,
            "input 'n0': INT64 data must be integers, got float",
        ),
        (
            b'{"inputs": [{"name": "n0", "datatype": "BOOL", "shape": [2], "data": [true, 1]}]}',
            None,
            400,
            "input 'n0': BOOL data must be true or false",
        ),
        (JSON_ROW + b"x" * 10, len(JSON_ROW), 400, "10 bytes of binary data follow"),
        (b"{}", 99, 400, "outside the 2-byte body"),
    ],
)
def test_http_errors_are_4xx_and_name_the_problem(
    endpoints: tuple[str, str], body: bytes, header: int | None, status: int, message: str
) -> None:

    base, _ = endpoints
    headers = {"content-type": "application/octet-stream"}
    if header is not None:
        headers["Inference-Header-Content-Length"] = str(header)
    response = httpx.post(f"{base}/v2/models/nffm/infer", content=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_unknown_model_and_version_are_404(endpoints: tuple[str, str]) -> None:
    base, _ = endpoints
    assert httpx.get(f"{base}/v2/models/other", timeout=5).status_code == 404
    missing = httpx.get(f"{base}/v2/models/nffm/versions/0123/ready", timeout=5)
    assert missing.status_code == 404
    assert "no version or label '0123'" in missing.json()["error"]
