"""Training as plain functions: ``train_epoch``, ``evaluate``, ``fit``, on encoded shards.

No trainer class: each step is a function a test or notebook can call on its own. The data
comes from :func:`training.dataset.prepare` (spec + shards on disk), read in shuffled blocks,
so memory depends on the model and the batch, never on the number of rows.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm import tqdm

from training.data import Task
from training.dataset import Prepared
from training.evaluation import Metrics, binary_metrics, headline, regression_metrics
from training.fit_spec import EXACT_VALUES, Binning
from training.layers import fill_unseen_rows
from training.memory import activations_kept_in_the_heap
from training.models import ModelConfig, build_model
from training.optim import OptimizerName, SparseOptimizer
from training.shards import Split

logger = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Everything that decides a training run; stored in spec.json for reproducibility."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig
    task: Task = "binary"
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=4096, ge=1)
    learning_rate: float = Field(default=5e-3, gt=0)
    l2: float = Field(default=1e-4, ge=0, description="L2 on the embedding rows a batch touched")
    optimizer: OptimizerName = Field(
        default="adam", description="tables: lazy Adam (SparseAdam) or Adagrad"
    )
    patience: int = Field(default=2, ge=1, description="epochs without validation gain")
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, ge=0, lt=0.5)
    time_column: str | None = Field(default=None, description="split by this column's values")
    val_from: str | None = Field(default=None, description="time split: first validation value")
    test_from: str | None = Field(default=None, description="time split: first test value")
    seed: int = 0
    min_count: int = Field(default=1, ge=1)
    max_vocab: int | None = Field(default=None, ge=1, description="values kept per field")
    exact_values: int = Field(
        default=EXACT_VALUES, ge=1, description="distinct values counted exactly, then sketched"
    )
    binning: Binning = "quantile"
    num_bins: int = Field(default=16, ge=2, description="quantile bins per numeric field")

    @model_validator(mode="after")
    def _time_split_is_complete(self) -> TrainConfig:
        given = [self.time_column, self.val_from, self.test_from]
        if any(v is not None for v in given) and any(v is None for v in given):
            raise ValueError("a time split needs --time-column, --val-from and --test-from")
        return self


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    samples_per_s: float = 0.0


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
    optimizer: SparseOptimizer,
    split: Split,
    config: TrainConfig,
    rng: np.random.Generator,
    description: str = "train",
    progress: bool = True,
) -> float:
    """One pass over ``split`` in shuffled mini-batches; returns the mean training loss."""
    model.train()
    total, seen = 0.0, 0
    started = time.perf_counter()
    bar = tqdm(total=len(split), desc=description, unit="row", leave=False, disable=not progress)
    for batch in split.shuffled(config.batch_size, rng):
        if config.model.batch_norm and len(batch) < 2:
            continue  # batch norm cannot train on a single row
        optimizer.zero_grad()
        loss = batch_loss(
            model(torch.from_numpy(batch.indices.astype(np.int64))),
            torch.from_numpy(batch.labels),
            None if batch.weights is None else torch.from_numpy(batch.weights),
            config.task,
        )
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        seen += len(batch)
        bar.update(len(batch))
        bar.set_postfix(
            loss=f"{total / seen:.4f}",
            samples_s=f"{seen / (time.perf_counter() - started):,.0f}",
        )
    bar.close()
    return total / max(seen, 1)


@torch.no_grad()
def predict(
    model: nn.Module, indices: np.ndarray, task: Task, batch_size: int = 4096
) -> np.ndarray:
    """Probabilities (binary) or values (regression) for encoded rows in memory, 4096 rows
    a forward pass: a 39-field NFFM's activations for 16384 rows were ~1 GB of peak RSS."""
    model.eval()
    outputs = [
        model(torch.from_numpy(indices[start : start + batch_size].astype(np.int64)))
        for start in range(0, len(indices), batch_size)
    ]
    scores = torch.cat(outputs) if outputs else torch.empty(0)
    return (torch.sigmoid(scores) if task == "binary" else scores).numpy()


def predict_split(
    model: nn.Module, split: Split, task: Task
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Predictions, labels and weights for every row of a split on disk, read block by
    block: the split's rows are never all in memory, only its scores."""
    predictions, labels, weights = [], [], []
    for block in split.blocks():
        predictions.append(predict(model, block.indices, task))
        labels.append(block.labels)
        if block.weights is not None:
            weights.append(block.weights)
    return (
        np.concatenate(predictions) if predictions else np.empty(0),
        np.concatenate(labels) if labels else np.empty(0, np.float32),
        np.concatenate(weights) if weights else None,
    )


def evaluate(model: nn.Module, split: Split, task: Task) -> Metrics:
    predictions, labels, weights = predict_split(model, split, task)
    if task == "binary":
        return binary_metrics(labels, predictions)
    return regression_metrics(labels, predictions, weights)


def fit(
    model: nn.Module,
    prepared: Prepared,
    config: TrainConfig,
    progress: bool = True,
) -> FitResult:
    """Train with early stopping on the validation metric; leaves the best weights loaded.

    Unseen rows hold the field average of the trained rows, refreshed before every epoch and
    every validation, so the validation score is the score the exported model will have.
    The best weights wait on disk, not in a second copy of the tables in memory.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    field_dims = prepared.spec.field_dims
    optimizer = SparseOptimizer(
        model, field_dims, config.learning_rate, config.l2, config.optimizer
    )
    result = FitResult()
    best_score = -np.inf
    with tempfile.TemporaryDirectory(prefix="ctrserve-best-") as scratch:
        best_path = Path(scratch) / "best.pt"
        for epoch in range(1, config.epochs + 1):
            fill_unseen_rows(model, field_dims)
            started = time.perf_counter()
            with activations_kept_in_the_heap():
                loss = train_epoch(
                    model,
                    optimizer,
                    prepared.train,
                    config,
                    rng,
                    description=f"{config.model.name} epoch {epoch}",
                    progress=progress,
                )
            result.train_seconds += time.perf_counter() - started
            fill_unseen_rows(model, field_dims)
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
                best_score, result.best_epoch = score, epoch
                torch.save(model.state_dict(), best_path)
            elif epoch - result.best_epoch >= config.patience:
                logger.info("early stop: no validation gain for %d epochs", config.patience)
                break
        model.load_state_dict(torch.load(best_path, weights_only=True))
    epochs_run = len(result.history)
    result.samples_per_s = epochs_run * len(prepared.train) / max(result.train_seconds, 1e-9)
    return result


def new_model(prepared: Prepared, config: TrainConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    return build_model(prepared.spec.field_dims, config.model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
