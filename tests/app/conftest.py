import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cache import ResponseCache, ScoreCache
from app.core.config import Settings
from app.main import create_app
from app.metrics import ServiceMetrics
from app.scoring.registry import ModelRegistry
from app.scoring.repository import ModelRepository
from app.scoring.scorer import Scorer
from app.scoring.service import PredictionService
from app.scoring.threads import ScoringThreads


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def coalescing_service(repository: Path) -> Callable[[int], PredictionService]:
    """A service on this test's repository, small caches, one scoring thread, and misses
    coalesced into calls of at most the rows given (0: off)."""

    def build(max_rows: int) -> PredictionService:
        return PredictionService(
            ModelRegistry(ModelRepository(repository), Scorer.load),
            ScoreCache(1000, 60),
            ResponseCache(1 << 20, 60),
            ServiceMetrics(),
            ScoringThreads(1),
            max_rows,
        )

    return build


def _onnxruntime_calls(service: PredictionService) -> tuple[int, int]:
    service.flush_metrics()
    text = service.metrics.exposition().decode()
    calls = re.search(r"^ctr_scored_batch_rows_count (\S+)$", text, re.M)
    rows = re.search(r"^ctr_scored_batch_rows_sum (\S+)$", text, re.M)
    assert calls is not None
    assert rows is not None
    return int(float(calls.group(1))), int(float(rows.group(1)))


@pytest.fixture
def onnxruntime_calls() -> Callable[[PredictionService], tuple[int, int]]:
    """(calls, rows) so far from a service's own ``ctr_scored_batch_rows`` histogram."""
    return _onnxruntime_calls
