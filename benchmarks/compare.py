"""Quality side by side on one seeded split: the ladder vs LightGBM vs DeepCTR-Torch.

Every contender sees the same rows and the same encoded fields (the spec fitted on the
training rows); every number on the test rows comes with a bootstrap 95% interval, because
the public slices here are small.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

from app.model.scorer import Scorer
from app.repository.store import resolve_model_dir
from benchmarks.gbdt import BOOSTERS, MAX_ROUNDS, tune_booster
from benchmarks.timing import median_seconds
from training.batch_predict import score_indices
from training.commands import train_one
from training.config import build_config
from training.data import BadRowLog, BadRows, DataSource
from training.dataset import Prepared, prepare
from training.evaluation import binary_metrics, oracle_metrics
from training.models import MODELS
from training.optim import SparseOptimizer
from training.train import TrainConfig, new_model
from training.tuning import KNOBS, Budget, Trial, shown, tune

logger = logging.getLogger(__name__)

BOOTSTRAP_ROUNDS = 1000


@dataclass(frozen=True)
class Entry:
    """One contender's result on the test rows."""

    name: str
    family: str
    auc: float
    auc_low: float
    auc_high: float
    auc_se: float  # bootstrap standard error
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


def _resamples(labels: np.ndarray, rounds: int, seed: int) -> Iterator[np.ndarray]:
    """Seeded bootstrap resamples of the test rows (those holding both classes)."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        sample = rng.integers(0, len(labels), len(labels))
        if labels[sample].min() != labels[sample].max():
            yield sample


def bootstrap_auc(
    labels: np.ndarray, scores: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> tuple[float, float, float]:
    """95% percentile interval and standard error of the AUC over resampled test rows."""
    values = [roc_auc_score(labels[s], scores[s]) for s in _resamples(labels, rounds, seed)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high), float(np.std(values, ddof=1))


def auc_difference(
    labels: np.ndarray, first: np.ndarray, second: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS
) -> tuple[float, float]:
    """AUC(first) - AUC(second) on the same test rows, and its paired bootstrap standard
    error (both scored on each resample, so the rows' shared luck cancels)."""
    gaps = [
        roc_auc_score(labels[s], first[s]) - roc_auc_score(labels[s], second[s])
        for s in _resamples(labels, rounds, 0)
    ]
    gap = roc_auc_score(labels, first) - roc_auc_score(labels, second)
    return float(gap), float(np.std(gaps, ddof=1))


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
    low, high, se = bootstrap_auc(labels, scores)
    metrics = binary_metrics(labels, scores)
    return Entry(
        name=name,
        family=family,
        auc=metrics["auc"],
        auc_low=low,
        auc_high=high,
        auc_se=se,
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
TUNED = " tuned"  # a tuned ladder model's entry is named "<model> tuned"


@dataclass(frozen=True)
class Contender:
    """One row of the comparison: what trains and with which settings. ``config`` holds the
    data settings (and the model's, for the ladder and DeepCTR-Torch); ``booster`` a GBDT's."""

    name: str
    family: str
    config: TrainConfig
    booster: dict[str, Any] | None = None
    note: str = ""


def run_ladder_model(
    prepared: Prepared, config: TrainConfig, workdir: Path, name: str, note: str
) -> tuple[Entry, np.ndarray]:
    """Train and export one ladder model as ``ctrserve train`` does (calibration included),
    and score the test rows through the exported graph: the scores a user is served. Its
    one-row latency is the Scorer's, in process."""
    out = workdir / name.replace(" ", "-")
    summary = train_one(prepared, config, out, progress=False)
    scorer = Scorer.load(resolve_model_dir(out))
    test = prepared.test.load()
    scores = score_indices(scorer, test.indices.astype(np.int64))  # shards keep narrow ints
    row = _raw_row(prepared.source)
    latency = median_seconds(lambda: scorer.score_rows([row]), 2000) * 1e6
    train_s = float(summary["train_seconds"])  # type: ignore[arg-type]
    entry = _entry(
        name,
        "ctrserve",
        test.labels,
        scores,
        train_s,
        len(prepared.train) * int(summary["epochs_run"]),  # type: ignore[call-overload]
        int(summary["parameters"]),  # type: ignore[call-overload]
        onnx_kb=scorer.file_bytes / 1024,  # the graph and its weights file
        latency_us=latency,
        note=f"{note}{settings_note(config)}, best epoch {summary['best_epoch']}",
    )
    return entry, scores


def settings_note(config: TrainConfig) -> str:
    """The settings a reader compares across rows, in a few words."""
    model = config.model
    parts = [] if model.name == "lr" else [f"k={model.embed_dim}"]
    if model.mlp_dims:
        parts.append("mlp " + "-".join(map(str, model.mlp_dims)) + f", dropout {model.dropout:.2g}")
    min_count = "auto" if config.min_count is None else config.min_count
    parts += [
        f"{config.optimizer} lr {config.learning_rate:.2g}",
        f"L2 {config.l2:.2g}",
        f"batch {config.batch_size}",
        f"min-count {min_count}",
    ]
    return ", ".join(parts)


def run_booster(prepared: Prepared, contender: Contender, seed: int) -> tuple[Entry, np.ndarray]:
    assert contender.booster is not None
    fitted = BOOSTERS[contender.family][0](prepared, contender.booster, seed)
    test = prepared.test.load()
    scores = fitted.predict(test.indices)
    capped = " (round cap)" if fitted.trees >= MAX_ROUNDS else ""
    entry = _entry(
        contender.name,
        contender.family,
        test.labels,
        scores,
        fitted.seconds,
        len(prepared.train),  # one fit over the rows: samples/s = rows / fit time
        fitted.trees * fitted.leaves,
        note=f"{contender.note}{fitted.trees} trees{capped}",
    )
    return entry, scores


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


def run_deepctr(prepared: Prepared, name: str, config: TrainConfig) -> tuple[Entry, np.ndarray]:
    """DeepCTR-Torch's DeepFM or ONN on the same encoded fields and hyper-parameters."""
    with _deepctr_offline():
        return _run_deepctr(prepared, name, config)


def _deepctr_inputs(indices: np.ndarray) -> dict[str, np.ndarray]:
    return {f"f{j}": indices[:, j].astype(np.int64) for j in range(indices.shape[1])}


def _deepctr_model(name: str, prepared: Prepared, config: TrainConfig) -> Any:
    """DeepCTR-Torch's DeepFM or ONN over our encoded fields, with our hyper-parameters (its
    untyped Keras-like model: ``compile``, ``fit``, ``predict``)."""
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


def _run_deepctr(prepared: Prepared, name: str, config: TrainConfig) -> tuple[Entry, np.ndarray]:
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
    entry = _entry(
        f"DeepCTR-Torch {name}",
        "DeepCTR-Torch",
        test.labels,
        scores,
        elapsed,
        len(train) * epochs,
        parameters,
        note=f"{epochs} epochs",
    )
    return entry, scores


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


def contenders(
    prepared_for: Preparer,
    models: tuple[str, ...],
    tune_models: Collection[str],
    config_for: Callable[[str], TrainConfig],
    budget: Budget,
    baselines: bool,
    held: Collection[str] = (),
) -> tuple[list[Contender], dict[str, list[Trial]]]:
    """Every row of the comparison and the trials behind the tuned ones: each ladder model
    with its defaults, and tuned where asked; LightGBM and XGBoost tuned with the same
    budget; DeepCTR-Torch's DeepFM and ONN with the settings of our deepfm and nffm (tuned
    where they were)."""
    rows: list[Contender] = []
    trials: dict[str, list[Trial]] = {}
    chosen: dict[str, TrainConfig] = {}
    needed = [*models, *(n for n in ("deepfm", "nffm") if baselines and n not in models)]
    for name in needed:
        start = chosen[name] = config_for(name)
        if name in models:
            rows.append(Contender(name, "ctrserve", start, note="defaults: "))
        if name in tune_models:
            best, trials[name] = tune(prepared_for, start, budget, held)
            chosen[name] = best
            if name in models:
                rows.append(Contender(name + TUNED, "ctrserve", best, note="tuned: "))
    if baselines:
        for booster in BOOSTERS:
            tuned = tune_booster(booster, prepared_for, config_for("nffm"), budget)
            trials[booster] = tuned.trials
            note = ", ".join(f"{k} {shown(v)}" for k, v in tuned.params.items())
            data = "auto" if tuned.config.min_count is None else tuned.config.min_count
            rows.append(
                Contender(
                    f"{booster} tuned",
                    booster,
                    tuned.config,
                    tuned.params,
                    f"{note}, min-count {data}, ",
                )
            )
        for theirs, ours in (("DeepFM", "deepfm"), ("ONN", "nffm")):
            rows.append(Contender(f"DeepCTR-Torch {theirs}", "DeepCTR-Torch", chosen[ours]))
    return rows, trials


def run_contender(
    contender: Contender, prepared_for: Preparer, workdir: Path, seed: int
) -> tuple[Entry, np.ndarray]:
    """Train ``contender`` on the split of ``seed``; its entry and test scores."""
    config = contender.config.model_copy(update={"seed": seed})
    prepared = prepared_for(config)
    if contender.family == "ctrserve":
        return run_ladder_model(prepared, config, workdir, contender.name, contender.note)
    if contender.family == "DeepCTR-Torch":
        return run_deepctr(prepared, contender.name.removeprefix("DeepCTR-Torch "), config)
    return run_booster(prepared, contender, seed)


def compare(
    source: DataSource,
    seed: int = 0,
    models: tuple[str, ...] = tuple(MODELS),
    baselines: bool = True,
    tune_models: Collection[str] = tuple(MODELS),
    budget: Budget | None = None,
    export_dir: Path | None = None,
    repeats: int = 1,
    config_for: Callable[[str], TrainConfig] | None = None,
    bad_rows: BadRows = "error",
    held: Collection[str] = (),
) -> tuple[list[Entry], dict[str, Any]]:
    """Train and score every contender on one split; returns entries and the set-up.

    Args:
        config_for: each model's starting TrainConfig (default: ``build_config`` for the
            file's size with ``seed``); the command line passes its ``--config`` and flags.
        tune_models: ladder models searched on the validation rows (``training.tuning``),
            each listed twice: with its defaults and tuned. LightGBM and XGBoost are always
            searched, with the same ``budget`` (default ``Budget()``).
        held: knobs the ladder's search keeps at the starting values (given by the user).
        export_dir: keep the exported ladder models here (default: a temporary folder).
        repeats: also retrain every contender on ``repeats - 1`` more seeded splits (seeds
            ``seed + 1`` ...) with the same settings; each entry's ``split_aucs`` holds them.
    """
    torch.set_num_threads(2)
    rows = source.estimated_rows()
    budget = budget or Budget()

    def prepared_for(config: TrainConfig) -> Prepared:
        return prepare(source, config, bad_rows=bad_rows)

    if config_for is None:

        def config_for(name: str) -> TrainConfig:
            return build_config(name, rows, flags={"seed": seed})

    rivals, trials = contenders(
        prepared_for, models, tune_models, config_for, budget, baselines, held
    )
    entries, scores = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = export_dir or Path(scratch)
        for rival in rivals:
            entry, scores[rival.name] = run_contender(rival, prepared_for, workdir, seed)
            entries.append(entry)
            logger.info("%s: test AUC %.4f", rival.name, entry.auc)
        for offset in range(1, repeats):
            again = {
                r.name: run_contender(r, prepared_for, Path(scratch) / "again", seed + offset)[0]
                for r in rivals
            }
            entries = [replace(e, split_aucs=(*e.split_aucs, again[e.name].auc)) for e in entries]
            aucs = {k: round(v.auc, 4) for k, v in again.items()}
            logger.info("split %d: %s", seed + offset, aucs)
    if repeats > 1:
        entries = [replace(e, split_aucs=(e.auc, *e.split_aucs)) for e in entries]
    prepared = prepared_for(rivals[0].config)
    labels = prepared.test.labels.read()
    oracle = oracle_metrics(prepared.test)
    setup: dict[str, Any] = {
        "rows": prepared.rows,
        "train": len(prepared.train),
        "validation": len(prepared.val),
        "test": len(prepared.test),
        "fields": len(prepared.spec.fields),
        "seed": seed,
        "repeats": repeats,
        "budget": asdict(budget),
        "batch_size": rivals[0].config.batch_size,
        "test_rate": float(labels.mean()),
        "oracle_auc": None if oracle is None else oracle["auc"],
        "settings": {r.name: r.config.model_dump(mode="json") for r in rivals},
        "boosters": {r.name: r.booster for r in rivals if r.booster is not None},
        "trials": {name: [asdict(trial) for trial in runs] for name, runs in trials.items()},
        "differences": differences(labels, scores),
    }
    return entries, setup


def differences(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Tuned NFFM (or NFFM) minus each GBDT's test AUC, with the paired standard error."""
    ours = next((n for n in ("nffm" + TUNED, "nffm") if n in scores), None)
    if ours is None:
        return {}
    return {
        f"{ours} - {name}": list(auc_difference(labels, scores[ours], scores[name]))
        for name in scores
        if name.removesuffix(TUNED) in BOOSTERS
    }


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
        "test AUC ± SE",
        *(["lift vs oracle"] if oracle is not None else []),
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
                f"{e.auc:.4f} ± {e.auc_se:.4f}",
                *([f"{(e.auc - 0.5) / (oracle - 0.5):.1%}"] if oracle is not None else []),
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
        rows.append(["oracle (p_true)", "", f"{oracle:.4f}", "100%"] + [""] * (len(header) - 4))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        "SE: bootstrap standard error over the test rows. Train s / samples/s: ctrserve "
        "counts its training epochs (validation excluded); DeepCTR-Torch's fit includes its "
        "per-epoch validation; a GBDT's is its whole fit over the training rows. Parameters "
        "of a GBDT = trees x leaves (at most). Latency = encoding plus onnxruntime for one "
        "raw row, in process (HTTP overhead: docs/BENCHMARKS.md).",
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
        "--no-baselines",
        action="store_true",
        help="only the ladder (no LightGBM, XGBoost or DeepCTR-Torch)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=Budget().trials,
        help="the search budget of every tuned contender (ladder models and GBDTs alike)",
    )
    parser.add_argument(
        "--no-tune",
        action="store_true",
        help="the ladder takes its settings as built (defaults, size, --config, flags) "
        "without a search (the GBDTs are still searched)",
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
        if args.trials < 1:
            raise DataError(f"--trials must be at least 1, got {args.trials}")
        file_settings, flags = read_config_file(args.config), flags_of(args)
        roles = ColumnRoles(args.label, args.weight, args.categorical, args.numeric, args.ignore)
        source = open_source(args.data, args.format, roles, "binary")
        rows = source.estimated_rows()
        seed = 0 if args.seed is None else args.seed
        # knobs fixed by a flag or the file are held, as `tune` holds them
        given = {**file_settings, **(file_settings.get("model") or {})}
        held = {k for k in KNOBS if flags.get(k) is not None or k in given}
        entries, setup = compare(
            source,
            seed,
            args.models,
            baselines=not args.no_baselines,
            tune_models=() if args.no_tune or held == set(KNOBS) else args.models,
            budget=Budget(args.trials),
            held=held,
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
