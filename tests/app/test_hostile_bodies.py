"""Hostile bodies on every endpoint that reads one: nesting up to 100,000 levels deep,
deep arrays, long arrays of objects and bodies at the size limit get a 4xx with the usual
error body, never a 5xx, and the service answers normally afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.config import Settings
from app.main import create_app

MAX_BODY = 256 * 1024
ENDPOINTS = ("/predict", "/explain", "/v2/models/repository/infer", "/admin/reload")
# Where the nesting goes in a body each endpoint otherwise accepts.
PLACES = (
    '{"features": {"c0": %s}}',
    '{"features": %s}',
    '{"instances": [%s]}',
    '{"instances": %s}',
    '{"inputs": [{"name": "c0", "datatype": "BYTES", "shape": [1], "data": %s}]}',
    '{"inputs": %s}',
    '{"model_dir": %s}',
    "%s",
)


@pytest.fixture(scope="module")
def hostile_client(tmp_path_factory: pytest.TempPathFactory, model_dir) -> Iterator[TestClient]:
    settings = Settings(model_dir=model_dir, max_body_bytes=MAX_BODY, reload_token="t0ken")
    with TestClient(create_app(settings)) as client:
        yield client


def _nested(kind: str, depth: int) -> str:
    if kind == "objects":
        return '{"a": ' * depth + "1" + "}" * depth
    if kind == "arrays":
        return "[" * depth + "1" + "]" * depth
    if kind == "mixed":
        return '[{"a": ' * (depth // 2) + "null" + "}]" * (depth // 2)
    return "[" + ",".join(['{"c0": "c0_1"}'] * depth) + "]"  # a long array of objects


def _post(client: TestClient, endpoint: str, body: bytes) -> None:
    response = client.post(
        endpoint,
        content=body,
        headers={"content-type": "application/json", "Authorization": "Bearer t0ken"},
    )
    assert 400 <= response.status_code < 500 or response.status_code == 200, response.text
    if response.status_code != 200:
        error = response.json()
        assert ("error" if endpoint.startswith("/v2/") else "detail") in error


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    place=st.sampled_from(PLACES),
    kind=st.sampled_from(("objects", "arrays", "mixed", "long")),
    depth=st.one_of(st.integers(1, 50), st.integers(50, 5_000), st.just(100_000)),
)
def test_no_hostile_body_is_a_server_error(
    hostile_client: TestClient, endpoint: str, place: str, kind: str, depth: int
) -> None:
    body = (place % _nested(kind, depth)).encode()
    _post(hostile_client, endpoint, body[: MAX_BODY + 1])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("size", [MAX_BODY - 1, MAX_BODY, MAX_BODY + 1])
def test_bodies_at_the_size_limit(hostile_client: TestClient, endpoint: str, size: int) -> None:
    filler = '{"c0": "c0_1"},'
    head, tail = '{"instances": [', '{"c0": "c0_2"}]}'
    count = (size - len(head) - len(tail)) // len(filler)
    body = (head + filler * count + tail).encode()
    body += b" " * (size - len(body))  # JSON allows trailing white space
    assert len(body) == size
    _post(hostile_client, endpoint, body)
    assert hostile_client.post("/predict", json={"features": {"c0": "c0_1"}}).status_code == 200
