"""Pruning a repository: the last N versions and every version a pointer or the policy names
stay, whoever prunes (``ctrserve prune`` or the workers' poll) and while workers follow it."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.model.scorer import Scorer
from app.repository.store import ModelRepository
from app.scoring.registry import ModelRegistry
from support.faults import nth_version

ROOT = Path(__file__).resolve().parents[2]


def _versions(repository: Path, source: Path, count: int, tmp_path: Path) -> list[str]:
    """Publish ``count`` new versions, oldest first; CURRENT is left where it was."""
    repo = ModelRepository(repository)
    made = []
    for n in range(1, count + 1):
        made.append(repo.publish(nth_version(source, tmp_path / f"variant-{n}", n)))
    return made


def _prune_cli(repository: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CTR_MODEL_REPOSITORY": str(repository)}
    return subprocess.run(
        [sys.executable, "-m", "app", "prune", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_prune_keeps_the_last_n_and_every_version_that_is_named(
    repository: Path, tmp_path: Path
) -> None:
    repo = ModelRepository(repository)
    first = repo.current_version()
    v1, v2, v3, v4, v5 = _versions(repository, repository, 5, tmp_path)
    repo.set_current(v2)
    repo.set_label("stable", first)
    (repository / "policy.yaml").write_text(
        f"split: {{to: {v3}, percent: 5}}\nprune: {{keep_last: 2}}\n"
    )
    dry = _prune_cli(repository, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["removed"] == [v1]
    assert repo.versions() == [first, v1, v2, v3, v4, v5]  # a dry run removes nothing
    result = _prune_cli(repository)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["removed"] == [v1]
    assert summary["kept"] == [first, v2, v3, v4, v5]
    assert repo.versions() == [first, v2, v3, v4, v5]
    assert not repo.retired()
    # --keep-last overrides the policy; the named versions still stay
    assert _prune_cli(repository, "--keep-last", "1").returncode == 0
    assert repo.versions() == [first, v2, v3, v5]


def test_prune_without_a_rule_or_a_count_says_what_to_give(repository: Path) -> None:
    result = _prune_cli(repository)
    assert result.returncode == 2
    assert "no prune rule; give --keep-last N" in result.stderr
    bad = _prune_cli(repository, "--keep-last", "0")
    assert bad.returncode == 2
    assert "--keep-last must be at least 1" in bad.stderr


def test_the_model_named_is_the_model_acted_on(repository: Path, tmp_path: Path) -> None:
    """A name that is not the directory's one model is refused, never applied to that model;
    in a folder of models, prune asks which."""
    v1, _ = _versions(repository, repository, 2, tmp_path)  # CURRENT stays on the first
    other = _prune_cli(repository, "other", "--keep-last", "1")
    assert other.returncode == 2
    assert "holds one model, 'repository', not 'other'" in other.stderr
    assert v1 in ModelRepository(repository).versions()
    label = subprocess.run(
        [sys.executable, "-m", "app", "label", "other", "stable", v1],
        cwd=ROOT,
        env={**os.environ, "CTR_MODEL_REPOSITORY": str(repository)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert label.returncode == 2, label.stderr
    assert ModelRepository(repository).labels() == {}
    models = tmp_path / "models"
    shutil.copytree(repository, models / "ctr")
    unnamed = _prune_cli(models, "--keep-last", "1")
    assert unnamed.returncode == 2
    assert "holds the models ['ctr']; name one" in unnamed.stderr
    named = _prune_cli(models, "ctr", "--keep-last", "1")
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["removed"] == [v1]


def test_workers_prune_by_the_policy_while_they_follow_the_repository(
    repository: Path, tmp_path: Path
) -> None:
    """Two workers poll without pause and prune by the policy while versions are published
    and CURRENT moves; the repository ends with exactly what the policy keeps, and every
    worker serves what the pointers name."""
    repo = ModelRepository(repository)
    stable = repo.current_version()
    repo.set_label("stable", stable)
    (repository / "policy.yaml").write_text("prune: {keep_last: 2}\n")
    workers = [ModelRegistry(repo, Scorer.load) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow(worker: ModelRegistry) -> None:
        while not stop.is_set():
            try:
                worker.poll()
            except BaseException as exc:  # any error fails the test below
                errors.append(exc)

    threads = [threading.Thread(target=follow, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    published = []
    try:
        for n in range(1, 7):
            version = repo.publish(nth_version(repository, tmp_path / f"variant-{n}", n))
            repo.set_current(version)
            published.append(version)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors
    for worker in workers:
        worker.poll()  # one more look after the last move
    assert set(repo.versions()) == {stable, published[-2], published[-1]}
    assert not repo.retired()
    for worker in workers:
        assert worker.lineup.default.version == published[-1]
        assert worker.lineup.labels == {"stable": stable}
        assert not worker.failures


@pytest.mark.parametrize("pin", [True, False])
def test_a_pinned_worker_keeps_its_version(repository: Path, tmp_path: Path, pin: bool) -> None:
    repo = ModelRepository(repository)
    first = repo.current_version()
    *_, newest = _versions(repository, repository, 3, tmp_path)
    repo.set_current(newest)
    (repository / "policy.yaml").write_text("prune: {keep_last: 1}\n")
    worker = ModelRegistry(repo, Scorer.load, pinned_version=first if pin else None)
    assert worker.lineup.default.version == (first if pin else newest)
    assert (first in repo.versions()) is pin
