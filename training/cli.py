"""``python -m training <command>`` -- the trainer's CLI: synth, prepare, train, tune, ladder,
evaluate, export, inspect.

Bad input ends with one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from app.features.errors import SpecError
from app.repository.manifest import DenseDtype, TableDtype
from training import commands
from training.data import DataError
from training.distributed import DEFAULT_TIMEOUT_S
from training.export import ExportError
from training.models import MODELS

logger = logging.getLogger("training")


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _memory_size(text: str) -> int:
    """``3G``, ``2500M``, ``512K`` or bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if cleaned and cleaned[-1] in units:
            return int(float(cleaned[:-1]) * units[cleaned[-1]])
        return int(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 3G or 2500M, got {text!r}"
        ) from None


def _duration_s(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d`` or seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    cleaned = text.strip().lower()
    try:
        if cleaned and cleaned[-1] in units:
            return float(cleaned[:-1]) * units[cleaned[-1]]
        return float(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30m, 1h or 3600, got {text!r}"
        ) from None


def _add_model_data_args(parser: argparse.ArgumentParser, data_help: str) -> None:
    """An exported model and rows without labels: predict's and drift's arguments."""
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help=data_help)
    parser.add_argument("--format", choices=["csv", "tsv", "criteo", "parquet"], default=None)
    parser.add_argument("--bad-rows", choices=["error", "skip"], default="error")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="a CSV/TSV/Criteo/Parquet file (.gz too), a directory of them, or a glob",
    )
    parser.add_argument(
        "--format",
        choices=["csv", "tsv", "criteo", "parquet"],
        default=None,
        help="file layout (default: from the suffix; Criteo must be named)",
    )
    parser.add_argument("--label", default=None, help="label column (default: label/click/rate)")
    parser.add_argument(
        "--weight", default=None, help="row weight column (regression: share of impressions)"
    )
    parser.add_argument("--categorical", type=_csv_list, default=(), help="categorical columns")
    parser.add_argument("--numeric", type=_csv_list, default=(), help="numeric columns (binned)")
    parser.add_argument("--ignore", type=_csv_list, default=(), help="columns to leave out")
    parser.add_argument(
        "--bad-rows",
        choices=["error", "skip"],
        default="error",
        help="malformed rows: stop at the first (default), or skip and report every one",
    )


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    add_data_args(parser)
    add_hyperparameter_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where encoded shards are kept and reused "
        "(default: $CTRSERVE_CACHE_DIR, else ~/.cache/ctrserve/shards)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="train on this rank's GPU (cuda), the CPU, or a GPU when there is one (auto)",
    )
    parser.add_argument(
        "--collective-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="under torchrun: seconds any rank waits for the others (shard preparation "
        "included) before the job ends with an error",
    )
    parser.add_argument(
        "--max-memory",
        type=_memory_size,
        default=None,
        help="refuse a run planned above this, e.g. 3G (default: the memory available now)",
    )


def add_hyperparameter_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and the TrainConfig flags; ``training.config`` says which wins."""
    parser.add_argument("--task", choices=["binary", "regression"], default=None)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML with TrainConfig fields; flags given here override it",
    )
    parser.add_argument("--embed-dim", type=int, default=None)
    parser.add_argument("--mlp-dims", type=_int_list, default=None, help="e.g. 400,400,400")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", "--lr", type=float, default=None)
    parser.add_argument("--l2", type=float, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument(
        "--negative-sampling",
        type=float,
        default=None,
        metavar="W",
        help="binary: keep every positive and a seeded share W of the negatives of every "
        "split (0.1: a tenth; the kept validation and test negatives weigh 1/W, so their "
        "metrics estimate the unsampled ones; `evaluate --split test` scores every row); "
        "the exported scores are corrected for it",
    )
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="binary: fit a calibration on the validation split (Platt's or isotonic, whichever "
        "predicts held-out validation rows better) and bake it into the exported graph "
        "(default: on)",
    )
    parser.add_argument(
        "--table-dtype",
        choices=get_args(TableDtype),
        default=None,
        help="store the exported embedding tables as this type (float16: half the bytes, "
        "int8: a quarter), dequantized inside the graph (default: float32)",
    )
    parser.add_argument(
        "--dense-dtype",
        choices=get_args(DenseDtype),
        default=None,
        help="store the exported MLP's weights as this type (int8: onnxruntime's MatMulNBits, "
        "8-bit weight blocks; each row scored independently of its batch) (default: float32)",
    )
    parser.add_argument(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the torch checkpoint in the exported version, for re-export and further "
        "training (default: on)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--min-count", type=int, default=None)
    parser.add_argument(
        "--max-vocab", type=int, default=None, help="keep at most this many values per field"
    )
    parser.add_argument(
        "--exact-values",
        type=int,
        default=None,
        help="distinct values a field counts exactly before a heavy-hitter sketch takes over",
    )
    parser.add_argument("--optimizer", choices=["adam", "adagrad"], default=None)
    parser.add_argument(
        "--time-column", default=None, help="split by time: train before --val-from, ..."
    )
    parser.add_argument("--val-from", default=None, help="time split: first validation value")
    parser.add_argument("--test-from", default=None, help="time split: first test value")
    parser.add_argument("--binning", choices=["quantile", "log"], default=None)
    parser.add_argument("--num-bins", type=int, default=None)


def build_parser(prog: str = "python -m training") -> argparse.ArgumentParser:
    """The training commands' parser (``prog``: the name usage and errors show)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write synthetic CTR logs with known p_true")
    synth.add_argument("--rows", type=int, default=200_000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--out", type=Path, required=True, help=".csv, .tsv (optionally .gz) or .parquet"
    )
    synth.add_argument(
        "--layout",
        choices=["default", "criteo"],
        default="default",
        help="criteo: 13 integer + 26 categorical fields, cardinalities up to ~10^6",
    )
    synth.add_argument(
        "--aggregate",
        action="store_true",
        help="write feature combinations with impressions and rate (regression)",
    )
    synth.add_argument(
        "--day", type=int, default=0, help="another day of the same world (same truth)"
    )
    synth.add_argument(
        "--shift",
        type=_csv_list,
        default=(),
        help="categorical fields that drift that day: new values, changed frequencies",
    )
    synth.add_argument(
        "--bias",
        type=float,
        default=None,
        help="--layout criteo: the intercept of the true logit (default -1.75: ~25%% clicks, "
        "as Criteo's own logs; -5: ~4%%, as most ad logs)",
    )

    prepare = commands.add_parser(
        "prepare", help="fit the spec and write the encoded shards into the cache, once"
    )
    _add_train_args(prepare)
    prepare.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="nffm",
        help="whose size defaults decide the data settings (as train would)",
    )

    train = commands.add_parser(
        "train", help="train one model and export it (alone, or as ranks under torchrun)"
    )
    _add_train_args(train)
    train.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=None,
        help="default: nffm, or with --warm-start the base's model",
    )
    train.add_argument(
        "--out",
        type=Path,
        required=True,
        help="model repository, e.g. models/nffm: adds a version and points CURRENT at it",
    )
    train.add_argument(
        "--warm-start",
        type=Path,
        default=None,
        help="continue this model (a repository's current version, or a version): its "
        "values keep their learned rows, today's new values get rows of their own, "
        "the layers carry over (train one epoch of today's data, e.g. --epochs 1)",
    )

    ladder = commands.add_parser(
        "ladder", help="train all seven models on one split, print a table"
    )
    _add_train_args(ladder)
    ladder.add_argument("--models", type=_csv_list, default=tuple(MODELS))
    ladder.add_argument("--report", type=Path, default=None, help="also write the table (Markdown)")
    ladder.add_argument("--out-dir", type=Path, default=None, help="also export each model here")

    evaluate = commands.add_parser("evaluate", help="score a file with an exported model (ORT)")
    evaluate.add_argument("--model-dir", type=Path, required=True)
    add_data_args(evaluate)
    evaluate.add_argument(
        "--split",
        choices=["all", "test", "val", "train"],
        default="all",
        help="rows to score: the whole file, or one split of the training run",
    )

    predict = commands.add_parser(
        "predict", help="score a file or a directory with an exported model (ORT), no label"
    )
    _add_model_data_args(predict, "a file the trainer reads, a directory or a glob")
    predict.add_argument("--out", type=Path, required=True, help="a .parquet or .csv file")
    predict.add_argument(
        "--keep", type=_csv_list, default=(), help="columns written beside the score, e.g. id"
    )

    join = commands.add_parser(
        "join", help="prediction log + label events -> training rows (Parquet)"
    )
    join.add_argument("--log", type=Path, required=True, help="prediction log directory or file")
    join.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="label events (.parquet or .csv): request_id, time and optionally row",
    )
    join.add_argument("--out", type=Path, required=True, help="the training file (.parquet)")
    join.add_argument(
        "--window",
        type=_duration_s,
        default=_duration_s("1h"),
        help="attribution window after serving, e.g. 30m, 1h, 1d (later events count as 0)",
    )
    join.add_argument(
        "--memory-limit", default="512MB", help="DuckDB's memory before it spills to disk"
    )

    drift = commands.add_parser(
        "drift", help="new data against a model's training data: PSI per field and score"
    )
    _add_model_data_args(drift, "a prediction log, or any file the trainer reads")
    drift.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="PSI at which a field is flagged and the command exits 1",
    )
    drift.add_argument("--plot", type=Path, default=None, help="also draw the PSI chart (PNG)")
    drift.add_argument("--report", type=Path, default=None, help="also write the table (Markdown)")

    tune = commands.add_parser(
        "tune",
        help="search the hyper-parameters on the validation rows (Optuna TPE with pruning)",
    )
    _add_train_args(tune)
    tune.add_argument("--model", choices=[*sorted(MODELS), "all"], default="nffm")
    tune.add_argument(
        "--trials",
        type=int,
        default=30,
        help="trials per model in the study (a resumed study counts the ones it has)",
    )
    tune.add_argument("--timeout", type=float, default=None, help="seconds per model for this run")
    tune.add_argument(
        "--out",
        type=Path,
        required=True,
        help="writes <model>.yaml (for train --config), trials.md and study.journal; "
        "a second run with the same --out goes on from the journal",
    )

    inspect = commands.add_parser("inspect", help="map a field's latent vectors (PCA/t-SNE)")
    inspect.add_argument("--model-dir", type=Path, required=True)
    inspect.add_argument("--field", required=True)
    inspect.add_argument("--plot", type=Path, required=True, help="PNG to write")
    inspect.add_argument("--method", choices=["pca", "tsne"], default="pca")
    inspect.add_argument(
        "--data", type=Path, default=None, help="rows to colour values by their click rate"
    )
    inspect.add_argument("--format", choices=["csv", "tsv", "criteo", "parquet"], default=None)

    export = commands.add_parser("export", help="re-export model.onnx from checkpoint.pt")
    export.add_argument("--model-dir", type=Path, required=True)
    export.add_argument(
        "--table-dtype",
        choices=get_args(TableDtype),
        default=None,
        help="store the embedding tables as this type (default: as the version does)",
    )
    export.add_argument(
        "--dense-dtype",
        choices=get_args(DenseDtype),
        default=None,
        help="store the MLP's weights as this type (default: as the version does)",
    )
    export.add_argument(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the checkpoint in the new version (default: on)",
    )
    export.add_argument(
        "--out",
        type=Path,
        default=None,
        help="repository (default: the same one, as a new version)",
    )
    return parser


def _ours_or_warnings(record: logging.LogRecord) -> bool:
    """Our INFO lines, everyone's warnings; the ONNX exporter's INFO chatter stays quiet."""
    return record.levelno >= logging.WARNING or record.name.startswith(("training", "app"))


def main(argv: list[str] | None = None, prog: str = "python -m training") -> int:
    # A rank that dies of a signal inside torch's or onnxruntime's C++ leaves torchrun only
    # "SIGSEGV received by PID ..."; this prints where every thread of it was.
    faulthandler.enable()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ours_or_warnings)
    args = build_parser(prog).parse_args(argv)
    return run_guarded(lambda: commands.run(args))


def run_guarded(command: Callable[[], int]) -> int:
    """Run a command; the domain's own errors (bad data, a bad model directory, a refused
    export, invalid settings) become one ``error:`` line and status 2. Anything else is a
    bug and keeps its traceback."""
    try:
        return command()
    except (DataError, SpecError, ExportError, ValidationError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
