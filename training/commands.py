"""What each CLI sub-command does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import yaml

from app.scoring.manifest import ModelManifest
from app.scoring.repository import resolve_model_dir
from app.scoring.scorer import Scorer
from training import synth
from training.config import config_from_args
from training.data import ColumnRoles, DataError, Table, read_table
from training.evaluation import Metrics, binary_metrics, oracle_metrics, regression_metrics
from training.export import reexport, write_artifact
from training.models import MODELS
from training.train import (
    Prepared,
    TrainConfig,
    count_parameters,
    evaluate,
    fit,
    new_model,
    prepare,
    split_rows,
)

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    handlers = {
        "synth": run_synth,
        "train": run_train,
        "ladder": run_ladder,
        "evaluate": run_evaluate,
        "export": run_export,
        "tune": run_tune,
        "inspect": run_inspect,
    }
    return handlers[args.command](args)


def _emit(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, indent=1) + "\n")


def run_synth(args: argparse.Namespace) -> int:
    if args.rows < 1:
        raise DataError(f"--rows must be a positive number of rows, got {args.rows}")
    frame = synth.generate(args.rows, args.seed)
    if args.aggregate:
        frame = synth.aggregate(frame)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix.lower() in {".parquet", ".pq"}:
        frame.to_parquet(args.out, index=False)
    else:
        frame.to_csv(args.out, index=False, sep="\t" if args.out.suffix == ".tsv" else ",")
    logger.info("wrote %d rows to %s", len(frame), args.out)
    return 0


def _read(args: argparse.Namespace, config: TrainConfig | None = None) -> Table:
    roles = ColumnRoles(args.label, args.weight, args.categorical, args.numeric, args.ignore)
    task = config.task if config is not None else "binary"
    return read_table(args.data, args.format, roles, task, args.bad_rows)


def _read_sized(args: argparse.Namespace, model: str) -> tuple[Table, TrainConfig]:
    """The table, then the config with defaults for its size: the config's task decides how
    the file is read, and the row count decides the defaults, so it is built twice."""
    table = _read(args, config_from_args(args, model))
    return table, config_from_args(args, model, len(table.frame))


def _test_rows(table: Table, config: TrainConfig) -> np.ndarray:
    return split_rows(len(table.frame), config.val_fraction, config.test_fraction, config.seed)[2]


def train_one(
    table: Table, prepared: Prepared, config: TrainConfig, out: Path | None, progress: bool
) -> dict[str, object]:
    """Fit one model on a prepared split, evaluate on test, optionally export it."""
    model = new_model(prepared, config)
    result = fit(model, prepared, config, progress=progress)
    split = prepared.test if len(prepared.test) else prepared.val
    metrics = evaluate(model, split, config.task)
    summary: dict[str, object] = {
        "model": config.model.name,
        "test": metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "parameters": count_parameters(model),
        "train_seconds": round(result.train_seconds, 2),
        "samples_per_s": round(result.samples_per_s),
    }
    if out is not None:
        training = {
            "data": str(table.path),
            "rows": len(table.frame),
            "label": table.label,
            "skipped_rows": len(table.skipped),
            "weight": table.weight,
            "config": config.model_dump(mode="json"),
            **{k: v for k, v in summary.items() if k not in {"model", "test"}},
            "history": result.history,
        }
        manifest = write_artifact(
            model, prepared.spec, config.model, config.task, out, metrics, training
        )
        summary["version"] = manifest.version
        summary["model_dir"] = str(out)
    return summary


def run_train(args: argparse.Namespace) -> int:
    table, config = _read_sized(args, args.model)
    prepared = prepare(table, config)
    logger.info(
        "%d rows: %d train / %d validation / %d test, %d fields",
        len(table.frame),
        len(prepared.train),
        len(prepared.val),
        len(prepared.test),
        len(prepared.spec.fields),
    )
    summary = train_one(table, prepared, config, args.out, progress=not args.no_progress)
    summary["skipped_rows"] = len(table.skipped)
    oracle = oracle_metrics(table, _test_rows(table, config), config.task)
    if oracle is not None:
        summary["oracle_test"] = oracle
    _emit(summary)
    return 0


def _known_models(names: tuple[str, ...]) -> None:
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise DataError(f"unknown models {unknown}; choose from {list(MODELS)}")


def run_ladder(args: argparse.Namespace) -> int:
    _known_models(args.models)
    table, _ = _read_sized(args, args.models[0])
    configs = [config_from_args(args, name, len(table.frame)) for name in args.models]
    prepared = prepare(table, configs[0])
    rows = []
    for config in configs:
        out = None if args.out_dir is None else args.out_dir / config.model.name
        rows.append(train_one(table, prepared, config, out, progress=not args.no_progress))
    oracle = oracle_metrics(table, _test_rows(table, configs[0]), configs[0].task)
    table_text = ladder_table(rows, oracle, configs[0].task)
    sys.stdout.write(table_text + "\n")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"Ladder on `{table.path.name}` ({len(table.frame):,} rows; "
            f"{len(prepared.train):,} train / {len(prepared.val):,} validation / "
            f"{len(prepared.test):,} test; seed {configs[0].seed}), "
            f"{time.strftime('%Y-%m-%d')}.\n\n"
        )
        args.report.write_text(header + table_text + "\n")
    return 0


def ladder_table(rows: list[dict[str, object]], oracle: Metrics | None, task: str) -> str:
    """A Markdown table: one line per model, plus the oracle when the truth is known."""
    if task == "binary":
        lines = [
            "| model | test AUC | test log loss | lift vs oracle | parameters | train s "
            "| samples/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            test = row["test"]
            assert isinstance(test, dict)
            lift = "" if oracle is None else f"{(test['auc'] - 0.5) / (oracle['auc'] - 0.5):.1%}"
            lines.append(
                f"| {row['model']} | {test['auc']:.4f} | {test['logloss']:.4f} | {lift} | "
                f"{row['parameters']:,} | {row['train_seconds']} | {row['samples_per_s']:,} |"
            )
        if oracle is not None:
            lines.append(
                f"| oracle (p_true) | {oracle['auc']:.4f} | {oracle['logloss']:.4f} | 100% | | | |"
            )
        return "\n".join(lines)
    head = "| model | test weighted RMSE | test RMSE | parameters | train s | samples/s |"
    lines = [head, "|---|---|---|---|---|---|"]
    for row in rows:
        test = row["test"]
        assert isinstance(test, dict)
        lines.append(
            f"| {row['model']} | {test['weighted_rmse']:.5f} | {test['rmse']:.5f} | "
            f"{row['parameters']:,} | {row['train_seconds']} | {row['samples_per_s']:,} |"
        )
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    scorer = Scorer.load(resolve_model_dir(args.model_dir))
    manifest = scorer.manifest
    table = read_table(
        args.data, args.format, _roles_for(manifest, args), manifest.task, args.bad_rows
    )
    if args.split != "all":
        config = TrainConfig.model_validate(manifest.training.get("config"))
        parts = split_rows(len(table.frame), config.val_fraction, config.test_fraction, config.seed)
        chosen = dict(zip(("train", "val", "test"), parts, strict=True))[args.split]
        table = replace(table, frame=table.frame.iloc[chosen])
    indices = scorer.encoder.encode_columns(table.feature_columns(), len(table.frame))
    predictions = scorer.score_indices(indices)
    if manifest.task == "binary":
        metrics = binary_metrics(table.labels, predictions)
    else:
        metrics = regression_metrics(table.labels, predictions, table.weights)
    _emit(
        {
            "model_dir": str(scorer.model_dir),
            "version": manifest.version,
            "split": args.split,
            "skipped_rows": len(table.skipped),
            **metrics,
        }
    )
    return 0


def _roles_for(manifest: ModelManifest, args: argparse.Namespace) -> ColumnRoles:
    """The model's own fields and label, unless the user names other columns."""
    from app.features.spec import CategoricalField

    fields = manifest.features.fields
    label = args.label or manifest.training.get("label")
    weight = args.weight or manifest.training.get("weight")
    return ColumnRoles(
        label=label if isinstance(label, str) else None,
        weight=weight if isinstance(weight, str) else None,
        categorical=args.categorical
        or tuple(f.name for f in fields if isinstance(f, CategoricalField)),
        numeric=args.numeric
        or tuple(f.name for f in fields if not isinstance(f, CategoricalField)),
        ignore=args.ignore,
    )


def run_export(args: argparse.Namespace) -> int:
    manifest = reexport(args.model_dir, args.out)
    _emit({"model_dir": str(args.out or args.model_dir), "version": manifest.version})
    return 0


def run_tune(args: argparse.Namespace) -> int:
    """Search min-count, embedding size and L2 on the validation rows; knobs given as flags
    are held. Prints every trial; ``--write-config`` saves the winner for ``train --config``."""
    from training.tuning import GRID, settings_of, tune

    table, config = _read_sized(args, args.model)
    grid = {knob: values for knob, values in GRID.items() if getattr(args, knob) is None}
    if not grid:
        raise DataError("nothing to tune: --min-count, --embed-dim and --l2 are all given")
    best, trials = tune(table, config, grid)
    summary: dict[str, object] = {
        "model": args.model,
        "best": settings_of(best, GRID),
        "trials": [asdict(trial) for trial in trials],
    }
    if args.write_config is not None:
        mapping = best.model_dump(mode="json", exclude={"model"})
        mapping["model"] = best.model.model_dump(mode="json", exclude={"name"})
        args.write_config.parent.mkdir(parents=True, exist_ok=True)
        args.write_config.write_text(yaml.safe_dump(mapping, sort_keys=False))
        summary["config"] = str(args.write_config)
    _emit(summary)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from training.inspect_vectors import plot_field

    table = None
    if args.data is not None:
        manifest = ModelManifest.load(resolve_model_dir(args.model_dir))
        own_columns = argparse.Namespace(
            label=None, weight=None, categorical=(), numeric=(), ignore=()
        )
        roles = _roles_for(manifest, own_columns)
        table = read_table(args.data, args.format, roles, manifest.task, "skip")
    _emit(plot_field(args.model_dir, args.field, table, args.plot, args.method))
    return 0
