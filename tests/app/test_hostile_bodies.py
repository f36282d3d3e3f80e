"""Hostile bodies on every endpoint that reads one: nesting up to 100,000 levels deep,
deep arrays, long arrays of objects and bodies at the size limit get a 4xx with the usual
error body, never a 5xx, and the service answers normally afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from app.core.config import Settings
from app.main import create_app
from support.fuzz import BODY_ENDPOINTS, body_at, hostile_bodies

MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def hostile_client(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=model_dir, max_body_bytes=MAX_BODY, reload_token="t0ken")
    with TestClient(create_app(settings)) as client:
        yield client


def _post(client: TestClient, endpoint: str, body: bytes) -> None:
    endpoint = endpoint.replace("{model}", "repository")
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
@given(hostile_bodies(MAX_BODY))
def test_no_hostile_body_is_a_server_error(
    hostile_client: TestClient, case: tuple[str, bytes]
) -> None:
    _post(hostile_client, *case)


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
@pytest.mark.parametrize("size", [MAX_BODY - 1, MAX_BODY, MAX_BODY + 1])
def test_bodies_at_the_size_limit(hostile_client: TestClient, endpoint: str, size: int) -> None:
    body = body_at(size)
    assert len(body) == size
    _post(hostile_client, endpoint, body)
    assert hostile_client.post("/predict", json={"features": {"c0": "c0_1"}}).status_code == 200
