"""``python -m app``: serve the model repository in ``CTR_MODEL_DIR`` with uvicorn."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from app.core.config import get_settings

# Not imported from app.metrics: prometheus_client picks its mode when first imported, and
# that must happen after this variable is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics_dir() -> Path | None:
    """Give every worker one directory for Prometheus values; ``None`` if the operator did.

    Set before uvicorn starts a worker, so each worker's prometheus_client starts in
    multiprocess mode and ``/metrics`` on any worker sums them all. An operator's own
    directory (a Kubernetes emptyDir, say) is emptied first: values of an earlier run would
    otherwise be summed in.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return None
    made = Path(tempfile.mkdtemp(prefix="ctrserve-metrics-"))
    os.environ[MULTIPROC_ENV] = str(made)
    return made


def main() -> None:
    settings = get_settings()
    made = _metrics_dir()
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    main()
