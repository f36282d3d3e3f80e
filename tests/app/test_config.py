"""Settings: those that contradict each other, or name no model, fail at start-up with the
reason; those that tune the process hold while the service runs."""

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import Settings
from app.features.errors import SpecError
from app.main import create_app


def test_inline_rows_cannot_exceed_the_batch_limit() -> None:
    with pytest.raises(ValidationError, match="inline_max_rows \\(500\\) must not exceed"):
        Settings(max_batch_size=100, inline_max_rows=500)
    assert Settings(max_batch_size=100, inline_max_rows=100).inline_max_rows == 100


@pytest.mark.parametrize(("budget", "ok"), [(0, True), (1000, False), (64 * 1024, True)])
def test_response_cache_budget_is_off_or_usable(budget: int, ok: bool) -> None:
    if ok:
        assert Settings(response_cache_max_bytes=budget).response_cache_max_bytes == budget
    else:
        with pytest.raises(ValidationError, match="must be 0 \\(off\\) or at least 65536"):
            Settings(response_cache_max_bytes=budget)


def test_a_missing_repository_refuses_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    with (
        pytest.raises(SpecError, match="neither a model repository"),
        TestClient(create_app(Settings(model_dir=missing))),
    ):
        pass


def test_the_gil_switch_interval_is_the_services_while_it_runs(settings: Settings) -> None:
    before = sys.getswitchinterval()
    with TestClient(create_app(settings.model_copy(update={"gil_switch_ms": 0.25}))):
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    assert sys.getswitchinterval() == before
