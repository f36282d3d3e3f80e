"""The model version this worker serves, following the repository's ``CURRENT`` pointer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.features.errors import SpecError
from app.scoring.repository import (
    POINTER_FILE,
    ModelRepository,
    check_version_name,
    resolve_model_dir,
)
from app.scoring.scorer import Scorer

logger = logging.getLogger(__name__)

Loader = Callable[[Path], Scorer]
# Told of the version served: at subscription (False), then after every swap (True).
OnSwap = Callable[[Scorer, bool], None]
OnRefused = Callable[[SpecError], None]


@dataclass(frozen=True)
class LoadFailure:
    """A version this worker was asked to serve and could not: it keeps the old one."""

    version: str
    reason: str
    at: float  # unix time


@dataclass(frozen=True)
class Swap:
    previous: Scorer
    current: Scorer


class ModelRegistry:
    """The current :class:`Scorer`, replaced only by a fully loaded, verified and warmed one.

    A request reads ``registry.current`` once and keeps that reference, so requests in
    flight during a swap finish on the version they started with. Every worker of every
    replica holds its own registry over the same repository; :meth:`poll` is how each one
    converges on the pointer, so nothing has to reach the workers one by one.

    Args:
        repository: where versions and the pointer live.
        loader: loads, verifies and warms one version directory (raises ``SpecError``).
        pinned_version: serve this version and ignore the pointer.
    """

    def __init__(
        self, repository: ModelRepository, loader: Loader, pinned_version: str | None = None
    ) -> None:
        self.repository = repository
        self.pinned_version = None if pinned_version is None else check_version_name(pinned_version)
        self._loader = loader
        self._lock = threading.Lock()
        self.last_failure: LoadFailure | None = None
        initial = self.pinned_version or repository.current_version()
        self._current = loader(repository.version_dir(initial))
        self._on_swap: OnSwap = lambda scorer, swapped: None
        self._on_refused: OnRefused = lambda exc: None

    def subscribe(self, on_swap: OnSwap, on_refused: OnRefused) -> None:
        """Call ``on_swap`` now with the version served and after every swap, under the
        registry's lock, so what it sets up (a cache for the version) cannot be interleaved by
        two swaps; and ``on_refused`` with every version refused."""
        with self._lock:
            self._on_swap, self._on_refused = on_swap, on_refused
            on_swap(self._current, False)

    @property
    def current(self) -> Scorer:
        return self._current

    def target_version(self) -> str:
        """The version this worker should serve now."""
        if self.pinned_version is not None:
            return self.pinned_version
        if self.repository.is_flat:
            return self._current.version  # nothing to follow; don't re-read its spec.json
        return self.repository.current_version()

    def poll(self) -> Swap | None:
        """Swap to the target version if it changed.

        A target that failed to load is not retried on every poll (a broken export would
        otherwise be reloaded every few seconds by every worker); it is retried when the
        pointer moves, or on an explicit :meth:`switch`. A refusal is told to the
        subscriber once, and the old version keeps serving.
        """
        with self._lock:
            try:
                target = self.target_version()
            except SpecError as exc:
                self._refuse_once(POINTER_FILE, exc)
                return None
            if target == self._current.version:
                self.last_failure = None
                return None
            if self.last_failure is not None and self.last_failure.version == target:
                return None
            try:
                return self._install(self._load(target))
            except SpecError as exc:
                self._refuse_once(target, exc)
                return None

    def switch(self, version: str | None = None) -> Swap | None:
        """Point the repository at ``version`` (verified here first) and serve it.

        Without a version, re-read the pointer now instead of at the next poll. The pointer
        is only written once this worker has loaded the version, so a version that cannot
        load never reaches the rest of the fleet.

        Raises:
            SpecError: it cannot be loaded; the old version keeps serving.
        """
        with self._lock, self._telling_refusals():
            return self._switch(version)

    def publish(self, source: Path) -> Swap | None:
        """Copy an exported model into the repository as a version and switch to it.

        Raises:
            SpecError: it cannot be loaded; nothing is published, the old version serves.
        """
        with self._telling_refusals():
            # Verified and copied outside the lock: a large model's copy holds up no poll.
            self._check_may_move_pointer()
            checked = self._loader(resolve_model_dir(source))
            version = self.repository.publish(source)
            if version != checked.version:
                raise SpecError(
                    f"{source} changed while it was published: version {version} was copied, "
                    f"{checked.version} was verified; publish it again"
                )
            with self._lock:
                return self._switch(version)

    def _switch(self, version: str | None) -> Swap | None:
        if version is not None:
            self._check_may_move_pointer()
        target = self.target_version() if version is None else check_version_name(version)
        loaded = None if target == self._current.version else self._load(target)
        if version is not None:
            self.repository.set_current(target)
        self.last_failure = None
        return None if loaded is None else self._install(loaded)

    @contextmanager
    def _telling_refusals(self) -> Iterator[None]:
        try:
            yield
        except SpecError as exc:
            self._on_refused(exc)
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

    def _load(self, version: str) -> Scorer:
        """Load, verify and warm ``version`` beside the one serving."""
        return self._loader(self.repository.version_dir(version))

    def _install(self, loaded: Scorer) -> Swap:
        previous, self._current = self._current, loaded
        self.last_failure = None
        logger.info("swapped model %s -> %s", previous.version, loaded.version)
        self._on_swap(loaded, True)
        return Swap(previous, loaded)

    def _refuse_once(self, version: str, exc: SpecError) -> None:
        """Remember why ``version`` is not served; tell the subscriber only the first time,
        so a broken version is logged and counted once rather than every few seconds."""
        known = self.last_failure
        if known is not None and (known.version, known.reason) == (version, str(exc)):
            return
        self.last_failure = LoadFailure(version, str(exc), time.time())
        self._on_refused(exc)
