"""``ctrserve tune``: a hyper-parameter search on the validation rows, with Optuna.

TPE proposes a configuration, the fit reports its validation score after every epoch, and
the median pruner stops a trial that trails the median of earlier trials at the same epoch.
The first trial is the starting configuration (the defaults, the config file and the flags),
so the search never returns anything worse on validation than what it started from. A
study lives in a journal file: a search that was stopped goes on from its last trial. The
test rows are never looked at. ``open_study`` and ``search`` also drive the GBDT baselines'
searches (benchmarks/compare.py), so every contender gets the same kind of budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from app.features.spec import NumericField
from training.dataset import Prepared
from training.train import TrainConfig, fit, new_model

logger = logging.getLogger(__name__)

# The space searched, by parameter: (low, high, log scale) ranges and grids. A starting
# value outside one is added to it, so that trial 0 is the start.
L2_FLOOR = 1e-7
RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (1e-3, 1e-1, True),
    "l2": (L2_FLOOR, 1e-2, True),
    "dropout": (0.0, 0.5, False),
}
MIN_COUNTS: tuple[int | None, ...] = (None, 1, 2, 3, 5, 10)  # None: each field's own cut-off
NUM_BINS = (8, 16, 32, 64)
GRIDS: dict[str, tuple[Any, ...]] = {
    "optimizer": ("adam", "adagrad"),
    "batch_size": (256, 512, 1024, 2048),
    "min_count": MIN_COUNTS,
    "num_bins": NUM_BINS,
    "embed_dim": (4, 8, 16, 32),
    "mlp_width": (64, 128, 256, 400),
    "mlp_depth": (1, 2, 3),
}
# Knobs by the names a user holds them with (flags, config fields).
KNOBS = (
    "learning_rate",
    "l2",
    "optimizer",
    "batch_size",
    "min_count",
    "num_bins",
    "embed_dim",
    "mlp_dims",
    "dropout",
)
# The median pruner judges a trial from its second epoch, once 5 trials have finished.
PRUNE_AFTER_TRIALS = 5
PRUNE_AFTER_EPOCHS = 1
STARTUP_TRIALS = 10  # random trials before TPE models the rest (Optuna's default)


@dataclass(frozen=True)
class Budget:
    """How much one search may spend: trials in the study (a resumed study counts the ones
    it has), and seconds for this run."""

    trials: int = 30
    seconds: float | None = None


@dataclass(frozen=True)
class Trial:
    """One configuration tried: its settings, its best validation score (AUC, or minus the
    weighted RMSE for regression; the last one reported for a pruned trial), the epochs it
    ran and its seconds."""

    number: int
    state: str  # "complete" or "pruned"
    settings: dict[str, Any]
    val_score: float
    epochs: int
    seconds: float


def open_study(
    name: str, journal: Path | None, seed: int, fingerprint: str, trials: int
) -> optuna.Study:
    """A maximising TPE study with a median pruner; kept in ``journal`` when given, where a
    study of that name is resumed. ``fingerprint`` names the data: resuming a study on
    other data is refused. TPE models the trials after its first ``min(10, trials // 2)``
    (Optuna's 10 random ones, fewer on a small budget, so that a 10-trial search is not all
    random)."""
    from training.data import DataError

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log line says each trial
    storage = None
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(1, min(STARTUP_TRIALS, trials // 2))
        ),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_AFTER_EPOCHS
        ),
    )
    known = study.user_attrs.get("data")
    if known is None:
        study.set_user_attr("data", fingerprint)
    elif known != fingerprint:
        raise DataError(
            f"{journal}: study {name!r} was run on {known}, not {fingerprint}; "
            "give another --out to start a new search"
        )
    return study


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: Budget,
    first: dict[str, Any] | None = None,
) -> None:
    """Run trials until the study holds ``budget.trials`` finished ones or this run has
    spent ``budget.seconds``; ``first`` (the starting settings) is tried first in a new
    study."""
    done = finished(study)
    if first is not None and not study.trials:
        study.enqueue_trial(first)
    remaining = budget.trials - len(done)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=budget.seconds)


def trials_of(study: optuna.Study) -> list[Trial]:
    trials = []
    for t in finished(study):
        reported = list(t.intermediate_values.values())
        score = t.value if t.value is not None else max(reported, default=math.nan)
        seconds = t.duration.total_seconds() if t.duration is not None else math.nan
        trials.append(
            Trial(t.number, t.state.name.lower(), dict(t.params), score, len(reported), seconds)
        )
    return trials


def _choices(values: Sequence[Any], start: Any) -> list[Any]:
    """The grid, with the starting value put in its sorted place when it is not in it."""
    if start in values:
        return list(values)
    return ([None] if None in values else []) + sorted(
        {v for v in (*values, start) if v is not None}
    )


def start_params(start: TrainConfig, held: Collection[str], has_numeric: bool) -> dict[str, Any]:
    """The starting configuration as the study's parameters (its first trial)."""
    params: dict[str, Any] = {
        "learning_rate": start.learning_rate,
        "l2": max(start.l2, L2_FLOOR),  # a log scale has no 0: the range's floor stands in
        "optimizer": start.optimizer,
        "batch_size": start.batch_size,
        "min_count": start.min_count,
    }
    if has_numeric and start.binning == "quantile":
        params["num_bins"] = start.num_bins
    if start.model.name != "lr":
        params["embed_dim"] = start.model.embed_dim
    if start.model.mlp_dims:
        params["mlp_width"] = start.model.mlp_dims[0]
        params["mlp_depth"] = len(start.model.mlp_dims)
        params["dropout"] = start.model.dropout
    if "mlp_dims" in held:
        params.pop("mlp_width", None), params.pop("mlp_depth", None)
    return {k: v for k, v in params.items() if k not in held}


def suggest(trial: optuna.Trial, start: dict[str, Any]) -> dict[str, Any]:
    """A configuration's parameters drawn from the space around ``start``'s knobs: each
    range widened to hold its starting value, each grid holding it."""
    params = {}
    for name, value in start.items():
        if name in RANGES:
            low, high, log = RANGES[name]
            params[name] = trial.suggest_float(name, min(low, value), max(high, value), log=log)
        else:
            params[name] = trial.suggest_categorical(name, _choices(GRIDS[name], value))
    return params


def configured(start: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """``start`` with a trial's parameters applied."""
    model_update: dict[str, Any] = {}
    if "embed_dim" in params:
        model_update["embed_dim"] = params["embed_dim"]
    if "mlp_width" in params:
        model_update["mlp_dims"] = (params["mlp_width"],) * params["mlp_depth"]
    if "dropout" in params:
        model_update["dropout"] = params["dropout"]
    training = {k: v for k, v in params.items() if k in TrainConfig.model_fields}
    model = start.model.model_copy(update=model_update)
    return TrainConfig.model_validate({**start.model_dump(), **training, "model": model})


def tune(
    prepared_for: Callable[[TrainConfig], Prepared],
    start: TrainConfig,
    budget: Budget,
    held: Collection[str] = (),
    journal: Path | None = None,
    fingerprint: str = "",
) -> tuple[TrainConfig, list[Trial]]:
    """The best configuration on the validation rows, and every trial in the study.

    Args:
        prepared_for: the shards for a configuration (:func:`training.dataset.prepare`:
            trials that differ only in the model share one cached preparation).
        held: knobs (``KNOBS``) kept at ``start``'s values.
        journal: the study's file, to resume a stopped search (default: in memory).
    """
    unknown = set(held) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knobs {sorted(unknown)}; choose from {KNOBS}")
    spec = prepared_for(start).spec
    has_numeric = any(isinstance(f, NumericField) for f in spec.fields)
    first = start_params(start, held, has_numeric)
    study = open_study(start.model.name, journal, start.seed, fingerprint, budget.trials)

    def objective(trial: optuna.Trial) -> float:
        config = configured(start, suggest(trial, first))
        prepared = prepared_for(config)

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = fit(new_model(prepared, config), prepared, config, False, on_epoch=report)
        name = start.model.name
        logger.info("%s trial %d: validation %.4f", name, trial.number, result.best_score)
        return result.best_score

    search(study, objective, budget, first)
    return configured(start, study.best_trial.params), trials_of(study)


def trials_markdown(studies: dict[str, list[Trial]]) -> str:
    """Every trial of every study, best first within a model, as a Markdown table (a GBDT's
    trials report no epochs)."""
    lines = [
        "| model | trial | state | epochs | validation | seconds | settings |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, trials in studies.items():
        best = max((t.val_score for t in trials if t.state == "complete"), default=math.nan)
        for t in sorted(trials, key=lambda t: -t.val_score):
            mark = " **best**" if t.state == "complete" and t.val_score == best else ""
            settings = ", ".join(f"{k} {shown(v)}" for k, v in t.settings.items())
            lines.append(
                f"| {model} | {t.number} | {t.state} | {t.epochs or ''} | "
                f"{t.val_score:.4f}{mark} | {t.seconds:.1f} | {settings} |"
            )
    return "\n".join(lines) + "\n"


def shown(value: Any) -> str:
    """A setting as the trial tables print it (``None``: min-count's per-field ``auto``)."""
    if value is None:
        return "auto"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
