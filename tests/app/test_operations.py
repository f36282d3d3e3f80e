"""Health, readiness, metrics, model metadata and hot reload."""

import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.model.scorer import Scorer
from app.repository.store import resolve_model_dir
from support.faults import second_version
from support.prometheus import metric

ROW = {"c0": "c0_1", "n0": 1.0}
AUTH = {"Authorization": "Bearer t0ken"}


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"


def test_model_metadata(client: TestClient, repository: Path) -> None:
    info = client.get("/model").json()
    assert info["model_type"] == "nffm"
    assert info["task"] == "binary"
    assert [f["name"] for f in info["fields"]][:2] == ["c0", "c1"]
    assert info["metrics"]["auc"] > 0.5
    assert info["model_dir"] == str(repository / info["version"])
    assert info["name"] == "repository"
    assert info["versions"] == [info["version"]]
    assert info["pinned"] is False


def test_metrics_count_cache_and_latency(client: TestClient) -> None:
    client.post("/predict", json={"features": ROW})
    client.post("/predict", json={"features": ROW})
    text = client.get("/metrics").text
    model = {"model": "repository"}
    assert metric(text, "ctr_cache_hits_total", **model) == 1.0
    assert metric(text, "ctr_cache_misses_total", **model) == 1.0
    assert metric(text, "ctr_cache_entries", **model) == 1.0
    assert metric(text, "ctr_cache_budget_entries", **model) == 1000.0
    assert metric(text, "ctr_model_ready", **model) == 1.0
    assert metric(text, "ctr_model_loaded_bytes", **model) > 1000
    latency = {"endpoint": "/predict", "status": "2xx"}
    assert metric(text, "ctr_request_latency_seconds_count", **latency) == 2.0
    assert metric(text, "ctr_scored_batch_rows_count") == 1.0
    assert metric(text, "ctr_model_info", model_type="nffm", serves="default", **model) == 1.0


def test_model_health_and_stage_metrics(client: TestClient) -> None:
    rows = [
        {"c0": "never-seen-1", "c1": "c1_0"},
        {"c0": "never-seen-2"},
        {"c0": "c0_1", "c1": "never-seen-3", "n0": 1.0},
    ]
    client.post("/predict", json={"instances": rows})
    text = client.get("/metrics").text
    version = client.get("/model").json()["version"]
    served = {"model": "repository", "version": version}
    assert metric(text, "ctr_encoded_rows_total", **served) == 3.0
    for field, kind, count in [
        ("c0", "unseen", 2.0),
        ("c1", "unseen", 1.0),
        ("c1", "missing", 1.0),
        ("n0", "missing", 2.0),
    ]:
        assert (
            metric(text, "ctr_field_values_total", field=field, encoded_as=kind, **served) == count
        )
    assert metric(text, "ctr_prediction_count", **served) == 3.0
    assert metric(text, "ctr_prediction_bucket", le="+Inf", **served) == 3.0
    for stage in ("parse", "encode", "cache", "onnxruntime"):
        assert metric(text, "ctr_stage_seconds_count", stage=stage) == 1.0


def test_reload_requires_the_token(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403


def test_reload_is_off_without_a_token(model_dir: Path) -> None:
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 403
    assert "disabled" in response.json()["detail"]


def test_reload_swaps_and_never_serves_stale_scores(
    client: TestClient, model_dir: Path, tmp_path: Path
) -> None:
    old = client.post("/predict", json={"features": ROW}).json()
    new_dir = second_version(model_dir, tmp_path / "v2")
    response = client.post("/admin/reload", headers=AUTH, json={"model_dir": str(new_dir)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["previous_version"] == old["model_version"]
    after = client.post("/predict", json={"features": ROW}).json()
    assert after["model_version"] == body["version"] != old["model_version"]
    assert after["cached"] is False  # the version is part of the key
    # the new version scores this row (an isotonic plateau may give both the same score)
    fresh = Scorer.load(resolve_model_dir(new_dir)).score_rows([ROW])[0]
    assert after["prediction"] == pytest.approx(float(fresh))


def test_bad_reload_keeps_the_old_model(
    client: TestClient, model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(resolve_model_dir(model_dir), broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    version = client.get("/model").json()["version"]
    response = client.post("/admin/reload", headers=AUTH, json={"model_dir": str(broken)})
    assert response.status_code == 422
    assert "model.onnx: 11 bytes where spec.json lists" in response.json()["detail"]
    assert version in response.json()["detail"]
    assert client.get("/model").json()["version"] == version
    assert client.post("/predict", json={"features": ROW}).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "ctr_model_reloads_total", model="repository", outcome="failed") == 1.0


def test_reload_under_concurrent_requests(
    client: TestClient, model_dir: Path, tmp_path: Path
) -> None:
    new_dir = second_version(model_dir, tmp_path / "v2")
    failures: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer(offset: int) -> None:
        i = 0
        while not stop.is_set():
            response = client.post("/predict", json={"features": {"c0": f"c0_{offset + i % 50}"}})
            if response.status_code != 200:
                failures.append(response.status_code)
            else:
                versions.add(response.json()["model_version"])
            i += 1

    threads = [threading.Thread(target=hammer, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for target in (new_dir, model_dir, new_dir):
        assert (
            client.post("/admin/reload", headers=AUTH, json={"model_dir": str(target)}).status_code
            == 200
        )
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(versions) == 2


def test_reload_refuses_unusable_paths(client: TestClient) -> None:
    for model_dir in ["bad\u0000path", "", "x" * 5000]:
        response = client.post("/admin/reload", headers=AUTH, json={"model_dir": model_dir})
        assert response.status_code == 422, response.text


def _versions(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if p.is_dir())


def test_reload_takes_model_dirs_only_from_the_publish_root(
    repository: Path, model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "exports"
    inside = second_version(model_dir, root / "v2")
    outside = second_version(model_dir, tmp_path / "elsewhere")
    linked_dir = root / "linked"
    linked_dir.symlink_to(outside, target_is_directory=True)
    linked_file = root / "linked-file"
    shutil.copytree(inside, linked_file)
    (linked_file / "model.onnx").unlink()
    (linked_file / "model.onnx").symlink_to(outside / "model.onnx")
    before = _versions(repository)
    settings = Settings(model_dir=repository, reload_token="t0ken", publish_root=root)
    refused = {
        str(outside): (403, "outside the publish root"),
        str(root / "v2" / ".." / ".." / "elsewhere"): (403, "'..' is not allowed"),
        str(linked_dir): (403, "is a symbolic link"),
        "linked": (403, "is a symbolic link"),
        str(linked_file): (403, "is a symbolic link"),
        str(root / "missing"): (422, "no such model directory"),
    }
    with TestClient(create_app(settings)) as client:
        serving = client.get("/model").json()["version"]
        for model_dir_sent, (status_code, reason) in refused.items():
            response = client.post(
                "/admin/reload", headers=AUTH, json={"model_dir": model_dir_sent}
            )
            assert response.status_code == status_code, (model_dir_sent, response.text)
            assert reason in response.json()["detail"], model_dir_sent
            assert _versions(repository) == before  # nothing copied
            assert client.get("/model").json()["version"] == serving
        taken = client.post("/admin/reload", headers=AUTH, json={"model_dir": "v2"})
        assert taken.status_code == 200, taken.text
        assert len(_versions(repository)) == len(before) + 1


def test_reload_from_a_path_is_off_without_a_publish_root(
    repository: Path, model_dir: Path, tmp_path: Path
) -> None:
    source = second_version(model_dir, tmp_path / "v2")
    before = _versions(repository)
    with TestClient(create_app(Settings(model_dir=repository, reload_token="t0ken"))) as client:
        response = client.post("/admin/reload", headers=AUTH, json={"model_dir": str(source)})
        assert response.status_code == 403
        assert "CTR_PUBLISH_ROOT" in response.json()["detail"]
    assert _versions(repository) == before


def test_a_swap_racing_a_reload_leaves_the_cache_on_and_the_new_version_served(
    client: TestClient, model_dir: Path, tmp_path: Path
) -> None:
    registry = client.app.state.service.model().registry
    first = registry.lineup.default.version
    published = client.post(
        "/admin/reload",
        headers=AUTH,
        json={"model_dir": str(second_version(model_dir, tmp_path / "v2"))},
    )
    second = published.json()["version"]
    stop = threading.Event()

    def poll() -> None:  # what every worker's poller does, as fast as it can
        while not stop.is_set():
            registry.poll()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for version in [first, second] * 10:
            moved = client.post("/admin/reload", headers=AUTH, json={"version": version})
            assert moved.status_code == 200, moved.text
    finally:
        stop.set()
        poller.join()
    row = {"features": {"c0": "c0_7", "c2": "c2_1"}}
    scored = client.post("/predict", json=row).json()
    again = client.post("/predict", json=row).json()
    assert scored["model_version"] == again["model_version"] == second
    assert (scored["cached"], again["cached"]) == (False, True)
