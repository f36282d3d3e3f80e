"""The thread that keeps one worker on the repository's current version."""

from __future__ import annotations

import logging
import threading

from app.scoring.service import PredictionService

logger = logging.getLogger(__name__)


class RepositoryPoller:
    """Every ``interval_s``: every model follows its pointers and policy, then this worker's
    metrics are flushed.

    A thread rather than an asyncio task: loading and warming a version takes onnxruntime
    from tens of milliseconds to seconds, and none of it may run on the event loop that is
    answering requests meanwhile.
    """

    def __init__(self, service: PredictionService, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.service = service
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctr-repository-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.service.poll()
                self.service.flush_metrics()
            except Exception:  # the poller must outlive any one bad poll
                logger.exception("repository poll failed; trying again in %.1fs", self.interval_s)
