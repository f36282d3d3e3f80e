"""Settings: those that contradict each other, or name no model, fail at start-up with the
reason; those that tune the process hold while the service runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from pydantic import ValidationError

from app.core.config import Settings
from app.features.errors import SpecError
from app.main import create_app


def test_the_queue_holds_at_least_one_call() -> None:
    with pytest.raises(ValidationError, match="max_queued_rows \\(10\\) must be at least"):
        Settings(batch_max_rows=64, max_queued_rows=10)
    assert Settings(batch_max_rows=10, max_queued_rows=10).max_queued_rows == 10


def test_the_event_loop_is_one_uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTR_EVENT_LOOP", "tokio")
    with pytest.raises(ValidationError, match="'asyncio' or 'uvloop'"):
        Settings()
    monkeypatch.setenv("CTR_EVENT_LOOP", "uvloop")
    assert Settings().event_loop == "uvloop"
    monkeypatch.delenv("CTR_EVENT_LOOP")
    assert Settings().event_loop == "asyncio"


def test_a_missing_repository_refuses_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    with (
        pytest.raises(SpecError, match="no such model repository"),
        TestClient(create_app(Settings(model_dir=missing))),
    ):
        pass


@pytest.mark.slow  # starts the serving CLI
@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"CTR_WORKERS": "two"},
            "bad settings: CTR_WORKERS='two': Input should be a valid",
        ),
        ({"CTR_PORT": "99999"}, "CTR_PORT='99999': Input should be less than or equal to 65535"),
        ({"CTR_MODEL_REPOSITORY": "nothing-here"}, "nothing-here: no such model repository"),
        ({"CTR_PREDICTION_LOG": "ftp://host/log"}, "prediction log 'ftp://host/log': Unrecog"),
    ],
)
def test_the_server_refuses_bad_settings_in_one_line(
    model_dir: Path, env: dict[str, str], said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        env={**os.environ, "CTR_MODEL_REPOSITORY": str(model_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
    assert said in done.stderr
    assert "Traceback" not in done.stderr


def test_fastapi_opentelemetry_traces_requests_only_when_asked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tracer provider configured, a request gets a server span only with otel on;
    off (the default), FastAPI does not look for a provider at all."""
    spans: list[str] = []
    asked: list[bool] = []

    class Tracer(trace.NoOpTracer):
        def start_span(self, name: str, *args: object, **kwargs: object) -> trace.Span:
            spans.append(name)
            return trace.INVALID_SPAN

    class Provider(trace.TracerProvider):
        def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
            return Tracer()

    def provider() -> trace.TracerProvider:
        asked.append(True)
        return Provider()

    monkeypatch.setattr(trace, "get_tracer_provider", provider)
    row = {"features": {"c0": "c0_1", "n0": 2.5}}
    for otel in (False, True):
        with TestClient(create_app(settings.model_copy(update={"otel": otel}))) as client:
            spans.clear()
            asked.clear()
            assert client.post("/predict", json=row).status_code == 200
            assert spans == (["POST"] if otel else [])
            assert bool(asked) is otel
