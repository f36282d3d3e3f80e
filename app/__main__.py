"""``python -m app``: serve the model repository in ``CTR_MODEL_REPOSITORY`` with uvicorn.

``python -m app publish --from DIR [--model NAME]``: copy an exported model into that
repository as a version (verified first) and point ``CURRENT`` at it, so every worker and
replica that follows the repository serves it within one poll interval.

``python -m app label MODEL LABEL VERSION`` (or ``--remove``): point a label (``stable``,
``canary``...) at a version, verified first; every worker follows it at its next poll.

``python -m app prune [MODEL] [--keep-last N]``: remove the versions nothing needs any more.
"""

from __future__ import annotations

import argparse
import json
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

from pydantic import ValidationError

from app.core.config import get_settings
from app.features.errors import SpecError
from app.repository.store import ModelRepository, check_version_name, find_models, is_model

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

    from app.prediction_log.writer import PredictionLogError, open_target

    settings = get_settings()
    try:  # what a worker's start-up would refuse, said in one line here, not in its traceback
        find_models(settings.model_dir, settings.model_name)
        if settings.prediction_log is not None:
            open_target(settings.prediction_log)
    except (SpecError, PredictionLogError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    with _metrics_dir():
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            access_log=False,
            loop=settings.event_loop,
        )
    return 0


def _model_repository(name: str | None) -> ModelRepository:
    """The folder of model ``name`` in ``CTR_MODEL_REPOSITORY``: the directory itself when
    it is one model's (or new, with no model named), else its folder ``name`` (new or not).

    Raises:
        SpecError: ``name`` is not the one model the directory holds, or the directory holds
            models in folders and none is named (acting on another model than the one named loses
            versions or moves the wrong pointer).
    """
    settings = get_settings()
    root = settings.model_dir
    if is_model(root):
        repository = ModelRepository(root, settings.model_name)
        if name is not None and name != repository.name:
            raise SpecError(
                f"{root} holds one model, {repository.name!r}, not {name!r} "
                "(CTR_MODEL_REPOSITORY names a folder of several models to choose from)"
            )
        return repository
    if name is None:
        try:
            held = sorted(find_models(root))
        except SpecError:  # no model there yet: a new one-model repository
            return ModelRepository(root, settings.model_name)
        raise SpecError(f"{root} holds the models {held}; name one")
    return ModelRepository(root / check_version_name(name, "model"), name)


def publish(source: Path, if_empty: bool, model: str | None) -> int:
    from app.core.logging import configure_logging
    from app.model.scorer import Scorer
    from app.repository.store import resolve_model_dir

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        repository = _model_repository(model)
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


def label(model: str, name: str, version: str | None) -> int:
    """Point label ``name`` of ``model`` at ``version`` (loaded and scored first), or
    remove it."""
    from app.core.logging import configure_logging
    from app.model.scorer import Scorer

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        repository = _model_repository(model)
        if version is None:
            repository.remove_label(name)
            logger.info("removed label %s of %s", name, repository.root)
            return 0
        Scorer.load(repository.version_dir(check_version_name(version)))
        repository.set_label(name, version)
    except (SpecError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    logger.info("%s: label %s -> %s", repository.root, name, version)
    return 0


def prune_versions(model: str | None, keep_last: int | None, dry_run: bool) -> int:
    """Remove the versions of ``model`` its policy's ``prune`` (or ``keep_last``) lets go;
    print what was kept and removed as JSON."""
    from app.core.logging import configure_logging
    from app.repository.policy import load_policy
    from app.repository.prune import prune

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        repository = _model_repository(model)
        if keep_last is None:
            rule = None if repository.is_flat else load_policy(repository.root).prune
            if rule is None:
                raise SpecError(
                    f"{repository.root}: its policy.yaml has no prune rule; give --keep-last N"
                )
            keep_last = rule.keep_last
        pruned = prune(repository, keep_last, dry_run=dry_run)
    except (SpecError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    summary = {"model": repository.name, "kept": pruned.kept, "removed": pruned.removed}
    sys.stdout.write(json.dumps({**summary, "dry_run": dry_run}) + "\n")
    return 0


def _bad_settings(exc: ValidationError) -> str:
    """One clause a bad setting: its variable, what it was given, what was wrong."""
    clauses = []
    for error in exc.errors():
        if error["loc"]:
            name = "CTR_" + "_".join(str(part) for part in error["loc"]).upper()
            clauses.append(f"{name}={error['input']!r}: {error['msg']}")
        else:  # a rule across settings: its message names them
            clauses.append(error["msg"].removeprefix("Value error, "))
    return "bad settings: " + "; ".join(clauses)


def build_parser(prog: str = "python -m app") -> argparse.ArgumentParser:
    """The serving commands' parser (``prog``: the name usage and errors show)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve a model repository, or publish a model into it."
    )
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser(
        "serve", help="serve CTR_MODEL_REPOSITORY (the default command)"
    )
    serve_parser.add_argument(
        "--model-name",
        help="the model's name in the inference protocol (CTR_MODEL_NAME); KServe passes "
        "its InferenceService's name here",
    )
    serve_parser.add_argument(
        "--model-dir", type=Path, help="the repository (CTR_MODEL_REPOSITORY)"
    )
    publish_parser = commands.add_parser(
        "publish", help="copy an exported model into a repository and point CURRENT at it"
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
    publish_parser.add_argument(
        "--model", help="the model to publish to, in a repository of several (models/<name>)"
    )
    label_parser = commands.add_parser(
        "label", help="point a label (stable, canary...) of a model at a version"
    )
    label_parser.add_argument("model", help="the model (its folder's name)")
    label_parser.add_argument("label", help="the label: letters, digits, '.', '_', '-'")
    label_parser.add_argument("version", nargs="?", help="the version it names from now on")
    label_parser.add_argument("--remove", action="store_true", help="remove the label")
    prune_parser = commands.add_parser(
        "prune",
        help="remove old versions: all but the last N and those CURRENT, a label or the "
        "policy names",
    )
    prune_parser.add_argument(
        "model", nargs="?", help="the model, in a repository of several (its folder's name)"
    )
    prune_parser.add_argument(
        "--keep-last",
        type=int,
        default=None,
        help="versions kept besides the named ones (default: the policy's prune.keep_last)",
    )
    prune_parser.add_argument("--dry-run", action="store_true", help="only say what would go")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m app") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    # Flags become the settings' variables, which uvicorn's worker processes inherit.
    if getattr(args, "model_name", None):
        os.environ["CTR_MODEL_NAME"] = args.model_name
    if getattr(args, "model_dir", None):
        os.environ["CTR_MODEL_REPOSITORY"] = str(args.model_dir)
    try:
        get_settings()
    except ValidationError as exc:
        sys.stderr.write(f"error: {_bad_settings(exc)}\n")
        return 2
    if args.command == "prune":
        if args.keep_last is not None and args.keep_last < 1:
            parser.error("prune: --keep-last must be at least 1")
        return prune_versions(args.model, args.keep_last, args.dry_run)
    if args.command == "publish":
        return publish(args.source, args.if_empty, args.model)
    if args.command == "label":
        if (args.version is None) != args.remove:
            parser.error("label: give a VERSION, or --remove")
        return label(args.model, args.label, args.version)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
