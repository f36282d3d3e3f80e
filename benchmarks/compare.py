"""Quality side by side on one seeded split: the ladder vs LightGBM vs DeepCTR-Torch.

Every contender sees the same rows and the same encoded fields (the spec fitted on the
training rows); every number on the test rows comes with a bootstrap 95% interval, because
the public slices here are small.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from app.scoring.repository import resolve_model_dir
from app.scoring.scorer import Scorer
from benchmarks.timing import median_seconds
from training.config import build_config
from training.data import BadRowLog, BadRows, DataSource
from training.dataset import Prepared, prepare
from training.evaluation import binary_metrics, oracle_metrics
from training.export import write_artifact
from training.models import MODELS
from training.optim import SparseOptimizer
from training.train import TrainConfig, count_parameters, fit, new_model, predict
from training.tuning import GRID, SMALL_DATA_ROWS, Trial, settings_of, tune

logger = logging.getLogger(__name__)

BOOTSTRAP_ROUNDS = 1000
LIGHTGBM_LEAVES = (15, 63, 255)
LIGHTGBM_MAX_ROUNDS = 20_000


@dataclass(frozen=True)
class Entry:
    """One contender's result on the test rows."""

    name: str
    family: str
    auc: float
    auc_low: float
    auc_high: float
    logloss: float
    ne: float  # normalized entropy: log loss over the entropy of the observed rate
    calibration: float  # mean predicted / observed
    ece: float  # expected calibration error
    train_s: float
    samples_per_s: float
    parameters: int
    onnx_kb: float | None = None
    latency_us: float | None = None
    note: str = ""
    split_aucs: tuple[float, ...] = ()  # test AUC on seeded splits 0, 1, ... (``repeats``)


def bootstrap_auc(
    labels: np.ndarray, scores: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the AUC over resampled test rows."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        sample = rng.integers(0, len(labels), len(labels))
        if labels[sample].min() != labels[sample].max():
            values.append(roc_auc_score(labels[sample], scores[sample]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _entry(
    name: str,
    family: str,
    labels: np.ndarray,
    scores: np.ndarray,
    train_s: float,
    samples: int,
    parameters: int,
    **extra: object,
) -> Entry:
    low, high = bootstrap_auc(labels, scores)
    metrics = binary_metrics(labels, scores)
    return Entry(
        name=name,
        family=family,
        auc=metrics["auc"],
        auc_low=low,
        auc_high=high,
        logloss=metrics["logloss"],
        ne=metrics["ne"],
        calibration=metrics["calibration"],
        ece=metrics["ece"],
        train_s=train_s,
        samples_per_s=samples / max(train_s, 1e-9),
        parameters=parameters,
        **extra,  # type: ignore[arg-type]
    )


Preparer = Callable[[TrainConfig], Prepared]


def run_ladder_model(prepared: Prepared, config: TrainConfig, workdir: Path) -> Entry:
    model = new_model(prepared, config)
    result = fit(model, prepared, config, progress=False)
    test = prepared.test.load()
    scores = predict(model, test.indices, "binary")
    out = workdir / config.model.name
    write_artifact(
        model,
        prepared.spec,
        config.model,
        "binary",
        out,
        binary_metrics(test.labels, scores),
        {},
    )
    scorer = Scorer.load(resolve_model_dir(out))
    row = _raw_row(prepared.source)
    latency = median_seconds(lambda: scorer.score_rows([row]), 2000) * 1e6
    return _entry(
        config.model.name,
        "ctrserve",
        test.labels,
        scores,
        result.train_seconds,
        len(prepared.train) * len(result.history),
        count_parameters(model),
        onnx_kb=scorer.file_bytes / 1024,  # the graph and its weights file
        latency_us=latency,
        note=f"{settings_note(config)}, best epoch {result.best_epoch}",
    )


def settings_note(config: TrainConfig) -> str:
    embedding = "" if config.model.name == "lr" else f"k={config.model.embed_dim}, "
    return f"{embedding}L2 {config.l2:g}, min-count {config.min_count}"


def run_lightgbm(prepared: Prepared, seed: int) -> Entry:
    """LightGBM on the same fields, in its best setting on validation: native categoricals
    or each index replaced by its training frequency, times ``LIGHTGBM_LEAVES``."""
    import lightgbm as lgb

    train_rows, val_rows, test_rows = (
        split.load() for split in (prepared.train, prepared.val, prepared.test)
    )
    frequency = [
        np.bincount(train_rows.indices[:, j], minlength=dim)
        for j, dim in enumerate(prepared.spec.field_dims)
    ]

    def features(indices: np.ndarray, mode: str) -> np.ndarray:
        if mode == "categorical":
            return indices
        return np.stack([frequency[j][indices[:, j]] for j in range(indices.shape[1])], axis=1)

    # Large files: a faster rate, so early stopping rather than the round cap ends the fit.
    learning_rate = 0.05 if len(train_rows) < SMALL_DATA_ROWS else 0.1
    best: tuple[float, str, int, object, float] | None = None
    for mode, num_leaves in itertools.product(("categorical", "frequency"), LIGHTGBM_LEAVES):
        started = time.perf_counter()
        train = lgb.Dataset(
            features(train_rows.indices, mode),
            train_rows.labels,
            categorical_feature="auto"
            if mode == "frequency"
            else list(range(train_rows.indices.shape[1])),
            free_raw_data=False,
        )
        valid = lgb.Dataset(features(val_rows.indices, mode), val_rows.labels, reference=train)
        params = {
            "objective": "binary",
            "learning_rate": learning_rate,
            "num_leaves": num_leaves,
            "min_data_in_leaf": 20,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.9,
            "bagging_freq": 1,
            "cat_smooth": 10,
            "verbose": -1,
            "seed": seed,
            "num_threads": 2,
            "deterministic": True,
        }
        booster = lgb.train(
            params,
            train,
            num_boost_round=LIGHTGBM_MAX_ROUNDS,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        elapsed = time.perf_counter() - started
        val_auc = roc_auc_score(val_rows.labels, booster.predict(features(val_rows.indices, mode)))
        logger.info(
            "LightGBM %s, %d leaves: validation AUC %.4f, %d trees",
            mode,
            num_leaves,
            val_auc,
            booster.best_iteration,
        )
        if best is None or val_auc > best[0]:
            best = (val_auc, mode, num_leaves, booster, elapsed)
    assert best is not None
    _, mode, num_leaves, booster, elapsed = best
    scores = booster.predict(features(test_rows.indices, mode))  # type: ignore[attr-defined]
    trees = booster.best_iteration  # type: ignore[attr-defined]
    capped = " (round cap)" if trees >= LIGHTGBM_MAX_ROUNDS else ""
    return _entry(
        "LightGBM",
        "LightGBM",
        test_rows.labels,
        scores,
        elapsed,
        len(train_rows),  # one fit over the rows: samples/s = rows / fit time
        trees * num_leaves,
        note=f"{mode}, {num_leaves} leaves, lr {learning_rate}, {trees} trees{capped}",
    )


@contextlib.contextmanager
def _deepctr_offline() -> Iterator[None]:
    """Import DeepCTR-Torch without its import-time version check reaching the network, and
    keep its prints ("cpu", "Train on ...") off our stdout, which carries the results."""
    import requests

    before = set(threading.enumerate())
    original = requests.get

    def refuse(*args: object, **kwargs: object) -> None:
        raise requests.ConnectionError("no network calls at run time")

    requests.get = refuse  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import deepctr_torch  # noqa: F401  (starts the version-check thread)

            for thread in set(threading.enumerate()) - before:
                thread.join(timeout=10)
            yield
    finally:
        requests.get = original  # type: ignore[assignment]


def run_deepctr(prepared: Prepared, name: str, config: TrainConfig) -> Entry:
    """DeepCTR-Torch's DeepFM or ONN on the same encoded fields and hyper-parameters."""
    with _deepctr_offline():
        return _run_deepctr(prepared, name, config)


def _deepctr_inputs(indices: np.ndarray) -> dict[str, np.ndarray]:
    return {f"f{j}": indices[:, j].astype(np.int64) for j in range(indices.shape[1])}


def _deepctr_model(name: str, prepared: Prepared, config: TrainConfig) -> torch.nn.Module:
    """DeepCTR-Torch's DeepFM or ONN over our encoded fields, with our hyper-parameters."""
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import ONN, DeepFM

    columns = [
        SparseFeat(f"f{j}", vocabulary_size=d, embedding_dim=config.model.embed_dim)
        for j, d in enumerate(prepared.spec.field_dims)
    ]
    torch.manual_seed(config.seed)
    model_class = DeepFM if name == "DeepFM" else ONN
    return model_class(
        columns,
        columns,
        dnn_hidden_units=config.model.mlp_dims,
        dnn_dropout=config.model.dropout,
        l2_reg_embedding=config.l2,
        seed=config.seed,
        task="binary",
    )


def _run_deepctr(prepared: Prepared, name: str, config: TrainConfig) -> Entry:
    from deepctr_torch.callbacks import EarlyStopping

    model = _deepctr_model(name, prepared, config)
    model.compile(
        torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        "binary_crossentropy",
        metrics=["auc"],
    )
    stopper = EarlyStopping(
        monitor="val_auc", mode="max", patience=config.patience, restore_best_weights=True
    )
    train, val, test = (split.load() for split in (prepared.train, prepared.val, prepared.test))
    started = time.perf_counter()
    history = model.fit(
        _deepctr_inputs(train.indices),
        train.labels,
        batch_size=config.batch_size,
        epochs=config.epochs,
        verbose=0,
        validation_data=(_deepctr_inputs(val.indices), val.labels),
        callbacks=[stopper],
    )
    elapsed = time.perf_counter() - started
    epochs = len(history.history.get("val_auc", [])) or config.epochs
    scores = model.predict(_deepctr_inputs(test.indices), batch_size=16384).reshape(-1)
    parameters = sum(p.numel() for p in model.parameters())
    return _entry(
        f"DeepCTR-Torch {name}",
        "DeepCTR-Torch",
        test.labels,
        scores,
        elapsed,
        len(train) * epochs,
        parameters,
        note=f"{epochs} epochs",
    )


def train_speed(prepared: Prepared, config: TrainConfig) -> tuple[float, float]:
    """Samples/s of one training epoch: our DeepFM vs DeepCTR-Torch's, same settings.

    Both pay for L2 on the embedding tables with ``config.l2``: ours on the rows each batch
    touched, with sparse updates (how it trains), DeepCTR-Torch's as its ``l2_reg_embedding``
    loss term over the full tables with dense Adam (how it trains).
    """
    from training.distributed import Cluster
    from training.train import epoch_batches, train_epoch

    model = new_model(prepared, config)
    optimizer = SparseOptimizer(
        model, prepared.spec.field_dims, config.learning_rate, config.l2, config.optimizer
    )
    batches, rows = epoch_batches(prepared.train, config, 1, Cluster())
    started = time.perf_counter()
    train_epoch(model, optimizer, batches, rows, config, torch.device("cpu"), progress=False)
    ours = rows / (time.perf_counter() - started)
    with _deepctr_offline():
        theirs_model = _deepctr_model("DeepFM", prepared, config)
        theirs_model.compile(
            torch.optim.Adam(theirs_model.parameters(), lr=config.learning_rate),
            "binary_crossentropy",
        )
        train = prepared.train.load()
        inputs = _deepctr_inputs(train.indices)
        started = time.perf_counter()
        theirs_model.fit(inputs, train.labels, batch_size=config.batch_size, epochs=1, verbose=0)
        theirs = len(prepared.train) / (time.perf_counter() - started)
    return ours, theirs


def run_baselines(
    prepared_for: Preparer, configs: dict[str, TrainConfig], seed: int
) -> list[Entry]:
    """LightGBM on NFFM's encoded fields; DeepCTR-Torch's DeepFM and ONN with the settings of
    our deepfm and nffm."""
    entries = [run_lightgbm(prepared_for(configs["nffm"]), seed)]
    for name, ours in (("DeepFM", "deepfm"), ("ONN", "nffm")):
        config = configs[ours]
        entries.append(run_deepctr(prepared_for(config), name, config))
        logger.info("%s: test AUC %.4f", entries[-1].name, entries[-1].auc)
    return entries


def split_test_aucs(
    prepared_for: Preparer,
    configs: dict[str, TrainConfig],
    models: tuple[str, ...],
    baselines: bool,
    seed: int,
) -> dict[str, float]:
    """Every contender's test AUC on another seeded split, with the settings chosen on the
    first split (no search, no export): how much of a ranking is the split's luck."""
    reseeded = {name: config.model_copy(update={"seed": seed}) for name, config in configs.items()}
    aucs = {}
    for name in models:
        config = reseeded[name]
        prepared = prepared_for(config)
        model = new_model(prepared, config)
        fit(model, prepared, config, progress=False)
        test = prepared.test.load()
        aucs[name] = float(roc_auc_score(test.labels, predict(model, test.indices, "binary")))
    if baselines:
        aucs.update({e.name: e.auc for e in run_baselines(prepared_for, reseeded, seed)})
    logger.info("split %d: %s", seed, {k: round(v, 4) for k, v in aucs.items()})
    return aucs


def compare(
    source: DataSource,
    seed: int = 0,
    models: tuple[str, ...] = tuple(MODELS),
    baselines: bool = True,
    tune_models: Collection[str] = tuple(MODELS),
    grid: dict[str, tuple[Any, ...]] | None = None,
    export_dir: Path | None = None,
    repeats: int = 1,
    config_for: Callable[[str], TrainConfig] | None = None,
    bad_rows: BadRows = "error",
) -> tuple[list[Entry], dict[str, Any]]:
    """Train and score every contender on one split; returns entries and the set-up.

    Args:
        config_for: each model's starting TrainConfig (default: ``build_config`` for the
            file's size with ``seed``); the command line passes its ``--config`` and flags.
        tune_models: ladder models whose knobs (``grid``, default ``tuning.GRID``) are searched
            on the validation rows; the others take ``tuning.size_defaults``. DeepCTR-Torch's
            DeepFM and ONN take the settings of our deepfm and nffm, so each pair trains
            with the same hyper-parameters.
        export_dir: keep the exported ladder models here (default: a temporary folder).
        repeats: also retrain every contender on ``repeats - 1`` more seeded splits (seeds
            ``seed + 1`` ...) with the same settings; each entry's ``split_aucs`` holds them.
    """
    torch.set_num_threads(2)
    rows = source.estimated_rows()

    def prepared_for(config: TrainConfig) -> Prepared:
        return prepare(source, config, bad_rows=bad_rows)

    configs: dict[str, TrainConfig] = {}
    trials: dict[str, list[Trial]] = {}
    needed = [*models, *(n for n in ("deepfm", "nffm") if baselines and n not in models)]
    if config_for is None:

        def config_for(name: str) -> TrainConfig:
            return build_config(name, rows, flags={"seed": seed})

    for name in needed:
        start = config_for(name)
        if name in tune_models:
            configs[name], trials[name] = tune(prepared_for, start, grid)
        else:
            configs[name] = start
    entries = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = export_dir or Path(scratch)
        for name in models:
            config = configs[name]
            entries.append(run_ladder_model(prepared_for(config), config, workdir))
            logger.info("%s: test AUC %.4f", name, entries[-1].auc)
    if baselines:
        entries += run_baselines(prepared_for, configs, seed)
    if repeats > 1:
        others = [
            split_test_aucs(prepared_for, configs, models, baselines, seed + offset)
            for offset in range(1, repeats)
        ]
        entries = [
            replace(e, split_aucs=(e.auc, *(aucs[e.name] for aucs in others))) for e in entries
        ]
    prepared = prepared_for(configs[needed[0]])
    oracle = oracle_metrics(prepared.test)
    setup: dict[str, Any] = {
        "rows": prepared.rows,
        "train": len(prepared.train),
        "validation": len(prepared.val),
        "test": len(prepared.test),
        "fields": len(prepared.spec.fields),
        "seed": seed,
        "repeats": repeats,
        "batch_size": configs[needed[0]].batch_size,
        "test_rate": float(prepared.test.labels.read().mean()),
        "oracle_auc": None if oracle is None else oracle["auc"],
        "settings": {name: settings_of(config, GRID) for name, config in configs.items()},
        "trials": {name: [asdict(trial) for trial in runs] for name, runs in trials.items()},
    }
    return entries, setup


def _raw_row(source: DataSource) -> dict[str, object]:
    """The first row of the data as a client would send it."""
    batch = next(iter(source.batches(BadRowLog("skip"))))
    row: dict[str, object] = {
        name: batch.categorical[name][0].as_py() for name in source.categorical
    }
    for name in source.numeric:
        value = float(batch.numeric[name][0])
        row[name] = None if np.isnan(value) else value
    return row


def markdown(entries: list[Entry], oracle: float | None = None) -> str:
    splits = len(entries[0].split_aucs) if entries else 0
    header = [
        "model",
        "family",
        "test AUC [95% CI]",
        "log loss",
        "NE",
        "mean predicted / observed",
        "ECE",
        "train s",
        "samples/s",
        "parameters",
        "ONNX KB",
        "latency µs (1 row)",
        *([f"test AUC over {splits} splits: mean ± sd"] if splits > 1 else []),
        "note",
    ]
    rows = [header, ["---"] * len(header)]
    for e in sorted(entries, key=lambda e: -e.auc):
        spread = statistics.stdev(e.split_aucs) if splits > 1 else 0.0
        rows.append(
            [
                e.name,
                e.family,
                f"{e.auc:.4f} [{e.auc_low:.4f}, {e.auc_high:.4f}]",
                f"{e.logloss:.4f}",
                f"{e.ne:.4f}",
                f"{e.calibration:.3f}",
                f"{e.ece:.4f}",
                f"{e.train_s:.1f}",
                f"{e.samples_per_s:,.0f}",
                f"{e.parameters:,}",
                "" if e.onnx_kb is None else f"{e.onnx_kb:,.0f}",
                "" if e.latency_us is None else f"{e.latency_us:.0f}",
                *([f"{statistics.mean(e.split_aucs):.4f} ± {spread:.4f}"] if splits > 1 else []),
                e.note,
            ]
        )
    if oracle is not None:
        rows.append(["oracle (p_true)", "", f"{oracle:.4f}"] + [""] * (len(header) - 3))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        "Train s / samples/s: ctrserve counts its training epochs (validation excluded); "
        "DeepCTR-Torch's fit includes its per-epoch validation; LightGBM is the whole fit over "
        "the training rows. Parameters for LightGBM = trees x leaves. Latency = encoding "
        "plus onnxruntime for one raw row, in process (HTTP overhead: docs/BENCHMARKS.md).",
    ]
    if splits > 1:
        lines[-1] += (
            f" Over {splits} splits: every contender retrained with the same settings on "
            f"{splits} seeded splits (the first is the one in the other columns)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.compare``: the comparison on one data file, printed."""
    from training.cli import add_data_args, add_hyperparameter_args, run_guarded
    from training.config import flags_of, read_config_file
    from training.data import ColumnRoles, DataError, open_source
    from training.distributed import single_process_only

    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    add_data_args(parser)
    add_hyperparameter_args(parser)
    parser.add_argument("--models", type=lambda t: tuple(t.split(",")), default=tuple(MODELS))
    parser.add_argument(
        "--no-baselines", action="store_true", help="only the ladder (no LightGBM / DeepCTR-Torch)"
    )
    parser.add_argument(
        "--no-tune",
        action="store_true",
        help="take the settings as built (defaults, size, --config, flags) without a search",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="also retrain every contender on this many seeded splits in all (mean ± sd)",
    )
    parser.add_argument("--report", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)

    def run() -> int:
        single_process_only("compare")
        unknown = sorted(set(args.models) - set(MODELS))
        if unknown:
            raise DataError(f"unknown models {unknown}; choose from {sorted(MODELS)}")
        if args.repeats < 1:
            raise DataError(f"--repeats must be at least 1, got {args.repeats}")
        file_settings, flags = read_config_file(args.config), flags_of(args)
        roles = ColumnRoles(args.label, args.weight, args.categorical, args.numeric, args.ignore)
        source = open_source(args.data, args.format, roles, "binary")
        rows = source.estimated_rows()
        seed = 0 if args.seed is None else args.seed
        # knobs fixed by a flag or the file are held, as `tune` holds them
        held = {k for k in GRID if flags.get(k) is not None or k in file_settings}
        grid = {knob: values for knob, values in GRID.items() if knob not in held}
        entries, setup = compare(
            source,
            seed,
            args.models,
            baselines=not args.no_baselines,
            tune_models=() if args.no_tune or not grid else args.models,
            grid=grid,
            repeats=args.repeats,
            config_for=lambda name: build_config(
                name, rows, file_settings, {**flags, "seed": seed}
            ),
            bad_rows=args.bad_rows,
        )
        text = markdown(entries, setup["oracle_auc"])
        sys.stdout.write(text + "\n")
        if args.report is not None:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(f"Set-up: {json.dumps(setup)}\n\n{text}\n")
        return 0

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
