"""Every broken model is refused with a clear reason: at start-up, and at reload (where the
old model keeps serving)."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.features.errors import SpecError
from app.main import create_app
from app.model.scorer import Scorer
from support.faults import FAULTS, broken_copy
from support.prometheus import metric

pytest.importorskip("onnx")  # the NaN model is built with the onnx package

AUTH = {"Authorization": "Bearer t0ken"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_scorer_refuses(model_dir: Path, tmp_path: Path, fault: str) -> None:
    broken = broken_copy(model_dir, tmp_path / "broken", fault)
    with pytest.raises(SpecError, match=FAULTS[fault][1]):
        Scorer.load(broken)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_service_does_not_start(model_dir: Path, tmp_path: Path, fault: str) -> None:
    broken = broken_copy(model_dir, tmp_path / "broken", fault)
    with (
        pytest.raises(SpecError, match=FAULTS[fault][1]),
        TestClient(create_app(Settings(model_dir=broken))),
    ):
        pass


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_reload_keeps_the_old_model(
    client: TestClient, model_dir: Path, tmp_path: Path, fault: str
) -> None:
    serving = client.get("/model").json()["version"]
    broken = broken_copy(model_dir, tmp_path / "broken", fault)
    response = client.post("/admin/reload", headers=AUTH, json={"model_dir": str(broken)})
    assert response.status_code == 422
    assert FAULTS[fault][1] in response.json()["detail"]
    assert client.get("/model").json()["version"] == serving
    assert client.post("/predict", json={"features": {"c0": "c0_1"}}).status_code == 200


def test_onnxruntime_failure_mid_request_is_503(client: TestClient, monkeypatch) -> None:
    scorer = client.app.state.service.model().registry.lineup.default

    def broken_run(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated onnxruntime failure")

    monkeypatch.setattr(scorer.session, "run", broken_run)
    response = client.post("/predict", json={"features": {"c0": "c0_99"}})
    assert response.status_code == 503
    assert metric(client.get("/metrics").text, "ctr_scoring_errors_total") == 1.0
    assert client.get("/healthz").status_code == 200
