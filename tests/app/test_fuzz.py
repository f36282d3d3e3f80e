"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis).

Every operation gets a bounded number of generated requests, valid and invalid; none may
produce a 5xx or crash the app.
"""

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from app.core.config import Settings
from app.main import create_app

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_OPERATION = 100


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_request_produces_a_server_error(settings: Settings, mode: str) -> None:
    """Positive cases follow the schema; negative ones break it on purpose."""
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: the model is loaded for the fuzzed calls
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/predict", "/explain", "/admin/reload"}
        calls = 0
        for operation in operations:
            if mode == "negative" and not operation.body:
                continue  # nothing to break in an operation that takes no input

            @given(case=operation.as_strategy(schemathesis.GenerationMode(mode)))
            @hypothesis_settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def call(case: object) -> None:
                nonlocal calls
                # the conftest token, so /admin/reload's body is fuzzed, not only its auth
                response = case.call(headers={"Authorization": "Bearer t0ken"})  # type: ignore[attr-defined]
                calls += 1
                assert response.status_code < 500, (case, response.status_code, response.text)

            call()
    assert calls >= 200  # operations without inputs generate a single case each
