"""The one way a TrainConfig is built, for train, tune, ladder and compare alike.

Precedence, lowest first: the model's published defaults (``models.DEFAULTS`` and
``models.TRAINING_DEFAULTS``), then the
defaults for the file's size (``defaults.size_defaults``, when the row count is known), then a
YAML file of TrainConfig fields (``--config``), then flags given on the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from app.core.yaml_file import load_yaml
from training.data import DataError
from training.defaults import size_defaults
from training.models import DEFAULTS, TRAINING_DEFAULTS, ModelConfig
from training.train import TrainConfig

MODEL_FLAGS = ("embed_dim", "mlp_dims", "dropout", "batch_norm")
TRAIN_FLAGS = (
    "task",
    "epochs",
    "batch_size",
    "learning_rate",
    "l2",
    "patience",
    "seed",
    "min_count",
    "max_vocab",
    "exact_values",
    "binning",
    "num_bins",
    "negative_sampling",
    "calibrate",
    "count_decay",
    "table_dtype",
    "dense_dtype",
    "checkpoint",
    "optimizer",
    "time_column",
    "val_from",
    "test_from",
)


def build_config(
    model: str,
    rows: int | None = None,
    file_settings: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """``model``'s TrainConfig: defaults -> size defaults -> file settings -> flags.

    Args:
        rows: rows in the data file; ``None`` skips the size defaults (before reading it).
        file_settings: TrainConfig fields, with ``model`` a mapping of model fields.
        flags: flat settings (``embed_dim`` etc. go to the model), ``None`` values ignored.
    """
    if model not in DEFAULTS:
        raise DataError(f"unknown model {model!r}; choose from {sorted(DEFAULTS)}")
    model_fields: dict[str, Any] = DEFAULTS[model].model_dump()  # type: ignore[index]
    settings: dict[str, Any] = dict(TRAINING_DEFAULTS.get(model, {}))  # type: ignore[call-overload]
    if rows is not None:
        sized = size_defaults(model, rows)  # type: ignore[arg-type]
        if "embed_dim" in sized:
            model_fields["embed_dim"] = sized.pop("embed_dim")
        settings.update(sized)
    chosen = dict(file_settings or {})
    model_overrides = chosen.pop("model", None) or {}
    if not isinstance(model_overrides, Mapping):
        raise DataError("config: 'model' must be a mapping of model hyper-parameters")
    named = model_overrides.get("name", model)
    if named != model:  # the model is --model's (default nffm): a file naming another is a mistake
        raise DataError(
            f"config: model.name is {named!r} but --model is {model!r}; pass --model {named}"
        )
    settings.update(chosen)
    model_fields.update(model_overrides)
    for key, value in (flags or {}).items():
        if value is not None:
            (model_fields if key in MODEL_FLAGS else settings)[key] = value
    model_fields["name"] = model
    config = TrainConfig.model_validate(
        {**settings, "model": ModelConfig.model_validate(model_fields)}
    )
    if config.binning == "log" and (flags or {}).get("num_bins") is not None:
        raise DataError("--num-bins sets quantile bins; --binning log has fixed edges ±(2**k - 1)")
    return config


def read_config_file(path: Path | None) -> dict[str, Any]:
    """TrainConfig fields from a YAML file (empty without one)."""
    if path is None:
        return {}
    try:
        loaded = load_yaml(path) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read config ({exc})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: expected a mapping of TrainConfig fields")
    return loaded


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The hyper-parameter flags a command line gave (absent ones are ``None``)."""
    return {name: getattr(args, name, None) for name in (*MODEL_FLAGS, *TRAIN_FLAGS)}


def config_from_args(args: argparse.Namespace, model: str, rows: int | None = None) -> TrainConfig:
    return build_config(model, rows, read_config_file(args.config), flags_of(args))
