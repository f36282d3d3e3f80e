"""The model repository: versions written once, an atomic pointer, and workers that follow it."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.features.errors import SpecError
from app.main import create_app
from app.repository.manifest import ModelManifest
from app.repository.store import ModelRepository, resolve_model_dir
from support.faults import broken_copy, second_version
from support.prometheus import metric

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer t0ken"}
ROW = {"features": {"c0": "c0_1", "n0": 1.0}}


def _add_version(repository: Path, source: Path, name: str) -> None:
    """What export does: build in a hidden staging directory, rename it into place."""
    repo = ModelRepository(repository)
    staging = repo.staging_dir()
    for item in source.iterdir():
        shutil.copy2(item, staging / item.name)
    repo.commit(staging, name)


def test_a_reader_never_finds_the_model_missing_while_exports_run(repository: Path) -> None:
    repo = ModelRepository(repository)
    source = repo.current_dir()
    problems: list[str] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                version_dir = repo.current_dir()
                ModelManifest.load(version_dir)
                if not (version_dir / "model.onnx").is_file():
                    problems.append(f"{version_dir}: no model.onnx")
            except SpecError as exc:
                problems.append(str(exc))
            reads[0] += 1

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    for i in range(40):
        _add_version(repository, source, f"v{i}")
        repo.set_current(f"v{i}")
    stop.set()
    for thread in readers:
        thread.join()
    assert problems == []
    assert reads[0] > 40
    assert repo.current_version() == "v39"
    assert not [p for p in repository.iterdir() if p.name.startswith(".")]  # nothing left over


def test_version_names_cannot_leave_the_repository(repository: Path) -> None:
    repo = ModelRepository(repository)
    for bad in ("../elsewhere", ".hidden", "a/b", "", "x" * 200):
        with pytest.raises(SpecError, match="not a version name"):
            repo.set_current(bad)
    with pytest.raises(SpecError, match="no version"):
        repo.set_current("does-not-exist")
    with pytest.raises(SpecError, match="'a b' is not a label name"):
        repo.set_label("a b", repo.current_version())


def test_a_flat_first_stage_directory_still_serves(model_dir: Path, tmp_path: Path) -> None:
    flat = Path(shutil.copytree(resolve_model_dir(model_dir), tmp_path / "flat"))
    settings = Settings(model_dir=flat, reload_token="t0ken")
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json=ROW).status_code == 200
        info = client.get("/model").json()
        assert info["model_dir"] == str(flat)
        moved = client.post("/admin/reload", headers=AUTH, json={"version": "other"})
        assert moved.status_code == 422
        assert "flat model directory" in moved.json()["detail"]


def test_workers_follow_the_pointer(repository: Path, tmp_path: Path) -> None:
    """Another worker or replica moves CURRENT; this one swaps at its next poll."""
    settings = Settings(model_dir=repository, poll_interval_s=0.1)
    with TestClient(create_app(settings)) as client:
        old = client.post("/predict", json=ROW).json()
        assert client.post("/predict", json=ROW).json()["cached"] is True
        new = ModelRepository(repository).publish(second_version(repository, tmp_path / "v2"))
        ModelRepository(repository).set_current(new)
        deadline = time.monotonic() + 10
        while client.get("/model").json()["version"] != new:
            assert time.monotonic() < deadline, "the worker never followed CURRENT"
            time.sleep(0.05)
        after = client.post("/predict", json=ROW).json()
        assert (after["model_version"], after["cached"]) == (new, False)
        assert old["model_version"] != new
        text = client.get("/metrics").text
        assert metric(text, "ctr_model_reloads_total", model="repository", outcome="ok") == 1.0


def test_a_broken_version_is_refused_once_and_the_old_one_serves(
    repository: Path, tmp_path: Path
) -> None:
    settings = Settings(model_dir=repository, poll_interval_s=0.05)
    with TestClient(create_app(settings)) as client:
        serving = client.get("/model").json()["version"]
        broken = broken_copy(repository, tmp_path / "broken", "truncated model.onnx")
        _add_version(repository, broken, "broken-1")
        ModelRepository(repository).set_current("broken-1")
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["last_error"] is None:
            assert time.monotonic() < deadline, "the failed load never showed in /readyz"
            time.sleep(0.05)
        time.sleep(0.5)  # ten more polls: the broken version is not retried on each one
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["model_version"] == serving
        assert ready["target_version"] == "broken-1"
        assert "broken-1" in ready["last_error"]
        assert "truncated" in ready["last_error"]
        assert client.post("/predict", json=ROW).json()["model_version"] == serving
        text = client.get("/metrics").text
        assert metric(text, "ctr_model_reloads_total", outcome="failed") == 1.0


def test_reload_by_version_moves_the_pointer(
    client: TestClient, repository: Path, tmp_path
) -> None:
    first = client.get("/model").json()["version"]
    published = client.post(
        "/admin/reload",
        headers=AUTH,
        json={"model_dir": str(second_version(repository, tmp_path / "v2"))},
    ).json()
    second = published["version"]
    assert ModelRepository(repository).current_version() == second
    back = client.post("/admin/reload", headers=AUTH, json={"version": first})
    assert back.status_code == 200, back.text
    assert back.json() == {
        "model": "repository",
        "previous_version": second,
        "version": first,
        "model_dir": str(repository / first),
    }
    assert ModelRepository(repository).current_version() == first  # the rollback reaches all
    assert sorted(client.get("/model").json()["versions"]) == sorted([first, second])


def test_reload_refuses_bad_versions(client: TestClient, repository: Path) -> None:
    before = ModelRepository(repository).current_version()
    for body, reason in [
        ({"version": "../x"}, "string_pattern_mismatch"),
        ({"version": "missing"}, "no version missing"),
        ({"version": "a", "model_dir": "/tmp"}, "not both"),
    ]:
        response = client.post("/admin/reload", headers=AUTH, json=body)
        assert response.status_code == 422
        assert reason in response.text
    assert ModelRepository(repository).current_version() == before


def test_a_pinned_service_ignores_the_pointer(repository: Path, tmp_path: Path) -> None:
    pinned = ModelRepository(repository).current_version()
    new = ModelRepository(repository).publish(second_version(repository, tmp_path / "v2"))
    ModelRepository(repository).set_current(new)
    settings = Settings(
        model_dir=repository, model_version=pinned, poll_interval_s=0.05, reload_token="t0ken"
    )
    with TestClient(create_app(settings)) as client:
        time.sleep(0.3)
        info = client.get("/model").json()
        assert (info["version"], info["pinned"]) == (pinned, True)
        moved = client.post("/admin/reload", headers=AUTH, json={"version": new})
        assert moved.status_code == 422
        assert "pinned" in moved.json()["detail"]


def _publish(repository: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "publish", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CTR_MODEL_REPOSITORY": str(repository)},
    )


def test_publish_seeds_an_empty_repository_once(model_dir: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / "default"
    first = _publish(fresh, "--from", str(model_dir), "--if-empty")
    assert first.returncode == 0, first.stderr
    version = ModelRepository(fresh).current_version()
    assert version == ModelRepository(model_dir).current_version()
    other = second_version(model_dir, tmp_path / "v2")
    again = _publish(fresh, "--from", str(other), "--if-empty")
    assert again.returncode == 0, again.stderr
    assert ModelRepository(fresh).current_version() == version  # left alone
    moved = _publish(fresh, "--from", str(other))
    assert moved.returncode == 0, moved.stderr
    assert ModelRepository(fresh).current_version() == ModelManifest.load(other).version


def test_publish_checks_every_file_it_copies(repository: Path, tmp_path: Path) -> None:
    """The checkpoint is not read to serve, yet a damaged one never becomes a version."""
    before = ModelRepository(repository).current_version()
    other = second_version(repository, tmp_path / "v2")
    checkpoint = bytearray((other / "checkpoint.pt").read_bytes())
    checkpoint[len(checkpoint) // 2] ^= 0x01
    (other / "checkpoint.pt").write_bytes(bytes(checkpoint))
    result = _publish(repository, "--from", str(other))
    assert result.returncode == 2
    assert "checkpoint.pt: sha256" in result.stderr
    assert ModelRepository(repository).versions() == [before]
    assert {p.name for p in repository.iterdir()} == {"CURRENT", before}  # no staging left


def test_publish_refuses_a_broken_model(repository: Path, tmp_path: Path) -> None:
    before = ModelRepository(repository).current_version()
    broken = broken_copy(repository, tmp_path / "broken", "truncated model.onnx")
    result = _publish(repository, "--from", str(broken))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "truncated" in result.stderr
    assert ModelRepository(repository).current_version() == before
    assert ModelRepository(repository).versions() == [before]
