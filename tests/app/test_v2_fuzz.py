"""Fuzzing the V2 infer endpoint: truncated headers, lying sizes, wrong datatypes and shapes,
arbitrary JSON. Every answer is a 2xx or a 4xx with an error message, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.config import Settings
from app.main import create_app
from support.fuzz import v2_requests

URL = "/v2/models/repository/infer"


@pytest.fixture(scope="module")
def fuzz_client(model_dir, tmp_path_factory) -> Iterator[TestClient]:
    import shutil

    repository = tmp_path_factory.mktemp("fuzz") / "repository"
    shutil.copytree(model_dir, repository)
    with TestClient(
        create_app(Settings(model_dir=repository, max_batch_size=64, inline_max_rows=64))
    ) as client:
        yield client


@settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(v2_requests())
def test_v2_infer_never_answers_5xx(fuzz_client: TestClient, request) -> None:
    body, headers = request
    response = fuzz_client.post(URL, content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text, body, headers)
    if response.status_code != 200:
        assert response.json()["error"]


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_cleanly(fuzz_client: TestClient, body: bytes) -> None:
    response = fuzz_client.post(URL, content=body)
    assert 400 <= response.status_code < 500
    assert fuzz_client.get("/v2/health/live").json() == {"live": True}
