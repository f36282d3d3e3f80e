"""Training as plain functions: ``train_epoch``, ``evaluate``, ``fit``, on encoded shards.

No trainer class: each step is a function a test or notebook can call on its own. The data
comes from :func:`training.dataset.prepare` (spec + shards on disk), read in shuffled blocks,
so memory depends on the model and the batch, never on the number of rows. The same
functions run as one rank of a torchrun job (:mod:`training.distributed`): ``--batch-size``
is the global batch, split between the ranks, so a job gives the same model on 1 or N
processes up to the order of the rows.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm import tqdm

from app.repository.manifest import DenseDtype, TableDtype
from training.data import DataError, Task
from training.dataset import Prepared
from training.distributed import (
    Cluster,
    block_rows_for,
    deal_blocks,
    dense_table_gradients,
    from_main,
    gather_on_main,
    rank_rows,
    summed,
    wrap,
)
from training.evaluation import Metrics, binary_metrics, headline, regression_metrics
from training.fit_spec import EXACT_VALUES, Binning
from training.layers import FeaturesLinear, FieldAwareTerms, fill_unseen_rows
from training.memory import activations_kept_in_the_heap
from training.models import ModelConfig, build_model
from training.optim import OptimizerName, SparseOptimizer
from training.shards import BLOCK_ROWS, Arrays, Split
from training.state_file import load_state, save_state

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
    time_column: str | None = Field(
        default=None,
        description="split by this column's values: before --val-from train, from "
        "--test-from test; without those, at the values that leave the last val_fraction + "
        "test_fraction of the rows to validation and test (a warm start splits by its "
        "base's time column unless told otherwise)",
    )
    val_from: str | None = Field(default=None, description="time split: first validation value")
    test_from: str | None = Field(default=None, description="time split: first test value")
    seed: int = 0
    min_count: int | None = Field(
        default=None,
        ge=1,
        description="values seen fewer times share the unseen row; absent: each field's own "
        "cut-off, 5 for a long tail of ids, else 1 (training.fit_spec.LONG_TAIL_MEAN_COUNT)",
    )
    max_vocab: int | None = Field(default=None, ge=1, description="values kept per field")
    exact_values: int = Field(
        default=EXACT_VALUES, ge=1, description="distinct values counted exactly, then sketched"
    )
    binning: Binning = "quantile"
    num_bins: int = Field(default=16, ge=2, description="quantile bins per numeric field")
    negative_sampling: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="binary: keep every positive and this share of the negatives of every "
        "split (a seeded draw; kept validation and test negatives weigh 1 / share); the "
        "exported scores are corrected for it",
    )
    count_decay: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="--warm-start: yesterday's value counts are multiplied by this before "
        "today's are added, so a value unseen for days gives its row, in a field at "
        "--max-vocab, to one seen today",
    )
    calibrate: bool = Field(
        default=True,
        description="binary: fit a calibration map on the validation split (Platt's or "
        "isotonic, whichever predicts held-out validation rows better) and bake it into the "
        "exported graph",
    )
    table_dtype: TableDtype = Field(
        default="float32",
        description="how the exported graph stores its embedding tables: float16 halves "
        "the model's bytes, int8 (a scale per row) quarters them; gathered rows are "
        "turned back into float32 inside the graph",
    )
    dense_dtype: DenseDtype = Field(
        default="float32",
        description="how the exported graph stores its fully connected layers: int8 runs "
        "them as onnxruntime's MatMulNBits (8-bit weight blocks, each row's activations "
        "quantized on their own; a Criteo-shaped NFFM scored 1.6-1.7x the rows a call of "
        "one and 1.2-1.3x in calls of 100 in two runs, docs/LARGE_MODELS.md); models "
        "without an MLP (LR, FM, FFM) stay float32",
    )
    checkpoint: bool = Field(
        default=True,
        description="keep the torch checkpoint and the optimiser state beside the export "
        "(needed only to re-export or train further; the checkpoint is as large again as the "
        "tables, the optimiser state once (Adagrad) or twice (Adam) more)",
    )

    @model_validator(mode="after")
    def _sampling_is_binary(self) -> TrainConfig:
        if self.negative_sampling < 1.0 and self.task != "binary":
            raise ValueError("--negative-sampling needs --task binary (it keeps the positives)")
        return self

    @model_validator(mode="after")
    def _time_split_is_complete(self) -> TrainConfig:
        if (self.val_from is None) != (self.test_from is None):
            raise ValueError(
                "give both --val-from and --test-from, or neither (with only "
                "--time-column the cut-offs follow the column's values)"
            )
        if self.val_from is not None and self.time_column is None:
            raise ValueError("--val-from and --test-from need --time-column")
        return self


# predictions, labels and weights (None: every row weighs 1) of a split's rows
Scored = tuple[np.ndarray, np.ndarray, np.ndarray | None]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")  # the headline validation metric of the best epoch
    optimizer: SparseOptimizer | None = None  # its state after the last epoch
    # the best epoch's validation predictions, labels and weights (on rank 0): the weights
    # fit leaves loaded score them so, and a calibration need not score them again
    best_validation: Scored | None = None
    train_seconds: float = 0.0
    samples_seen: int = 0
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
    batches: Iterable[Arrays],
    rows: int,
    config: TrainConfig,
    device: torch.device,
    description: str = "train",
    progress: bool = True,
) -> tuple[float, int]:
    """One pass over ``batches`` (about ``rows`` rows, for the progress bar); returns the
    summed training loss and the rows it was summed over."""
    model.train()
    total, seen = 0.0, 0
    started = time.perf_counter()
    bar = tqdm(total=rows, desc=description, unit="row", leave=False, disable=not progress)
    for batch in batches:
        if config.model.batch_norm and len(batch) < 2:
            continue  # batch norm cannot train on a single row
        optimizer.zero_grad()
        loss = batch_loss(
            model(_tensor(batch.indices.astype(np.int64), device)),
            _tensor(batch.labels, device),
            None if batch.weights is None else _tensor(batch.weights, device),
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
    return total, seen


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array).to(device, non_blocking=True)


def epoch_batches(
    split: Split, config: TrainConfig, epoch: int, cluster: Cluster
) -> tuple[Iterator[Arrays], int]:
    """This rank's shuffled mini-batches for one epoch, and the rows they hold.

    Alone: every block, in a new seeded order each epoch. As a rank: its share of the
    blocks, ``batch_size / world_size`` rows a step, and as many steps as every other rank.
    """
    per_rank = cluster.rank_batch(config.batch_size)
    block_rows = block_rows_for(len(split), cluster, BLOCK_ROWS)
    share = deal_blocks(len(split), block_rows, per_rank, cluster, config.seed, epoch)
    rng = np.random.default_rng([config.seed, epoch, cluster.rank])
    batches = split.shuffled(per_rank, rng, block_rows=block_rows, blocks=share.blocks)
    if not cluster.distributed:
        return batches, share.rows
    if share.steps == 0:
        raise DataError(
            f"{len(split):,} training rows cannot be shared by {cluster.world_size} ranks"
        )
    listed = ", ".join(str(b) for b in sorted(share.blocks)[:12])
    more = "" if len(share.blocks) <= 12 else ", ..."
    logger.info(
        "rank %d, epoch %d: reads %d of the %d train blocks (%s%s), %d steps of %d rows",
        cluster.rank,
        epoch,
        len(share.blocks),
        share.total_blocks,
        listed,
        more,
        share.steps,
        per_rank,
    )
    return islice(batches, share.steps), min(share.rows, share.steps * per_rank)


@torch.no_grad()
def predict(
    model: nn.Module,
    indices: np.ndarray,
    task: Task,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> np.ndarray:
    """Probabilities (binary) or values (regression) for encoded rows in memory, 1024 rows
    a forward pass: a 39-field NFFM's pairwise activations (~25 MB at 1024 rows) stay in
    the CPU's caches, and in the heap, not faulted in afresh each pass (a sampled 10M-row
    run's 138k validation rows: 2.0 s and 0.14M page faults, against 3.0 s and 1.66M)."""
    model.eval()
    device = device or torch.device("cpu")
    with activations_kept_in_the_heap():
        outputs = [
            model(_tensor(indices[start : start + batch_size].astype(np.int64), device)).cpu()
            for start in range(0, len(indices), batch_size)
        ]
    scores = torch.cat(outputs) if outputs else torch.empty(0)
    return (torch.sigmoid(scores) if task == "binary" else scores).numpy()


def predict_split(
    model: nn.Module, split: Split, task: Task, cluster: Cluster | None = None
) -> Scored:
    """Predictions, labels and weights for the rows of a split on disk (a rank's slice of
    them in a job), read block by block: the rows are never all in memory, only scores."""
    cluster = cluster or Cluster()
    start, stop = rank_rows(len(split), cluster)
    predictions, labels, weights = [], [], []
    for block in split.blocks(start=start, stop=stop):
        predictions.append(predict(model, block.indices, task, device=cluster.device))
        labels.append(block.labels)
        if block.weights is not None:
            weights.append(block.weights)
    return (
        np.concatenate(predictions) if predictions else np.empty(0),
        np.concatenate(labels) if labels else np.empty(0, np.float32),
        np.concatenate(weights) if weights else None,
    )


def evaluate(model: nn.Module, split: Split, task: Task, cluster: Cluster | None = None) -> Metrics:
    """The split's metrics; in a job each rank scores a slice, rank 0 computes the metrics
    on all of them (AUC does not add up from parts) and every rank gets rank 0's numbers."""
    cluster = cluster or Cluster()
    return scored_metrics(gathered_scores(model, split, task, cluster), task, cluster)


def gathered_scores(
    model: nn.Module, split: Split, task: Task, cluster: Cluster | None = None
) -> Scored | None:
    """Predictions, labels and weights of every row of a split, in order, on rank 0 (in a
    job each rank scores a slice); ``None`` on the other ranks."""
    cluster = cluster or Cluster()
    parts = gather_on_main(cluster, predict_split(model, split, task, cluster))
    if parts is None:
        return None
    given = [p[2] for p in parts if p[2] is not None]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate(given) if given else None,
    )


def scored_metrics(scored: Scored | None, task: Task, cluster: Cluster | None = None) -> Metrics:
    """Rank 0's metrics of its ``scored`` rows, on every rank."""
    metrics = None
    if scored is not None:
        predictions, labels, weights = scored
        metrics = (
            binary_metrics(labels, predictions, weights)
            if task == "binary"
            else regression_metrics(labels, predictions, weights)
        )
    return from_main(cluster or Cluster(), metrics)


def fit(
    model: nn.Module,
    prepared: Prepared,
    config: TrainConfig,
    progress: bool = True,
    cluster: Cluster | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> FitResult:
    """Train with early stopping on the validation metric; leaves the best weights loaded
    (on rank 0, the only rank that exports, in a job).

    ``on_epoch(epoch, validation score)`` runs after each epoch's validation; an exception
    it raises (a tuner pruning the trial) ends the fit. ``optimizer_state`` (a warm start's,
    :meth:`SparseOptimizer.state`) is where the optimiser starts.

    Unseen rows hold the field average of the trained rows, refreshed before every epoch and
    every validation, so the validation score is the score the exported model will have.
    The best weights wait on disk, not in a second copy of the tables in memory.
    """
    cluster = cluster or Cluster()
    torch.manual_seed(config.seed)
    field_dims = prepared.spec.field_dims
    model.to(cluster.device)
    if not cluster.sparse_gradients:
        dense_table_gradients(model)
    stepped = wrap(model, cluster, buffers_change=config.model.batch_norm)
    optimizer = SparseOptimizer(
        model,
        field_dims,
        config.learning_rate,
        config.l2,
        config.optimizer,
        sparse_gradients=cluster.sparse_gradients,
    )
    if optimizer_state is not None:
        optimizer.load_state(optimizer_state)
    result = FitResult(optimizer=optimizer)
    with (
        tempfile.TemporaryDirectory(prefix="ctrserve-best-") as scratch,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctr-best") as saver,
    ):
        best_path, candidate_path = Path(scratch) / "best.pt", Path(scratch) / "candidate.pt"
        for epoch in range(1, config.epochs + 1):
            fill_unseen_rows(model, field_dims)
            batches, rows = epoch_batches(prepared.train, config, epoch, cluster)
            started = time.perf_counter()
            with activations_kept_in_the_heap():
                loss_sum, seen = train_epoch(
                    stepped,
                    optimizer,
                    batches,
                    rows,
                    config,
                    cluster.device,
                    description=f"{config.model.name} epoch {epoch}",
                    progress=progress and cluster.is_main,
                )
            result.train_seconds += time.perf_counter() - started
            loss_sum, rows_seen = summed(cluster, [loss_sum, float(seen)])
            result.samples_seen += int(rows_seen)
            loss = loss_sum / max(rows_seen, 1.0)
            fill_unseen_rows(model, field_dims)
            # This epoch's weights are written while validation scores them (a large
            # model's copy takes seconds a gigabyte) and kept if they score best; the last
            # epoch's stay where they are. The next epoch waits for the write.
            candidate = (
                saver.submit(save_state, model.state_dict(), candidate_path)
                if cluster.is_main and epoch < config.epochs
                else None
            )
            scored = gathered_scores(model, prepared.val, config.task, cluster)
            val = scored_metrics(scored, config.task, cluster)
            score = headline(val)
            result.history.append(
                {"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in val.items()}}
            )
            logger.log(
                logging.INFO if cluster.is_main else logging.DEBUG,
                "%s epoch %d: train loss %.5f, validation %s %.5f",
                config.model.name,
                epoch,
                loss,
                "auc" if config.task == "binary" else "-wrmse",
                score,
            )
            if candidate is not None:
                candidate.result()
            # Every rank holds rank 0's score, so every rank takes the same branch here.
            if on_epoch is not None:
                on_epoch(epoch, score)
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch
                result.best_validation = scored
                if candidate is not None:
                    candidate_path.replace(best_path)
            elif epoch - result.best_epoch >= config.patience:
                logger.info("early stop: no validation gain for %d epochs", config.patience)
                break
        if cluster.is_main and result.best_epoch != len(result.history):
            model.load_state_dict(load_state(best_path))
    result.samples_per_s = result.samples_seen / max(result.train_seconds, 1e-9)
    return result


def correct_for_sampling(model: nn.Module, kept: float) -> None:
    """Undo negative down-sampling in the model itself: a model trained on every positive
    and a share ``kept`` of the negatives predicts p; the true rate is
    q = p / (p + (1 - p) / kept), which is sigmoid(logit + ln kept) (He et al. 2014). Every
    model of the ladder adds one global bias to its logit; it takes ln kept, so training's
    evaluation, the export and a re-export all score the corrected rate."""
    biases = [m.bias for m in model.modules() if isinstance(m, FeaturesLinear | FieldAwareTerms)]
    if len(biases) != 1:
        raise ValueError(f"expected one global bias in {type(model).__name__}, found {len(biases)}")
    with torch.no_grad():
        biases[0].add_(math.log(kept))


def corrected_scores(scores: np.ndarray, kept: float) -> np.ndarray:
    """What a model scores after :func:`correct_for_sampling` where it scored ``scores``
    before: q = p / (p + (1 - p) / kept)."""
    p = scores.astype(np.float64)
    return (p / (p + (1.0 - p) / kept)).astype(scores.dtype)


def new_model(prepared: Prepared, config: TrainConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    return build_model(prepared.spec.field_dims, config.model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
