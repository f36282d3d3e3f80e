"""The scoring pipeline's contract, whatever the protocol: the same rows get the same scores
and the same cache flags over /predict, V2 HTTP and gRPC (the stock Triton clients against a
real `python -m app`), and V2 requests are answered from the score cache."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

from support.payloads import triton_inputs  # noqa: E402
from support.servers import free_port  # noqa: E402
from support.servers import server as start_server  # noqa: E402

pytestmark = pytest.mark.slow  # starts a server


@pytest.fixture
def endpoints(repository: Path) -> Iterator[tuple[str, str]]:
    """(HTTP base URL, gRPC address) of one real `python -m app` with a fresh cache."""
    grpc_port = free_port()
    env = {"CTR_MODEL_REPOSITORY": str(repository), "CTR_GRPC_PORT": str(grpc_port)}
    with start_server([sys.executable, "-m", "app"], env) as base:
        yield base, f"127.0.0.1:{grpc_port}"


def _rows(group: int) -> list[dict[str, object]]:
    """Rows no other group sent, with values every protocol carries exactly."""
    return [{"c0": f"c0_{i}", "c1": f"c1_{group}", "n0": float(i) / 4} for i in range(6)]


_TENSORS = (("c0", "BYTES"), ("c1", "BYTES"), ("n0", "FP32"))


def _by_predict(base: str, rows: list[dict[str, object]]) -> tuple[list[float], int]:
    body = httpx.post(f"{base}/predict", json={"instances": rows}, timeout=10).json()
    return body["predictions"], body["cache_hits"]


def _by_v2_http(base: str, rows: list[dict[str, object]]) -> tuple[list[float], int]:
    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    result = client.infer("repository", triton_inputs(httpclient, rows, _TENSORS))
    return result.as_numpy("score").tolist(), result.get_response()["parameters"]["cache_hits"]


def _by_grpc(address: str, rows: list[dict[str, object]]) -> tuple[list[float], int]:
    client = grpcclient.InferenceServerClient(address)
    result = client.infer("repository", triton_inputs(grpcclient, rows, _TENSORS))
    hits = result.get_response().parameters["cache_hits"].int64_param
    return result.as_numpy("score").tolist(), hits


def test_the_same_rows_get_the_same_scores_and_cache_flags_over_every_protocol(
    endpoints: tuple[str, str],
) -> None:
    base, address = endpoints
    protocols = {
        "predict": lambda rows: _by_predict(base, rows),
        "v2-http": lambda rows: _by_v2_http(base, rows),
        "grpc": lambda rows: _by_grpc(address, rows),
    }
    for group, (first, call) in enumerate(protocols.items()):
        rows = _rows(group)
        seen: list[tuple[list[float], int]] = [call(rows)]  # first sight: scored, not stored
        seen.append(call(rows))  # second sight: scored and stored
        for other in protocols.values():  # every protocol now finds every row cached
            seen.append(other(rows))
        assert [hits for _, hits in seen] == [0, 0, 6, 6, 6], first
        for scores, _ in seen[1:]:
            np.testing.assert_allclose(scores, seen[0][0], rtol=1e-6)


def test_a_repeated_single_row_is_a_hit_over_every_protocol(endpoints: tuple[str, str]) -> None:
    base, address = endpoints
    row = {"c0": "c0_3", "c1": "c1_9", "n0": 0.5}
    first = httpx.post(f"{base}/predict", json={"features": row}, timeout=10).json()
    assert first["cached"] is False
    assert _by_v2_http(base, [row])[1] == 1  # a single row is stored at first sight
    assert _by_grpc(address, [row])[1] == 1
    again = httpx.post(f"{base}/predict", json={"features": row}, timeout=10).json()
    assert (again["cached"], again["prediction"]) == (True, first["prediction"])
