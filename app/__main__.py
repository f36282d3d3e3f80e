"""``python -m app``: serve the model repository in ``CTR_MODEL_DIR`` with uvicorn.

``python -m app publish --from DIR``: copy an exported model into that repository as a
version (verified first) and point ``CURRENT`` at it, so every worker and replica that
follows the repository serves it within one poll interval.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from app.core.config import get_settings

# Not imported from app.metrics: prometheus_client picks its mode when first imported, and
# that must happen after this variable is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
logger = logging.getLogger("app")


@contextmanager
def _metrics_dir() -> Iterator[None]:
    """Give every worker one directory for Prometheus values while the block runs.

    Set before uvicorn starts a worker, so each worker's prometheus_client starts in
    multiprocess mode and ``/metrics`` on any worker sums them all. An operator's own
    directory (a Kubernetes emptyDir, say) is emptied first: values of an earlier run would
    otherwise be summed in. A directory made here is removed when the block ends, and on
    SIGTERM too: one uvicorn worker shuts down gracefully on SIGTERM and then raises it
    again with its default action, which ends the process before any ``finally`` runs: every
    server stopped that way left its directory behind.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    made = Path(tempfile.mkdtemp(prefix="ctrserve-metrics-"))
    os.environ[MULTIPROC_ENV] = str(made)

    def remove_then_end(signum: int, frame: FrameType | None) -> None:
        shutil.rmtree(made, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)  # ended by the signal, as a supervisor expects

    previous = signal.signal(signal.SIGTERM, remove_then_end)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(made, ignore_errors=True)


def serve() -> int:
    import uvicorn

    settings = get_settings()
    with _metrics_dir():
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    return 0


def publish(source: Path, if_empty: bool) -> int:
    from app.core.logging import configure_logging
    from app.features.errors import SpecError
    from app.scoring.repository import ModelRepository, resolve_model_dir
    from app.scoring.scorer import Scorer

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    repository = ModelRepository(settings.model_dir)
    try:
        if if_empty and (repository.is_flat or (repository.root / "CURRENT").is_file()):
            logger.info("%s already has a model; nothing published", repository.root)
            return 0
        checked = Scorer.load(resolve_model_dir(source))
        version = repository.publish(source)
        repository.set_current(version)
    except (SpecError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    model_type = checked.manifest.model_type
    logger.info("published %s version %s to %s (CURRENT)", model_type, version, repository.root)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Serve a model repository, or publish a model into it."
    )
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="serve CTR_MODEL_DIR (the default)")
    serve_parser.add_argument(
        "--model-name",
        help="the model's name in the inference protocol (CTR_MODEL_NAME); KServe passes "
        "its InferenceService's name here",
    )
    serve_parser.add_argument("--model-dir", type=Path, help="the repository (CTR_MODEL_DIR)")
    publish_parser = commands.add_parser(
        "publish", help="copy an exported model into CTR_MODEL_DIR and point CURRENT at it"
    )
    publish_parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        help="an exported model: a repository (its current version) or a version directory",
    )
    publish_parser.add_argument(
        "--if-empty",
        action="store_true",
        help="only when the repository has no CURRENT yet (seeding a fresh volume)",
    )
    args = parser.parse_args(argv)
    if args.command == "publish":
        return publish(args.source, args.if_empty)
    # Flags become the settings' variables, which uvicorn's worker processes inherit.
    if getattr(args, "model_name", None):
        os.environ["CTR_MODEL_NAME"] = args.model_name
    if getattr(args, "model_dir", None):
        os.environ["CTR_MODEL_DIR"] = str(args.model_dir)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
