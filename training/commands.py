"""What each CLI sub-command does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import yaml
from pydantic import JsonValue
from torch import nn

from app.model.scorer import Scorer
from app.repository.manifest import ModelManifest
from app.repository.store import resolve_model_dir
from training import drift, synth
from training.batch_predict import predict_file, score_indices
from training.calibration import MIN_CLASS_ROWS, MIN_ROWS, Calibration, fit_calibration
from training.config import MODEL_FLAGS, config_from_args, flags_of, read_config_file
from training.data import BadRowLog, ColumnRoles, DataError, DataSource, open_source
from training.dataset import Prepared, encode_batch, prepare, split_rule
from training.distributed import (
    Cluster,
    check_same,
    cluster_session,
    in_turn,
    single_process_only,
)
from training.evaluation import Metrics, binary_metrics, oracle_metrics, regression_metrics
from training.export import VersionDraft, reexport
from training.label_join import join
from training.memory import available_memory, check_fits, plan
from training.models import MODELS, ModelConfig
from training.split import SPLIT_NAMES, time_cuts
from training.statistics import TrainingStatistics, index_counts, score_histogram
from training.train import (
    Scored,
    TrainConfig,
    correct_for_sampling,
    corrected_scores,
    count_parameters,
    evaluate,
    fit,
    new_model,
    predict_split,
)
from training.warm_start import (
    WarmStart,
    carried_optimizer,
    decayed_counts,
    load_warm_start,
    transplant,
)

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    handlers = {
        "synth": run_synth,
        "prepare": run_prepare,
        "train": run_train,
        "ladder": run_ladder,
        "evaluate": run_evaluate,
        "predict": run_predict,
        "join": run_join,
        "drift": run_drift,
        "export": run_export,
        "tune": run_tune,
        "inspect": run_inspect,
    }
    return handlers[args.command](args)


def _emit(payload: object) -> None:
    sys.stdout.write(json.dumps(_json_ready(payload), indent=1, allow_nan=False) + "\n")


def _json_ready(value: object) -> object:
    """``value`` with each NaN or infinite number (an undefined metric) as null: JSON has
    neither, and a strict reader refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value


def run_synth(args: argparse.Namespace) -> int:
    if args.rows < 1:
        raise DataError(f"--rows must be a positive number of rows, got {args.rows}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        rows = synth.write(
            args.out,
            args.rows,
            args.seed,
            args.layout,
            args.aggregate,
            args.day,
            args.shift,
            args.bias,
        )
    except ValueError as exc:
        raise DataError(str(exc)) from None
    logger.info("wrote %d rows to %s", rows, args.out)
    return 0


def _source(args: argparse.Namespace, config: TrainConfig) -> DataSource:
    roles = ColumnRoles(args.label, args.weight, args.categorical, args.numeric, args.ignore)
    return open_source(args.data, args.format, roles, config.task, config.time_column)


def _prepared(
    args: argparse.Namespace,
    model: str,
    cluster: Cluster | None = None,
    base: WarmStart | None = None,
) -> tuple[Prepared, TrainConfig, int]:
    """The prepared shards, the config and the row count its size defaults came from
    (estimated before reading). The config's task decides how the file is read, so a
    config without the row count comes first. In a job the shards are prepared once and
    every rank checks that it holds the same spec and splits as rank 0."""
    cluster = cluster or Cluster()
    _fill_time_split(args, model, base)
    source = _source(args, config_from_args(args, model))
    rows = source.estimated_rows()
    config = config_from_args(args, model, rows)
    if base is not None:
        config = config.model_copy(update={"model": _continued(args, config, base)})
    prepared = in_turn(cluster, lambda: _prepare(source, config, args, base))
    layout = [len(prepared.train), len(prepared.val), len(prepared.test), prepared.fingerprint]
    check_same(cluster, "spec and splits", prepared.spec.model_dump_json() + repr(layout))
    return prepared, config, rows


def _fill_time_split(args: argparse.Namespace, model: str, base: WarmStart | None = None) -> None:
    """Complete a time split the command line named only by its column: the cut-offs from
    the column's values (``split.time_cuts``), written into ``args`` so every config built
    from them, for every model, splits alike. A warm start splits by its base's time column
    when none is given (a daily job validates on the day's latest rows)."""
    if base is not None and args.time_column is None:
        trained = base.trained.training.get("config")
        args.time_column = trained.get("time_column") if isinstance(trained, dict) else None
    if args.time_column is None or args.val_from is not None or args.test_from is not None:
        return
    config = config_from_args(args, model)
    source = _source(args, config)
    times = [batch.time for batch in source.batches(BadRowLog("skip")) if batch.time is not None]
    if not times:
        raise DataError(f"{source.name}: no rows to split by {args.time_column!r}")
    args.val_from, args.test_from = time_cuts(
        pa.concat_arrays(times), config.val_fraction, config.test_fraction
    )
    logger.info(
        "time split by %s: validation from %s, test from %s",
        args.time_column,
        args.val_from,
        args.test_from,
    )


def _continued(args: argparse.Namespace, config: TrainConfig, base: WarmStart) -> ModelConfig:
    """The model a warm start continues, checked against the one the flags ask for."""
    given = {k: v for k, v in flags_of(args).items() if k in MODEL_FLAGS and v is not None}
    wanted = base.model_config
    if config.model.name != wanted.name or any(
        getattr(wanted, k) != (tuple(v) if isinstance(v, list) else v) for k, v in given.items()
    ):
        raise DataError(
            f"--warm-start continues {base.version}, a {wanted.name} "
            f"({wanted.model_dump(exclude={'name'})}); give --model {wanted.name} and no "
            "other model hyper-parameters"
        )
    return wanted


def _prepare(
    source: DataSource,
    config: TrainConfig,
    args: argparse.Namespace,
    base: WarmStart | None = None,
) -> Prepared:
    prepared = prepare(source, config, args.cache_dir, args.bad_rows, base)
    logger.info(
        "%s rows: %s train / %s validation / %s test, %d fields, shards in %s",
        f"{prepared.rows:,}",
        f"{len(prepared.train):,}",
        f"{len(prepared.val):,}",
        f"{len(prepared.test):,}",
        len(prepared.spec.fields),
        prepared.directory,
    )
    return prepared


def run_prepare(args: argparse.Namespace) -> int:
    """Read the data, fit the spec and write the shards into the cache, nothing else: the
    step a multi-node job runs once (an init container, a first job) before its ranks start,
    so that none of them waits for another to read the logs."""
    single_process_only("prepare")
    prepared = _prepared(args, args.model)[0]
    _emit(
        {
            "shards": str(prepared.directory),
            "rows": prepared.rows,
            "splits": {s.name: len(s) for s in (prepared.train, prepared.val, prepared.test)},
            "fields": len(prepared.spec.fields),
            "table_rows": sum(prepared.spec.field_dims),
            "skipped_rows": prepared.skipped,
            "pass_seconds": prepared.seconds,
        }
    )
    return 0


def _check_memory(
    prepared: Prepared, config: TrainConfig, budget: int | None, cluster: Cluster
) -> dict[str, int]:
    """Print the memory plan; refuse (with the knobs to turn) when it does not fit. Ranks on
    one machine share its memory: each gets its share of the budget."""
    per_rank = cluster.rank_batch(config.batch_size)
    memory = plan(
        prepared.spec.field_dims,
        config.model,
        per_rank,
        config.optimizer,
        config.table_dtype,
        config.dense_dtype,
    )
    limit = (budget if budget is not None else available_memory()) // cluster.local_world_size
    logger.info(
        "memory plan for %s (budget %s MiB):\n  %s",
        config.model.name,
        f"{limit >> 20:,}",
        "\n  ".join(memory.lines()),
    )
    check_fits(memory, limit)
    return {"planned_mib": memory.total >> 20, "budget_mib": limit >> 20}


def train_one(
    prepared: Prepared,
    config: TrainConfig,
    out: Path | None,
    progress: bool,
    max_memory: int | None = None,
    cluster: Cluster | None = None,
    base: WarmStart | None = None,
) -> dict[str, object]:
    """Fit one model on prepared shards, evaluate on test, optionally export it. In a job
    every rank trains; only rank 0 scores the test rows and exports (the others get ``{}``).
    With ``base``, the model starts from that version's rows and layers."""
    cluster = cluster or Cluster()
    memory = _check_memory(prepared, config, max_memory, cluster)
    model = new_model(prepared, config)
    warm: dict[str, object] | None = None
    carried = None
    if base is not None:
        warm = {"from": base.version, **transplant(base, model, prepared.spec)}
        carried, warm["optimizer"] = carried_optimizer(base, prepared.spec, config.optimizer)
    result = fit(
        model, prepared, config, progress=progress, cluster=cluster, optimizer_state=carried
    )
    if not cluster.is_main:
        return {}
    model.to("cpu")
    if config.negative_sampling < 1.0:
        correct_for_sampling(model, config.negative_sampling)
    # The weights are final: an export starts writing the training state now, while the
    # validation and test rows are scored.
    draft = (
        None
        if out is None
        else VersionDraft(
            model,
            prepared.spec,
            out,
            config.checkpoint,
            result.optimizer.state() if result.optimizer is not None else None,
        )
    )
    validation = result.best_validation
    if validation is not None and config.negative_sampling < 1.0:
        scores, labels, weights = validation
        validation = corrected_scores(scores, config.negative_sampling), labels, weights
    with draft or nullcontext():
        metrics, calibration, reference_scores, reference_weights = _scored(
            model, prepared, config, out is not None, validation
        )
        summary: dict[str, object] = {
            "model": config.model.name,
            "test": metrics,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "parameters": count_parameters(model),
            "pass_seconds": prepared.seconds,
            "train_seconds": round(result.train_seconds, 2),
            "samples_per_s": round(result.samples_per_s),
            "processes": cluster.world_size,
            "device": str(cluster.device),
            "memory": memory,
            "calibration_map": None if calibration is None else calibration.method,
            **({} if warm is None else {"warm_start": warm}),
        }
        if draft is not None:
            source = prepared.source
            # what spec.json records of the run; the manifest validates it as JSON
            training = cast(
                dict[str, JsonValue],
                {
                    "data": [p.name for p in source.files],
                    "data_fingerprint": prepared.fingerprint,
                    "rows": prepared.rows,
                    "label": source.label,
                    "skipped_rows": prepared.skipped,
                    "weight": source.weight,
                    "config": config.model_dump(mode="json"),
                    **{k: v for k, v in summary.items() if k not in {"model", "test"}},
                    "history": result.history,
                },
            )
            manifest = draft.finish(
                config.model,
                config.task,
                metrics,
                training,
                _statistics(
                    prepared,
                    reference_scores,
                    reference_weights,
                    config.negative_sampling,
                    base,
                    config.count_decay,
                ),
                calibration,
                config.table_dtype,
                config.dense_dtype,
            )
            summary["version"] = manifest.version
            summary["model_dir"] = str(out)
    return summary


def _scored(
    model: nn.Module,
    prepared: Prepared,
    config: TrainConfig,
    exported: bool,
    validation: Scored | None = None,
) -> tuple[Metrics, Calibration | None, np.ndarray, np.ndarray | None]:
    """The test metrics (of the calibrated scores, and the model's own beside them), the
    calibration, and the validation scores as served with their weights (for an export's
    drift statistics; empty when nothing needs them). ``validation``: the model's scores
    of the validation rows, when fit kept them."""
    # The validation rows are scored when anything needs them and fit did not keep them:
    # the calibration is fitted on them, and an export's drift statistics keep their
    # scores as served.
    reference = prepared.val if len(prepared.val) else prepared.test
    calibrates = config.task == "binary" and config.calibrate
    reference_scores, reference_labels = np.empty(0), np.empty(0)
    reference_weights: np.ndarray | None = None
    if exported or calibrates:
        reference_scores, reference_labels, reference_weights = (
            validation
            if validation is not None and reference is prepared.val
            else predict_split(model, reference, config.task)
        )
    calibration = (
        _calibration(reference_labels, reference_scores, reference_weights) if calibrates else None
    )
    split = prepared.test if len(prepared.test) else prepared.val
    if calibration is None:
        return evaluate(model, split, config.task), None, reference_scores, reference_weights
    # the test metrics of the scores the graph serves, and of the model's own
    scores, labels, weights = reference_scores, reference_labels, reference_weights
    if split is not reference:
        scores, labels, weights = predict_split(model, split, config.task)
    before = binary_metrics(labels, scores, weights)
    metrics = binary_metrics(labels, calibration.apply(scores), weights)
    kept = ("auc", "logloss", "ne", "calibration", "ece")
    metrics |= {f"uncalibrated_{k}": before[k] for k in kept}
    return metrics, calibration, calibration.apply(reference_scores), reference_weights


def _calibration(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None
) -> Calibration | None:
    """The map of the validation labels on the model's probabilities that predicts held-out
    rows best (``None``, with a warning, when the split is too small to fit one)."""
    calibration = fit_calibration(labels, scores, weights)
    if calibration is None:
        logger.warning(
            "no calibration: the validation split is too small to fit one (%d rows; it needs "
            "%d, and %d of each class)",
            len(labels),
            MIN_ROWS,
            MIN_CLASS_ROWS,
        )
    else:
        logger.info(
            "calibration: %s (held-out log loss %s)",
            calibration.method,
            ", ".join(f"{name} {loss:.5f}" for name, loss in calibration.held_out_logloss),
        )
    return calibration


def _statistics(
    prepared: Prepared,
    scores: np.ndarray,
    weights: np.ndarray | None,
    sampling: float,
    base: WarmStart | None = None,
    decay: float = 1.0,
) -> TrainingStatistics:
    """The training rows' index counts (those of the rows before negative down-sampling)
    and the validation scores as served (calibrated, weighted as the rows are), for
    ``ctrserve drift``; after a warm start, the decayed counts of every day too, for the
    next one."""
    edges, counts = score_histogram(scores, weights)
    today, rows = index_counts(prepared.spec, prepared.train, 1.0 / sampling)
    return TrainingStatistics(
        rows=rows,
        field_counts=today,
        score_edges=edges,
        score_counts=counts,
        vocabulary_counts=None
        if base is None
        else decayed_counts(base, prepared.spec, today, decay),
    )


def _oracle(prepared: Prepared) -> Metrics | None:
    return oracle_metrics(prepared.test if len(prepared.test) else prepared.val)


def run_train(args: argparse.Namespace) -> int:
    with cluster_session(args.device, args.collective_timeout) as cluster:
        base = None if args.warm_start is None else load_warm_start(args.warm_start)
        model = args.model or ("nffm" if base is None else base.model_config.name)
        prepared, config, _ = _prepared(args, model, cluster, base)
        summary = train_one(
            prepared, config, args.out, not args.no_progress, args.max_memory, cluster, base
        )
    if not cluster.is_main:
        return 0
    summary["skipped_rows"] = prepared.skipped
    if prepared.skipped:
        summary["skipped_rows_file"] = str(prepared.skipped_file)
    oracle = _oracle(prepared) if config.task == "binary" else None
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
    with cluster_session(args.device, args.collective_timeout) as cluster:
        prepared, first, rows = _prepared(args, args.models[0], cluster)
        configs = [config_from_args(args, name, rows) for name in args.models]
        results = []
        for config in configs:
            out = None if args.out_dir is None else args.out_dir / config.model.name
            # Models share the shards: the data settings are the same for every rung.
            results.append(
                train_one(prepared, config, out, not args.no_progress, args.max_memory, cluster)
            )
    if not cluster.is_main:
        return 0
    oracle = _oracle(prepared) if first.task == "binary" else None
    table_text = ladder_table(results, oracle, first.task)
    sys.stdout.write(table_text + "\n")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"Ladder on `{prepared.source.name}` ({prepared.rows:,} rows; "
            f"{len(prepared.train):,} train / {len(prepared.val):,} validation / "
            f"{len(prepared.test):,} test; seed {first.seed}), "
            f"{time.strftime('%Y-%m-%d')}.\n\n"
        )
        args.report.write_text(header + table_text + "\n")
    return 0


def ladder_table(rows: list[dict[str, object]], oracle: Metrics | None, task: str) -> str:
    """A Markdown table: one line per model, plus the oracle when the truth is known."""
    if task == "binary":
        lines = [
            "| model | test AUC | test log loss | NE | mean predicted / observed | ECE "
            "| lift vs oracle | parameters | train s | samples/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            test = row["test"]
            assert isinstance(test, dict)
            lift = "" if oracle is None else f"{(test['auc'] - 0.5) / (oracle['auc'] - 0.5):.1%}"
            lines.append(
                f"| {row['model']} | {test['auc']:.4f} | {test['logloss']:.4f} | "
                f"{test['ne']:.4f} | {test['calibration']:.3f} | {test['ece']:.4f} | {lift} | "
                f"{row['parameters']:,} | {row['train_seconds']} | {row['samples_per_s']:,} |"
            )
        if oracle is not None:
            lines.append(
                f"| oracle (p_true) | {oracle['auc']:.4f} | {oracle['logloss']:.4f} | "
                f"{oracle['ne']:.4f} | {oracle['calibration']:.3f} | {oracle['ece']:.4f} | "
                "100% | | | |"
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
    """Score a file with an exported model through onnxruntime, streamed batch by batch;
    ``--split`` scores one split of the training run, and refuses a file that is not the
    one the model was trained on."""
    scorer = Scorer.load(resolve_model_dir(args.model_dir))
    manifest = scorer.manifest
    config = None
    if args.split != "all":
        config = TrainConfig.model_validate(manifest.training.get("config"))
    source = open_source(
        args.data,
        args.format,
        _roles_for(manifest, args),
        manifest.task,
        None if config is None else config.time_column,
    )
    if config is not None:
        trained_on = manifest.training.get("data_fingerprint")
        if trained_on != source.fingerprint():
            raise DataError(
                f"{args.data}: not the data this model was trained on (its fingerprint "
                f"differs from the one in spec.json), so its {args.split} split would not be "
                "the same rows; use --split all to score the whole file"
            )
    wanted = None if config is None else SPLIT_NAMES.index(args.split)
    # every row of the split, also where training down-sampled its negatives: the
    # metrics of the scores served on the data as it comes
    rule = None if config is None else split_rule(config).unsampled()
    log = BadRowLog(args.bad_rows)
    predictions, labels, weights = [], [], []
    for batch in source.batches(log):
        if rule is not None:
            batch = batch.take(np.flatnonzero(rule.assign(batch) == wanted))
            if len(batch) == 0:
                continue
        predictions.append(score_indices(scorer, encode_batch(scorer.encoder, batch)))
        labels.append(batch.labels)
        if batch.weights is not None:
            weights.append(batch.weights)
    if not predictions:
        raise DataError(f"{args.data}: no rows to score in the {args.split} split")
    scores, truth = np.concatenate(predictions), np.concatenate(labels)
    given = np.concatenate(weights) if weights else None
    if manifest.task == "binary":
        metrics = binary_metrics(truth, scores, given)
    else:
        metrics = regression_metrics(truth, scores, given)
    _emit(
        {
            "model_dir": str(scorer.model_dir),
            "version": manifest.version,
            "split": args.split,
            "skipped_rows": len(log.rows),
            **metrics,
        }
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    summary = predict_file(
        args.model_dir, args.data, args.out, args.format, args.keep, BadRowLog(args.bad_rows)
    )
    _emit({**asdict(summary), "rows_per_s": round(summary.rows_per_s)})
    return 0


def run_join(args: argparse.Namespace) -> int:
    summary = join(args.log, args.labels, args.out, args.window, args.memory_limit)
    _emit({**asdict(summary), "label_share": round(summary.label_share, 6)})
    return 0


def _check_plot(path: Path | None) -> None:
    """Refuse a picture format matplotlib cannot write before any work is done (no suffix:
    its default, PNG)."""
    if path is None or not path.suffix:
        return
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.suffix.lower().lstrip(".") not in formats:
        raise DataError(f"--plot {path}: name a picture file ({', '.join(formats)})")


def run_drift(args: argparse.Namespace) -> int:
    """Exit 1 when a field or the score drifted past the threshold (0: none did)."""
    if args.threshold <= 0:
        raise DataError(f"--threshold must be positive, got {args.threshold}")
    _check_plot(args.plot)
    report = drift.drift(
        args.model_dir, args.data, args.format, args.threshold, BadRowLog(args.bad_rows)
    )
    text = drift.table(report)
    sys.stdout.write(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    if args.plot is not None:
        drift.plot(report, args.plot)
    if report.flagged:
        logger.warning("drift past %g in: %s", args.threshold, ", ".join(report.flagged))
        return 1
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
    manifest = reexport(
        args.model_dir, args.out, args.table_dtype, args.checkpoint, args.dense_dtype
    )
    _emit({"model_dir": str(args.out or args.model_dir), "version": manifest.version})
    return 0


def run_tune(args: argparse.Namespace) -> int:
    """Search the knobs on the validation rows (Optuna), for one model or, with ``--model
    all``, every model of the ladder with the same budget; knobs given as flags or in
    ``--config`` are held. Writes each winner to ``<out>/<model>.yaml`` for ``train
    --config``, every trial to ``<out>/trials.md``, and the study to
    ``<out>/study.journal``, from which a second run goes on."""
    from training.tuning import KNOBS, Budget, trials_markdown, tune

    single_process_only("tune")
    if args.trials < 1:
        raise DataError(f"--trials must be at least 1, got {args.trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise DataError(f"--timeout must be positive, got {args.timeout}")
    models = tuple(MODELS) if args.model == "all" else (args.model,)
    file_settings, flags = read_config_file(args.config), flags_of(args)
    given = {**file_settings, **(file_settings.get("model") or {})}
    held = {k for k in KNOBS if flags.get(k) is not None or k in given}
    if held == set(KNOBS):
        raise DataError("nothing to tune: every knob is given as a flag or in --config")
    _fill_time_split(args, models[0])
    source = _source(args, config_from_args(args, models[0]))
    rows = source.estimated_rows()
    budget = Budget(args.trials, args.timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    studies, summary = {}, {}
    for name in models:
        start = config_from_args(args, name, rows)
        fingerprint = _prepare(source, start, args).fingerprint
        best, trials = tune(
            lambda trial: _prepare(source, trial, args),
            start,
            budget,
            held,
            args.out / "study.journal",
            fingerprint,
        )
        studies[name] = trials
        mapping = best.model_dump(mode="json", exclude={"model"})
        mapping["model"] = best.model.model_dump(mode="json", exclude={"name"})
        path = args.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(mapping, sort_keys=False))
        won = max((t for t in trials if t.state == "complete"), key=lambda t: t.val_score)
        summary[name] = {
            "best": won.settings,
            "validation": won.val_score,
            "trials": len(trials),
            "pruned": sum(t.state == "pruned" for t in trials),
            "config": str(path),
        }
    (args.out / "trials.md").write_text(trials_markdown(studies))
    _emit(summary)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from training.inspect_vectors import plot_field

    _check_plot(args.plot)
    source = None
    if args.data is not None:
        manifest = ModelManifest.load(resolve_model_dir(args.model_dir))
        own_columns = argparse.Namespace(
            label=None, weight=None, categorical=(), numeric=(), ignore=()
        )
        roles = _roles_for(manifest, own_columns)
        source = open_source(args.data, args.format, roles, manifest.task)
    _emit(plot_field(args.model_dir, args.field, source, args.plot, args.method))
    return 0
