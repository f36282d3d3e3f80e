"""The GBDT baselines, LightGBM and XGBoost, tuned with the ladder's search and budget.

Each booster trains on the ladder's encoded fields, either as native categoricals or with
every index replaced by its training frequency (the encoding is a searched knob, as are
the data knobs the ladder searches: min-count and numeric bins). The search is the same
Optuna TPE study as ``ctrserve tune`` with the same number of trials; a trial's booster
stops early on the validation AUC (50 rounds without gain) instead of being pruned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from sklearn.metrics import roc_auc_score

from app.features.spec import NumericField
from training.dataset import Prepared
from training.train import TrainConfig
from training.tuning import MIN_COUNTS, NUM_BINS, Budget, Trial, open_study, search, trials_of

EARLY_STOPPING_ROUNDS = 50
MAX_ROUNDS = 20_000
ENCODINGS = ("categorical", "frequency")
THREADS = 2


@dataclass
class Fitted:
    """One booster and what it takes to score new rows."""

    predict: Callable[[np.ndarray], np.ndarray]  # encoded indices -> probabilities
    val_auc: float
    seconds: float
    trees: int
    leaves: int  # per tree, at most


def _frequency(prepared: Prepared, train: np.ndarray) -> list[np.ndarray]:
    return [
        np.bincount(train[:, j], minlength=dim) for j, dim in enumerate(prepared.spec.field_dims)
    ]


def _features(indices: np.ndarray, encoding: str, frequency: list[np.ndarray]) -> np.ndarray:
    if encoding == "categorical":
        return indices
    return np.stack([frequency[j][indices[:, j]] for j in range(indices.shape[1])], axis=1)


def fit_lightgbm(prepared: Prepared, params: dict[str, Any], seed: int) -> Fitted:
    import lightgbm as lgb

    train, val = prepared.train.load(), prepared.val.load()
    encoding = params["encoding"]
    frequency = _frequency(prepared, train.indices)
    started = time.perf_counter()
    data = lgb.Dataset(
        _features(train.indices, encoding, frequency),
        train.labels,
        categorical_feature=list(range(train.indices.shape[1]))
        if encoding == "categorical"
        else "auto",
        free_raw_data=False,
    )
    valid = lgb.Dataset(_features(val.indices, encoding, frequency), val.labels, reference=data)
    booster = lgb.train(
        {
            "objective": "binary",
            "metric": "auc",
            "num_leaves": params["num_leaves"],
            "learning_rate": params["learning_rate"],
            "min_data_in_leaf": params["min_data_in_leaf"],
            "feature_fraction": params["feature_fraction"],
            "bagging_fraction": params["bagging_fraction"],
            "bagging_freq": 1,
            "lambda_l2": params["lambda_l2"],
            "cat_smooth": params["cat_smooth"],
            "verbose": -1,
            "seed": seed,
            "num_threads": THREADS,
            "deterministic": True,
        },
        data,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    seconds = time.perf_counter() - started

    def predict(indices: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(_features(indices, encoding, frequency)))

    return Fitted(
        predict,
        float(roc_auc_score(val.labels, predict(val.indices))),
        seconds,
        booster.best_iteration,
        params["num_leaves"],
    )


def fit_xgboost(prepared: Prepared, params: dict[str, Any], seed: int) -> Fitted:
    import xgboost as xgb

    train, val = prepared.train.load(), prepared.val.load()
    encoding = params["encoding"]
    frequency = _frequency(prepared, train.indices)
    kinds = ["c" if encoding == "categorical" else "q"] * train.indices.shape[1]

    def matrix(indices: np.ndarray, labels: np.ndarray | None = None) -> xgb.DMatrix:
        return xgb.DMatrix(
            _features(indices, encoding, frequency).astype(np.float32),
            labels,
            feature_types=kinds,
            enable_categorical=encoding == "categorical",
            nthread=THREADS,
        )

    started = time.perf_counter()
    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "eval_metric": "auc",
            "tree_method": "hist",
            "max_depth": params["max_depth"],
            "learning_rate": params["learning_rate"],
            "min_child_weight": params["min_child_weight"],
            "subsample": params["subsample"],
            "colsample_bytree": params["colsample_bytree"],
            "reg_lambda": params["reg_lambda"],
            "max_cat_to_onehot": 1,  # partition-based splits on categoricals, as LightGBM
            "seed": seed,
            "nthread": THREADS,
        },
        matrix(train.indices, train.labels),
        num_boost_round=MAX_ROUNDS,
        evals=[(matrix(val.indices, val.labels), "validation")],
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
    )
    seconds = time.perf_counter() - started
    trees = booster.best_iteration + 1

    def predict(indices: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(matrix(indices), iteration_range=(0, trees)))

    return Fitted(
        predict,
        float(roc_auc_score(val.labels, predict(val.indices))),
        seconds,
        trees,
        2 ** params["max_depth"],
    )


def _data_knobs(trial: optuna.Trial, start: TrainConfig, has_numeric: bool) -> dict[str, Any]:
    knobs = {
        "min_count": trial.suggest_categorical(
            "min_count", [start.min_count, *(m for m in MIN_COUNTS if m != start.min_count)]
        )
    }
    if has_numeric and start.binning == "quantile":
        choices = sorted({start.num_bins, *NUM_BINS})
        knobs["num_bins"] = trial.suggest_categorical("num_bins", choices)
    return knobs


def _lightgbm_space(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "encoding": trial.suggest_categorical("encoding", ENCODINGS),
        "num_leaves": trial.suggest_int("num_leaves", 4, 256, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 2, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-8, 10.0, log=True),
        "cat_smooth": trial.suggest_float("cat_smooth", 1.0, 100.0, log=True),
    }


def _xgboost_space(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "encoding": trial.suggest_categorical("encoding", ENCODINGS),
        "max_depth": trial.suggest_int("max_depth", 2, 12),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.1, 50.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


Space = Callable[[optuna.Trial], dict[str, Any]]
# Each booster's fit, search space and first trial (the settings it was compared with
# before the search).
BOOSTERS: dict[str, tuple[Callable[..., Fitted], Space, dict[str, Any]]] = {
    "LightGBM": (
        fit_lightgbm,
        _lightgbm_space,
        {
            "encoding": "categorical",
            "num_leaves": 63,
            "learning_rate": 0.05,
            "min_data_in_leaf": 20,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.9,
            "lambda_l2": 1e-8,
            "cat_smooth": 10.0,
        },
    ),
    "XGBoost": (
        fit_xgboost,
        _xgboost_space,
        {
            "encoding": "categorical",
            "max_depth": 6,
            "learning_rate": 0.1,
            "min_child_weight": 1.0,
            "subsample": 0.9,
            "colsample_bytree": 0.9,
            "reg_lambda": 1.0,
        },
    ),
}


@dataclass(frozen=True)
class Tuned:
    """A booster's best settings on validation (its data knobs in ``config``)."""

    name: str
    config: TrainConfig
    params: dict[str, Any]
    trials: list[Trial]


def tune_booster(
    name: str,
    prepared_for: Callable[[TrainConfig], Prepared],
    start: TrainConfig,
    budget: Budget,
) -> Tuned:
    """``name``'s best settings on the validation rows within ``budget`` trials."""
    fit_booster, space, first = BOOSTERS[name]
    spec = prepared_for(start).spec
    has_numeric = any(isinstance(f, NumericField) for f in spec.fields)
    study = open_study(name, None, start.seed, "", budget.trials)

    def configured(params: dict[str, Any]) -> TrainConfig:
        data = {k: v for k, v in params.items() if k in ("min_count", "num_bins")}
        return start.model_copy(update=data)

    def objective(trial: optuna.Trial) -> float:
        data = _data_knobs(trial, start, has_numeric)
        booster = space(trial)
        return fit_booster(prepared_for(configured(data)), booster, start.seed).val_auc

    data_first = {"min_count": start.min_count}
    if has_numeric and start.binning == "quantile":
        data_first["num_bins"] = start.num_bins
    search(study, objective, budget, {**data_first, **first})
    best = study.best_trial.params
    params = {k: v for k, v in best.items() if k not in ("min_count", "num_bins")}
    return Tuned(name, configured(best), params, trials_of(study))
