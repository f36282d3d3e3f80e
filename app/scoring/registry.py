"""Holds the model being served and swaps in a new one atomically (hot reload)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from app.scoring.scorer import Scorer

logger = logging.getLogger(__name__)


class ModelRegistry:
    """The current :class:`Scorer`, replaced only by a fully loaded and verified one.

    A request reads ``registry.current`` once and keeps that reference, so requests in
    flight during a reload finish on the model they started with.
    """

    def __init__(
        self, scorer: Scorer, intra_op_threads: int, max_value_chars: int | None = None
    ) -> None:
        self._current = scorer
        self._intra_op_threads = intra_op_threads
        self._max_value_chars = max_value_chars
        self._reload_lock = threading.Lock()

    @property
    def current(self) -> Scorer:
        return self._current

    def reload(self, model_dir: Path | None = None) -> tuple[Scorer, Scorer]:
        """Load ``model_dir`` (default: the current one again) and swap it in.

        The new model is verified and warmed up (sha256, graph I/O, a smoke score) before
        the swap; any failure raises and leaves the old model serving.

        Returns:
            ``(previous, new)`` scorers.
        """
        with self._reload_lock:
            target = model_dir or self._current.model_dir
            loaded = Scorer.load(target, self._intra_op_threads, self._max_value_chars)
            previous, self._current = self._current, loaded
        logger.info("swapped model %s -> %s", previous.version, loaded.version)
        return previous, loaded
