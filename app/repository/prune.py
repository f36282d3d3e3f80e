"""Remove the versions a repository no longer needs.

Each export adds a version (the graph, its weights, a checkpoint as large again), and a
fleet's shared volume fills. Prune keeps the ``keep_last`` most recently exported versions
and every version the repository's plan names: ``CURRENT``, every label, the policy's
``versions`` rule, its split and its shadow, and any version pinned by the caller. The
decision and the move out of sight happen under the repository's lock, which every pointer
move takes too, so no pointer can reach a version while it is being removed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from app.repository.plan import read_plan
from app.repository.store import ModelRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    kept: list[str]  # oldest first
    removed: list[str]


def prune(
    repository: ModelRepository,
    keep_last: int,
    pinned: Iterable[str] = (),
    dry_run: bool = False,
) -> Pruned:
    """Remove every version of ``repository`` but the ``keep_last`` newest, those its plan
    names and ``pinned``; with ``dry_run``, only say which.

    Raises:
        SpecError: a pointer or the policy cannot be read (nothing is removed then).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if repository.is_flat:
        version = repository.current_version()
        return Pruned([version], [])
    with repository.locked():
        present = repository.versions()
        protected = {*read_plan(repository).wanted(), *pinned, *present[-keep_last:]}
        doomed = [version for version in present if version not in protected]
        retired = []
        if not dry_run:
            retired = repository.retired()  # an interrupted prune's leftovers, if any
            retired += [repository.retire(version) for version in doomed]
    for folder in retired:  # outside the lock: deleting gigabytes holds up no pointer move
        shutil.rmtree(folder, ignore_errors=True)
    if retired:
        logger.info("model %s: pruned versions %s", repository.name, ", ".join(doomed))
    return Pruned([v for v in present if v in protected], doomed)
