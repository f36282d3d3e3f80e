"""The Open Inference Protocol as others wrote it: every V2 response validated against the
protocol's published schema (the models the protocol's working group generates from
open_inference_rest.yaml, PyPI ``open-inference-openapi``), and KServe's Python SDK (REST
and gRPC) and the client compiled from the protocol's ``open_inference_grpc.proto`` (PyPI
``open-inference-grpc``) against a real `python -m app`: an over-size body's message reaches
the KServe client, and FP16 scores over gRPC as over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

openapi = pytest.importorskip("open_inference.openapi.types")

from support.servers import ROOT, free_port  # noqa: E402
from support.servers import server as start_server  # noqa: E402

pytestmark = pytest.mark.slow  # starts a server and the clients' processes
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def endpoints(model_dir: Path) -> Iterator[tuple[str, str]]:
    grpc_port = free_port()
    env = {
        "CTR_MODEL_REPOSITORY": str(model_dir),
        "CTR_GRPC_PORT": str(grpc_port),
        "CTR_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with start_server([sys.executable, "-m", "app"], env) as base:
        yield base, f"127.0.0.1:{grpc_port}"


def _clients(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "support.oip_clients", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


INFER_OK = {
    "inputs": [
        {"name": "c0", "datatype": "BYTES", "shape": [2], "data": ["c0_1", ""]},
        {"name": "n0", "datatype": "FP32", "shape": [2, 1], "data": [[2.5], [None]]},
    ],
    "outputs": [{"name": "score"}],
}
# (method, path, body or None, status, the schema the body must satisfy)
CALLS = [
    ("GET", "/v2", None, 200, openapi.MetadataServerResponse),
    ("GET", "/v2/models/nffm", None, 200, openapi.MetadataModelResponse),
    ("GET", "/v2/models/{version}", None, 200, openapi.MetadataModelResponse),
    ("GET", "/v2/models/other", None, 404, openapi.MetadataModelErrorResponse),
    ("POST", "/v2/models/nffm/infer", INFER_OK, 200, openapi.InferenceResponse),
    ("POST", "/v2/models/{version}/infer", INFER_OK, 200, openapi.InferenceResponse),
    (
        "POST",
        "/v2/models/nffm/infer",
        {"inputs": [{"name": "c0", "datatype": "FP99", "shape": [1], "data": [1]}]},
        400,
        openapi.InferenceErrorResponse,
    ),
    ("POST", "/v2/models/other/infer", INFER_OK, 404, openapi.InferenceErrorResponse),
    (
        "POST",
        "/v2/models/nffm/infer",
        {"inputs": [{"name": "c0", "datatype": "BYTES", "shape": [1], "data": ["x" * MAX_BODY]}]},
        413,
        openapi.InferenceErrorResponse,
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "schema"), CALLS)
def test_every_v2_response_matches_the_published_schema(
    endpoints: tuple[str, str], method: str, path: str, body: object, status: int, schema: type
) -> None:
    base, _ = endpoints
    version = httpx.get(f"{base}/v2/models/nffm", timeout=10).json()["versions"][0]
    path = path.replace("{version}", f"nffm/versions/{version}")
    response = httpx.request(method, f"{base}{path}", json=body, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    parsed = schema.parse_obj(response.json())
    if status >= 400:
        assert parsed.error  # a message a client can show


def test_health_endpoints_answer_as_the_protocol_says(endpoints: tuple[str, str]) -> None:
    base, _ = endpoints
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/nffm/ready"):
        assert httpx.get(f"{base}{path}", timeout=10).status_code == 200


def test_the_kserve_sdk_and_the_protocols_own_grpc_client(endpoints: tuple[str, str]) -> None:
    base, address = endpoints
    kserve = _clients("kserve", base, address, "nffm")
    for answer in ("live", "ready", "model_ready"):
        assert kserve[f"rest_{answer}"] is True, answer
        assert kserve[f"grpc_{answer}"] is True, answer
    # the over-size body's message reaches the KServe client, as the protocol asks
    assert "413" in kserve["rest_oversize"]
    assert "CTR_MAX_BODY_BYTES" in kserve["rest_oversize"]
    own = _clients("open-inference", address, "nffm")
    assert own["metadata_inputs"][:2] == ["c0", "c1"]
    assert own["unknown_model"].startswith("NOT_FOUND")
    # FP16 over gRPC (raw contents) scores as FP16 over HTTP's binary extension
    np.testing.assert_allclose(kserve["grpc_scores"], kserve["rest_scores"], rtol=1e-6)
    np.testing.assert_allclose(own["scores"], kserve["rest_scores"], rtol=1e-6)
    rows = [
        {"c0": c0, "n0": float(n0), "n1": float(n1)}
        for c0, n0, n1 in zip(
            ["c0_1", "c0_2", "never-seen"], [2.5, -4.0, 0.25], [0.5, 1.5, -2.0], strict=True
        )
    ]
    predicted = httpx.post(f"{base}/predict", json={"instances": rows}, timeout=10).json()
    np.testing.assert_allclose(kserve["rest_scores"], predicted["predictions"], rtol=1e-6)
