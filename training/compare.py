"""Quality side by side on one seeded split: the ladder vs LightGBM vs DeepCTR-Torch.

Every contender sees the same rows and the same encoded fields (the spec fitted on the
training rows); every number on the test rows comes with a bootstrap 95% interval, because
the public slices here are small.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from app.scoring.scorer import Scorer
from training.data import Table
from training.evaluation import binary_metrics
from training.export import write_artifact
from training.models import DEFAULTS, MODELS, ModelName
from training.train import Prepared, TrainConfig, count_parameters, fit, new_model, predict, prepare

logger = logging.getLogger(__name__)

BOOTSTRAP_ROUNDS = 1000
MIN_COUNT_GRID = (1, 2, 5)


@dataclass(frozen=True)
class Entry:
    """One contender's result on the test rows."""

    name: str
    family: str
    auc: float
    auc_low: float
    auc_high: float
    logloss: float
    train_s: float
    samples_per_s: float
    parameters: int
    onnx_kb: float | None = None
    latency_us: float | None = None
    note: str = ""


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


def sized_config(name: ModelName, train_rows: int, seed: int, min_count: int = 1) -> TrainConfig:
    """Defaults that also suit small files: enough optimiser steps per epoch on 5k rows."""
    batch_size = int(min(4096, max(256, train_rows // 50)))
    return TrainConfig(model=DEFAULTS[name], batch_size=batch_size, seed=seed, min_count=min_count)


def choose_min_count(table: Table, seed: int) -> tuple[int, dict[int, float]]:
    """Pick the vocabulary min-count by NFFM's validation AUC (never the test rows)."""
    scores = {}
    for min_count in MIN_COUNT_GRID:
        config = sized_config("nffm", len(table.frame), seed, min_count)
        prepared = prepare(table, config)
        model = new_model(prepared, config)
        fit(model, prepared, config, progress=False)
        labels, probabilities = prepared.val.labels, predict(model, prepared.val.indices, "binary")
        scores[min_count] = float(roc_auc_score(labels, probabilities))
        logger.info("min_count %d: NFFM validation AUC %.4f", min_count, scores[min_count])
    return max(scores, key=lambda k: scores[k]), scores


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
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    return Entry(
        name=name,
        family=family,
        auc=float(roc_auc_score(labels, scores)),
        auc_low=low,
        auc_high=high,
        logloss=float(log_loss(labels, clipped, labels=[0, 1])),
        train_s=train_s,
        samples_per_s=samples / max(train_s, 1e-9),
        parameters=parameters,
        **extra,  # type: ignore[arg-type]
    )


def run_ladder_model(table: Table, prepared: Prepared, config: TrainConfig, workdir: Path) -> Entry:
    model = new_model(prepared, config)
    result = fit(model, prepared, config, progress=False)
    scores = predict(model, prepared.test.indices, "binary")
    out = workdir / config.model.name
    write_artifact(
        model,
        prepared.spec,
        config.model,
        "binary",
        out,
        binary_metrics(prepared.test.labels, scores),
        {},
    )
    scorer = Scorer.load(out)
    row = _raw_row(table)
    latency = _median_us(lambda: scorer.score_rows([row]), 2000)
    return _entry(
        config.model.name,
        "ctrserve",
        prepared.test.labels,
        scores,
        result.train_seconds,
        len(prepared.train) * len(result.history),
        count_parameters(model),
        onnx_kb=(out / "model.onnx").stat().st_size / 1024,
        latency_us=latency,
        note=f"best epoch {result.best_epoch}",
    )


def run_lightgbm(prepared: Prepared, seed: int) -> Entry:
    """LightGBM on the same fields, in its better setting on validation: native
    categoricals, or each index replaced by its training frequency."""
    import lightgbm as lgb

    frequency = [
        np.bincount(prepared.train.indices[:, j], minlength=dim)
        for j, dim in enumerate(prepared.spec.field_dims)
    ]

    def features(indices: np.ndarray, mode: str) -> np.ndarray:
        if mode == "categorical":
            return indices
        return np.stack([frequency[j][indices[:, j]] for j in range(indices.shape[1])], axis=1)

    best: tuple[float, str, object, float] | None = None
    for mode in ("categorical", "frequency"):
        started = time.perf_counter()
        train = lgb.Dataset(
            features(prepared.train.indices, mode),
            prepared.train.labels,
            categorical_feature="auto"
            if mode == "frequency"
            else list(range(prepared.train.indices.shape[1])),
            free_raw_data=False,
        )
        valid = lgb.Dataset(
            features(prepared.val.indices, mode), prepared.val.labels, reference=train
        )
        params = {
            "objective": "binary",
            "learning_rate": 0.05,
            "num_leaves": 31,
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
            num_boost_round=2000,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        elapsed = time.perf_counter() - started
        val_auc = roc_auc_score(
            prepared.val.labels, booster.predict(features(prepared.val.indices, mode))
        )
        logger.info(
            "LightGBM %s: validation AUC %.4f, %d trees", mode, val_auc, booster.best_iteration
        )
        if best is None or val_auc > best[0]:
            best = (val_auc, mode, booster, elapsed)
    assert best is not None
    _, mode, booster, elapsed = best
    scores = booster.predict(features(prepared.test.indices, mode))  # type: ignore[attr-defined]
    trees = booster.best_iteration  # type: ignore[attr-defined]
    leaves = trees * 31
    return _entry(
        "LightGBM",
        "LightGBM",
        prepared.test.labels,
        scores,
        elapsed,
        len(prepared.train),  # one fit over the rows: samples/s = rows / fit time
        leaves,
        note=f"{mode}, {trees} trees",
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
    return {f"f{j}": indices[:, j] for j in range(indices.shape[1])}


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
    started = time.perf_counter()
    history = model.fit(
        _deepctr_inputs(prepared.train.indices),
        prepared.train.labels,
        batch_size=config.batch_size,
        epochs=config.epochs,
        verbose=0,
        validation_data=(_deepctr_inputs(prepared.val.indices), prepared.val.labels),
        callbacks=[stopper],
    )
    elapsed = time.perf_counter() - started
    epochs = len(history.history.get("val_auc", [])) or config.epochs
    scores = model.predict(_deepctr_inputs(prepared.test.indices), batch_size=16384).reshape(-1)
    parameters = sum(p.numel() for p in model.parameters())
    return _entry(
        f"DeepCTR-Torch {name}",
        "DeepCTR-Torch",
        prepared.test.labels,
        scores,
        elapsed,
        len(prepared.train) * epochs,
        parameters,
        note=f"{epochs} epochs",
    )


def train_speed(prepared: Prepared, config: TrainConfig) -> tuple[float, float]:
    """Samples/s of one training epoch: our DeepFM vs DeepCTR-Torch's, same settings."""
    from training.train import train_epoch

    model = new_model(prepared, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    started = time.perf_counter()
    train_epoch(
        model, optimizer, prepared.train, config, torch.Generator().manual_seed(0), progress=False
    )
    ours = len(prepared.train) / (time.perf_counter() - started)
    with _deepctr_offline():
        theirs_model = _deepctr_model("DeepFM", prepared, config)
        theirs_model.compile(
            torch.optim.Adam(theirs_model.parameters(), lr=config.learning_rate),
            "binary_crossentropy",
        )
        inputs = _deepctr_inputs(prepared.train.indices)
        started = time.perf_counter()
        theirs_model.fit(
            inputs, prepared.train.labels, batch_size=config.batch_size, epochs=1, verbose=0
        )
        theirs = len(prepared.train) / (time.perf_counter() - started)
    return ours, theirs


def compare(
    table: Table,
    seed: int = 0,
    models: tuple[str, ...] = tuple(MODELS),
    baselines: bool = True,
    tune_min_count: bool = True,
    export_dir: Path | None = None,
) -> tuple[list[Entry], dict[str, object]]:
    """Train and score every contender on one split; returns entries and the set-up.

    Args:
        export_dir: keep the exported ladder models here (default: a temporary folder).
    """
    torch.set_num_threads(2)
    if tune_min_count:
        min_count, grid = choose_min_count(table, seed)
    else:
        min_count, grid = 1, {}
    base = sized_config("nffm", len(table.frame), seed, min_count)
    prepared = prepare(table, base)
    entries = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = export_dir or Path(scratch)
        for name in models:
            config = replace_model(base, name)
            entries.append(run_ladder_model(table, prepared, config, workdir))
            logger.info("%s: test AUC %.4f", name, entries[-1].auc)
    if baselines:
        entries.append(run_lightgbm(prepared, seed))
        for name, ours in (("DeepFM", "deepfm"), ("ONN", "nffm")):
            entries.append(run_deepctr(prepared, name, replace_model(base, ours)))
            logger.info("%s: test AUC %.4f", entries[-1].name, entries[-1].auc)
    setup: dict[str, object] = {
        "rows": len(table.frame),
        "train": len(prepared.train),
        "validation": len(prepared.val),
        "test": len(prepared.test),
        "fields": len(prepared.spec.fields),
        "seed": seed,
        "min_count": min_count,
        "min_count_grid": grid,
        "batch_size": base.batch_size,
        "test_rate": float(prepared.test.labels.mean()),
    }
    return entries, setup


def replace_model(config: TrainConfig, name: str) -> TrainConfig:
    return config.model_copy(update={"model": DEFAULTS[name]})  # type: ignore[index]


def _raw_row(table: Table) -> dict[str, object]:
    row = table.frame.iloc[0]
    return {name: (None if _missing(row[name]) else row[name]) for name in table.feature_names}


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _median_us(call: object, repeats: int) -> float:
    assert callable(call)
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def markdown(entries: list[Entry], oracle: float | None = None) -> str:
    lines = [
        "| model | family | test AUC [95% CI] | log loss | train s | samples/s | parameters "
        "| ONNX KB | latency µs (1 row) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in sorted(entries, key=lambda e: -e.auc):
        lines.append(
            f"| {e.name} | {e.family} | {e.auc:.4f} [{e.auc_low:.4f}, {e.auc_high:.4f}] | "
            f"{e.logloss:.4f} | {e.train_s:.1f} | {e.samples_per_s:,.0f} | {e.parameters:,} | "
            f"{'' if e.onnx_kb is None else f'{e.onnx_kb:,.0f}'} | "
            f"{'' if e.latency_us is None else f'{e.latency_us:.0f}'} | {e.note} |"
        )
    if oracle is not None:
        lines.append(f"| oracle (p_true) | | {oracle:.4f} | | | | | | | |")
    lines += [
        "",
        "Train s / samples/s: ctrserve counts its training epochs (validation excluded); "
        "DeepCTR-Torch's fit includes its per-epoch validation; LightGBM is the whole fit over "
        "the training rows. Parameters for LightGBM = trees x 31 leaves. Latency = encoding "
        "plus onnxruntime for one raw row, in process (HTTP overhead: docs/BENCHMARKS.md).",
    ]
    return "\n".join(lines)
