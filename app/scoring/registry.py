"""The versions of one model this worker serves, following the repository's pointers.

```
repository: CURRENT, labels/*, policy.yaml ──poll──► Plan ──load what is new──► Lineup
                                                     (a version that fails to load keeps
                                                      the one that played its part before)
```
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.features.errors import SpecError
from app.model.lineup import Lineup
from app.model.scorer import Scorer
from app.repository.plan import Plan, read_plan
from app.repository.prune import prune
from app.repository.store import (
    POINTER_FILE,
    ModelRepository,
    check_version_name,
    resolve_model_dir,
)

logger = logging.getLogger(__name__)

Loader = Callable[[Path], Scorer]
# Told of the lineup served: at subscription (False), then after every change (True).
OnSwap = Callable[["Lineup", bool], None]
# Told of every refusal, once each: what was refused ("loading", "label canary") and why.
OnRefused = Callable[[str, SpecError], None]


class NotReadyError(RuntimeError):
    """The model has no version loaded (every one it was asked to serve failed): 503."""


@dataclass(frozen=True)
class LoadFailure:
    """A version (or the model's pointers or policy) this worker could not serve."""

    version: str
    reason: str
    at: float  # unix time


class ModelRegistry:
    """One model's :class:`Lineup`, replaced only by one whose versions are all loaded,
    verified and warmed.

    Every worker of every replica holds its own registry over the same repository;
    :meth:`poll` is how each one converges on the pointers (``CURRENT``, the labels) and the
    policy, so nothing has to reach the workers one by one. A version that fails to load is
    not retried until the pointers or the policy change (a broken export would otherwise be
    reloaded every few seconds by every worker), and whatever part it was to play (the
    default, a label, the split, the shadow) stays with the version that played it before.

    Args:
        repository: where versions and the pointers live.
        loader: loads, verifies and warms one version directory (raises ``SpecError``).
        pinned_version: serve this version as the default and ignore ``CURRENT``.
    """

    def __init__(
        self, repository: ModelRepository, loader: Loader, pinned_version: str | None = None
    ) -> None:
        self.repository = repository
        self.name = repository.name  # resolved once: it reads the disk
        self.pinned_version = None if pinned_version is None else check_version_name(pinned_version)
        self._loader = loader
        self._lock = threading.Lock()
        self._lineup: Lineup | None = None
        self._plan: Plan | None = None
        self.failures: dict[str, LoadFailure] = {}
        self._on_swap: OnSwap = lambda lineup, swapped: None
        self._on_refused: OnRefused = lambda action, exc: None
        with self._lock:
            self._follow()

    def subscribe(self, on_swap: OnSwap, on_refused: OnRefused) -> None:
        """Call ``on_swap`` now with the lineup served (if any) and after every change,
        under the registry's lock, so what it sets up (the cache's versions) cannot be
        interleaved by two swaps; and ``on_refused`` with every refusal, once each."""
        with self._lock:
            self._on_swap, self._on_refused = on_swap, on_refused
            if self._lineup is not None:
                on_swap(self._lineup, False)
            for failure in self.failures.values():
                on_refused(_action(failure.version), SpecError(failure.reason))

    @property
    def lineup(self) -> Lineup:
        """What this worker serves of the model (:class:`NotReadyError` if nothing)."""
        lineup = self._lineup
        if lineup is None:
            reasons = "; ".join(f"{f.version}: {f.reason}" for f in self.failures.values())
            raise NotReadyError(f"model '{self.name}' has no version loaded ({reasons})")
        return lineup

    @property
    def loaded(self) -> Lineup | None:
        """What this worker serves of the model, ``None`` when nothing is loaded."""
        return self._lineup

    @property
    def ready(self) -> bool:
        return self._lineup is not None

    def target_version(self) -> str:
        """The version ``CURRENT`` (or the pin) asks this worker to serve as the default."""
        if self.pinned_version is not None:
            return self.pinned_version
        return self.repository.current_version()

    def poll(self) -> bool:
        """Follow the pointers and the policy if they changed; whether the lineup changed."""
        with self._lock:
            return self._follow()

    def switch(self, version: str | None = None) -> Lineup:
        """Point ``CURRENT`` at ``version`` (loaded here first) and serve it; without a
        version, re-read the pointers now instead of at the next poll, retrying what failed.

        The pointer is only written once this worker has loaded the version, so a version
        that cannot load never reaches the rest of the fleet.

        Raises:
            SpecError: it cannot be loaded; the old version keeps serving.
        """
        with (
            self._lock,
            self._telling_refusals("reload" if version is None else f"reload to {version}"),
        ):
            if version is not None:
                self._check_may_move_pointer()
                version = check_version_name(version)
                self._verified(version)
                self.repository.set_current(version)
            self._plan = None
            self._follow()
            return self.lineup

    def set_label(self, label: str, version: str | None) -> Lineup:
        """Point ``label`` at ``version`` (loaded here first), or remove it (``None``).

        Raises:
            SpecError: the version cannot be loaded, or the label cannot be written.
        """
        action = f"removing label {label}" if version is None else f"label {label} -> {version}"
        with self._lock, self._telling_refusals(action):
            if self.repository.is_flat:
                raise SpecError(f"{self.repository.root} is a flat model directory: no labels")
            if version is None:
                self.repository.remove_label(label)
            else:
                version = check_version_name(version)
                self._verified(version)
                self.repository.set_label(label, version)
            self._plan = None
            self._follow()
            return self.lineup

    def publish(self, source: Path) -> Lineup:
        """Copy an exported model into the repository as a version and switch to it.

        Raises:
            SpecError: it cannot be loaded; nothing is published, the old version serves.
        """
        with self._telling_refusals(f"publishing {source}"):
            # Verified and copied outside the lock: a large model's copy holds up no poll.
            self._check_may_move_pointer()
            checked = self._loader(resolve_model_dir(source))
            version = self.repository.publish(source)
            if version != checked.version:
                raise SpecError(
                    f"{source} changed while it was published: version {version} was copied, "
                    f"{checked.version} was verified; publish it again"
                )
        return self.switch(version)

    # -- under the lock --------------------------------------------------------------------
    def _verified(self, version: str) -> None:
        """Load ``version`` unless it is loaded: raises ``SpecError`` if it cannot be."""
        if self._lineup is None or version not in self._lineup.scorers:
            self._loader(self.repository.version_dir(version))

    def _follow(self) -> bool:
        try:
            plan = self._read_plan()
        except SpecError as exc:
            self._refuse_once(POINTER_FILE, exc)
            return False
        self.failures.pop(POINTER_FILE, None)
        if plan == self._plan:
            return False
        self.failures.clear()  # the pointers moved (or a change re-reads them): retry what failed
        self._plan = plan
        changed = self._apply(plan)
        if plan.policy.prune is not None:
            self._prune(plan.policy.prune.keep_last)
        return changed

    def _prune(self, keep_last: int) -> None:
        """Apply the policy's prune; a repository this worker cannot write (a read-only
        mount) is left to ``ctrserve prune``, said once per change of plan."""
        pinned = () if self.pinned_version is None else (self.pinned_version,)
        try:
            prune(self.repository, keep_last, pinned)
        except (OSError, SpecError) as exc:
            logger.warning("model %s: cannot prune old versions here (%s)", self.name, exc)

    def _read_plan(self) -> Plan:
        if self.repository.is_flat and self._plan is not None:
            return self._plan  # nothing to follow: its spec.json is not read again
        return read_plan(self.repository, self.pinned_version)

    def _apply(self, plan: Plan) -> bool:
        """Load what ``plan`` adds, then install the lineup it makes."""
        before = self._lineup
        scorers: dict[str, Scorer] = {}
        for version, parts in plan.wanted().items():
            loaded = None if before is None else before.scorers.get(version)
            if loaded is None and version not in self.failures:
                try:
                    loaded = self._loader(self.repository.version_dir(version))
                except SpecError as exc:
                    self._refuse_once(version, SpecError(f"wanted as {', '.join(parts)}: {exc}"))
            if loaded is not None:
                scorers[version] = loaded

        def part(version: str, previous: Scorer | None) -> Scorer | None:
            """The version for a part: the one the plan names, else the one that had it."""
            chosen = scorers.get(version, previous)
            if chosen is not None:
                scorers.setdefault(chosen.version, chosen)
            return chosen

        default = part(plan.current, None if before is None else before.default)
        if default is None:
            return False
        labels = {}
        for label, version in plan.labels.items():
            had = None if before is None else before.addressed(label)
            chosen = part(version, had if before and label in before.labels else None)
            if chosen is not None:
                labels[label] = chosen.version
        policy = plan.policy
        split_to = shadow_to = None
        if policy.split is not None:
            split_to = part(plan.resolve(policy.split.to), before.split_to if before else None)
        if policy.shadow is not None:
            shadow_to = part(
                plan.resolve(policy.shadow.version), before.shadow_to if before else None
            )
        lineup = Lineup(default, scorers, labels, policy, split_to, shadow_to)
        if before is not None and before.same_as(lineup):
            return False
        self._lineup = lineup
        if before is None or before.default is not default:
            old = "nothing" if before is None else before.default.version
            logger.info("model %s: serving %s (was %s)", self.name, default.version, old)
        self._on_swap(lineup, before is not None)
        return True

    @contextmanager
    def _telling_refusals(self, action: str) -> Iterator[None]:
        try:
            yield
        except SpecError as exc:
            self._on_refused(action, exc)
            raise

    def _check_may_move_pointer(self) -> None:
        if self.pinned_version is not None:
            raise SpecError(
                f"this service is pinned to version {self.pinned_version} (CTR_MODEL_VERSION): "
                "it neither follows nor moves CURRENT; send the reload to an unpinned one"
            )
        if self.repository.is_flat:
            raise SpecError(
                f"{self.repository.root} is a flat model directory with no CURRENT pointer; "
                "serve a model repository (what `python -m training train --out` writes)"
            )

    def _refuse_once(self, version: str, exc: SpecError) -> None:
        """Remember why ``version`` is not served; tell the subscriber only the first time,
        so a broken version is logged and counted once rather than every few seconds."""
        known = self.failures.get(version)
        if known is not None and known.reason == str(exc):
            return
        self.failures[version] = LoadFailure(version, str(exc), time.time())
        self._on_refused(_action(version), exc)


def _action(failed: str) -> str:
    """What a poll was doing when ``failed`` (a version, or the pointer file) failed."""
    return "reading the pointers" if failed == POINTER_FILE else f"loading {failed}"
