"""Training as plain functions: split, encode, ``train_epoch``, ``evaluate``, ``fit``.

No trainer class: each step is a function a test or notebook can call on its own.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm import tqdm

from app.features.encoder import FeatureEncoder
from app.features.spec import FeatureSpec
from training.data import Table, Task
from training.evaluation import Metrics, binary_metrics, headline, regression_metrics
from training.fit_spec import Binning, fit_spec
from training.layers import FeaturesEmbedding, FeaturesLinear, FieldAwareEmbedding, fill_unseen_rows
from training.models import ModelConfig, build_model

logger = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Everything that decides a training run; stored in spec.json for reproducibility."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig
    task: Task = "binary"
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=4096, ge=1)
    learning_rate: float = Field(default=5e-3, gt=0)
    l2: float = Field(default=1e-4, ge=0, description="L2 on embedding tables (Adam's coupled L2)")
    patience: int = Field(default=2, ge=1, description="epochs without validation gain")
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, ge=0, lt=0.5)
    seed: int = 0
    min_count: int = Field(default=1, ge=1)
    binning: Binning = "quantile"
    num_bins: int = Field(default=16, ge=2, description="quantile bins per numeric field")


@dataclass(frozen=True)
class Split:
    """Encoded rows of one split."""

    indices: np.ndarray  # (N, F) int64
    labels: np.ndarray  # (N,) float32
    weights: np.ndarray | None  # (N,) float32

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Prepared:
    spec: FeatureSpec
    train: Split
    val: Split
    test: Split


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    samples_per_s: float = 0.0


def split_rows(
    num_rows: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random train/validation/test partition of row positions."""
    order = np.random.default_rng(seed).permutation(num_rows)
    num_test = round(num_rows * test_fraction)
    num_val = max(1, round(num_rows * val_fraction))
    if num_rows - num_test - num_val < 1:
        raise ValueError(f"{num_rows} rows are too few to split into train/validation/test")
    return order[num_test + num_val :], order[num_test : num_test + num_val], order[:num_test]


def encode_table(table: Table, spec: FeatureSpec, rows: np.ndarray | None = None) -> Split:
    """Encode (a subset of) a table's rows with ``spec``."""
    frame = table.frame if rows is None else table.frame.iloc[rows]
    part = replace(table, frame=frame)
    indices = FeatureEncoder(spec).encode_columns(part.feature_columns(), len(frame))
    return Split(indices, part.labels, part.weights)


def prepare(table: Table, config: TrainConfig) -> Prepared:
    """Split the rows, fit the spec on the training rows only, encode every split."""
    train_rows, val_rows, test_rows = split_rows(
        len(table.frame), config.val_fraction, config.test_fraction, config.seed
    )
    train_table = replace(table, frame=table.frame.iloc[train_rows])
    spec = fit_spec(train_table, config.min_count, config.binning, config.num_bins)
    return Prepared(
        spec=spec,
        train=encode_table(table, spec, train_rows),
        val=encode_table(table, spec, val_rows),
        test=encode_table(table, spec, test_rows),
    )


Preparer = Callable[[TrainConfig], Prepared]


def cached_prepare(table: Table) -> Preparer:
    """``prepare`` for one table, remembered by the settings it reads: runs that differ only
    in the model or the optimiser (a search, a comparison) share the encoded rows."""
    cache: dict[tuple[object, ...], Prepared] = {}

    def prepared_for(config: TrainConfig) -> Prepared:
        key = (
            config.seed,
            config.val_fraction,
            config.test_fraction,
            config.min_count,
            config.binning,
            config.num_bins,
        )
        if key not in cache:
            cache[key] = prepare(table, config)
        return cache[key]

    return prepared_for


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    embedding_types = (FeaturesLinear, FeaturesEmbedding, FieldAwareEmbedding)
    embedding_params = {
        id(p) for m in model.modules() if isinstance(m, embedding_types) for p in m.parameters()
    }
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if id(p) in embedding_params], "weight_decay": config.l2},
        {"params": [p for p in params if id(p) not in embedding_params], "weight_decay": 0.0},
    ]
    return torch.optim.Adam(groups, lr=config.learning_rate)


def batch_loss(
    outputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, task: Task
) -> torch.Tensor:
    """Log loss on logits (binary) or weighted MSE, whose root is the weighted RMSE."""
    if task == "binary":
        per_row = nn.functional.binary_cross_entropy_with_logits(outputs, labels, reduction="none")
    else:
        per_row = (outputs - labels).pow(2)
    if weights is None:
        return per_row.mean()
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    config: TrainConfig,
    generator: torch.Generator,
    description: str = "train",
    progress: bool = True,
) -> float:
    """One pass over ``split`` in shuffled mini-batches; returns the mean training loss."""
    model.train()
    indices = torch.from_numpy(split.indices)
    labels = torch.from_numpy(split.labels)
    weights = None if split.weights is None else torch.from_numpy(split.weights)
    order = torch.randperm(len(split), generator=generator)
    total, seen = 0.0, 0
    started = time.perf_counter()
    bar = tqdm(
        range(0, len(split), config.batch_size),
        desc=description,
        unit="batch",
        leave=False,
        disable=not progress,
    )
    for start in bar:
        rows = order[start : start + config.batch_size]
        if config.model.batch_norm and len(rows) < 2:
            continue  # batch norm cannot train on a single row
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(
            model(indices[rows]),
            labels[rows],
            None if weights is None else weights[rows],
            config.task,
        )
        loss.backward()
        optimizer.step()
        total += loss.item() * len(rows)
        seen += len(rows)
        bar.set_postfix(
            loss=f"{total / seen:.4f}",
            samples_s=f"{seen / (time.perf_counter() - started):,.0f}",
        )
    return total / max(seen, 1)


@torch.no_grad()
def predict(
    model: nn.Module, indices: np.ndarray, task: Task, batch_size: int = 16384
) -> np.ndarray:
    """Probabilities (binary) or values (regression) for encoded rows."""
    model.eval()
    outputs = [
        model(torch.from_numpy(indices[start : start + batch_size]))
        for start in range(0, len(indices), batch_size)
    ]
    scores = torch.cat(outputs) if outputs else torch.empty(0)
    return (torch.sigmoid(scores) if task == "binary" else scores).numpy()


def evaluate(model: nn.Module, split: Split, task: Task) -> Metrics:
    predictions = predict(model, split.indices, task)
    if task == "binary":
        return binary_metrics(split.labels, predictions)
    return regression_metrics(split.labels, predictions, split.weights)


def fit(
    model: nn.Module,
    prepared: Prepared,
    config: TrainConfig,
    progress: bool = True,
) -> FitResult:
    """Train with early stopping on the validation metric; leaves the best weights loaded.

    Unseen rows are refilled with the field average before every validation, so the
    validation score is the score the exported model will have.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    result = FitResult()
    best_score, best_state = -np.inf, copy.deepcopy(model.state_dict())
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        loss = train_epoch(
            model,
            optimizer,
            prepared.train,
            config,
            generator,
            description=f"{config.model.name} epoch {epoch}",
            progress=progress,
        )
        result.train_seconds += time.perf_counter() - started
        fill_unseen_rows(model, prepared.spec.field_dims)
        val = evaluate(model, prepared.val, config.task)
        score = headline(val)
        result.history.append(
            {"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in val.items()}}
        )
        logger.info(
            "%s epoch %d: train loss %.5f, validation %s %.5f",
            config.model.name,
            epoch,
            loss,
            "auc" if config.task == "binary" else "-wrmse",
            score,
        )
        if score > best_score:
            best_score, best_state, result.best_epoch = (
                score,
                copy.deepcopy(model.state_dict()),
                epoch,
            )
        elif epoch - result.best_epoch >= config.patience:
            logger.info("early stop: no validation gain for %d epochs", config.patience)
            break
    model.load_state_dict(best_state)
    epochs_run = len(result.history)
    result.samples_per_s = epochs_run * len(prepared.train) / max(result.train_seconds, 1e-9)
    return result


def new_model(prepared: Prepared, config: TrainConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    return build_model(prepared.spec.field_dims, config.model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
