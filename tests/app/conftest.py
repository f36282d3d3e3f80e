import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.scoring.service import PredictionService


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


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
