"""Training on several processes and machines: torch.distributed, launched by torchrun.

The same ``python -m training train`` runs alone or as one rank of a job::

    torchrun --standalone --nproc_per_node 2 -m training train --data ... --out ...
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint head:29400 -m training train --data ... --out ...

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without them this is a one-process
cluster and nothing here talks to anyone. With them:

* the spec and shards are prepared once: rank 0 first, then each node's first rank (a cache
  hit on a shared volume, else the same deterministic build on the node's own disk), then
  the rest, which find them in the cache; every rank's spec digest is compared;
* each epoch a seeded permutation of the train split's blocks is dealt out rank by rank, so
  a rank reads only its share, and all ranks take the same number of steps (a rank with a
  shorter share would leave the others waiting in an all-reduce);
* DistributedDataParallel sums the gradients -- sparse ones for the embedding tables on gloo
  (nccl reduces only dense tensors, so on CUDA the tables take dense gradients);
* validation predictions are gathered on rank 0, scored once, and the metrics broadcast, so
  every rank makes the same early-stopping decision from the same numbers;
* only rank 0 writes the model.

Every collective has a bounded timeout; a rank that fails exits non-zero and torchrun ends
the others, so a job ends with that rank's error, never a hang.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.data import DataError

logger = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]
T = TypeVar("T")
# Long enough for rank 0 to prepare a day of logs while the others wait, short enough that a
# stuck rank ends the job the same day.
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in the job: one process unless torchrun started it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_batch(self, batch_size: int) -> int:
        """This rank's rows a step: ``--batch-size`` is the global batch, split evenly."""
        return max(1, batch_size // self.world_size)

    @property
    def sparse_gradients(self) -> bool:
        """gloo sums sparse tensors; nccl does not, so CUDA ranks send dense ones."""
        return not (self.distributed and self.device.type == "cuda")


def resolve_device(choice: DeviceChoice, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when CUDA is present, else the CPU."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is visible to torch here")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DataError(f"local rank {local_rank} needs a GPU, but only {count} are visible")
    return torch.device("cuda", local_rank)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def single_process_only(command: str) -> None:
    """Refuse, clearly, a command that does not run as ranks when torchrun launched it."""
    if launched_by_torchrun():
        raise DataError(
            f"{command} runs in one process: launch it without torchrun "
            "(train and ladder are the commands that run as torchrun ranks)"
        )


@contextmanager
def cluster_session(
    device: DeviceChoice = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[Cluster]:
    """The process group for the duration of a command (none for a single process)."""
    if not launched_by_torchrun():
        yield Cluster(device=resolve_device(device), timeout_s=timeout_s)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank)
    # Object collectives and barriers stay on gloo; CUDA tensors go through nccl.
    backend = "cpu:gloo,cuda:nccl" if chosen.type == "cuda" else "gloo"
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    cluster = Cluster(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        device=chosen,
        timeout_s=timeout_s,
    )
    logger.info(
        "rank %d of %d (local rank %d, pid %d) on %s, backend %s, collective timeout %.0f s",
        rank,
        world,
        local_rank,
        os.getpid(),
        chosen,
        backend,
        timeout_s,
    )
    try:
        yield cluster
    finally:
        dist.destroy_process_group()


def barrier(cluster: Cluster) -> None:
    """A barrier that names the ranks that did not arrive when it times out (gloo)."""
    if cluster.distributed:
        dist.monitored_barrier(timeout=timedelta(seconds=cluster.timeout_s))


def in_turn(cluster: Cluster, work: Callable[[], T]) -> T:
    """``work`` on rank 0 first, then on each node's first rank, then on the rest.

    Used for preparing shards: the first call builds them into the cache, later calls on
    the same volume find them there. Each node's first rank builds its own copy when the
    cache is not shared, so a node's ranks never all build the same shards at once.
    """
    result: T | None = None
    for phase in (
        cluster.rank == 0,
        cluster.rank != 0 and cluster.local_rank == 0,
        cluster.local_rank != 0,
    ):
        if phase:
            result = work()
        barrier(cluster)
    assert result is not None
    return result


def check_same(cluster: Cluster, what: str, text: str) -> None:
    """Refuse to go on unless every rank holds the same ``text`` (compared by digest)."""
    if not cluster.distributed:
        return
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    digests: list[str | None] = [None] * cluster.world_size
    dist.all_gather_object(digests, digest)
    differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise DataError(
            f"ranks {differing} hold a different {what} from rank 0's: every rank must "
            "read the same data with the same settings"
        )


def wrap(model: nn.Module, cluster: Cluster, buffers_change: bool) -> nn.Module:
    """The module the training steps call: DDP across ranks, the model itself alone.

    DDP broadcasts rank 0's parameters and buffers once, then sums (and averages) every
    gradient in backward. Buffers are synced again only when training changes them (batch
    norm); the rest are constant index tables.
    """
    if not cluster.distributed:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[cluster.device.index] if cluster.device.type == "cuda" else None,
        forward_sync_buffers=buffers_change,
    )


def dense_table_gradients(model: nn.Module) -> None:
    """Switch every embedding to dense gradients (for backends that cannot sum sparse ones)."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.sparse = False


@dataclass(frozen=True)
class Share:
    """The blocks one rank reads in one epoch, and how many steps every rank takes."""

    blocks: np.ndarray
    total_blocks: int
    steps: int
    rows: int


def deal_blocks(
    num_rows: int, block_rows: int, batch_size: int, cluster: Cluster, seed: int, epoch: int
) -> Share:
    """This rank's share of a seeded permutation of the blocks (every rank draws the same
    one). The step count is the smallest rank's, so no rank waits for a missing gradient."""
    total = -(-num_rows // block_rows) if num_rows else 0
    order = np.random.default_rng([seed, epoch]).permutation(total)
    sizes = np.full(total, block_rows)
    if total:
        sizes[-1] = num_rows - block_rows * (total - 1)
    shares = [order[rank :: cluster.world_size] for rank in range(cluster.world_size)]
    steps = min(-(-int(sizes[s].sum()) // batch_size) for s in shares)
    mine = shares[cluster.rank]
    return Share(mine, total, steps, int(sizes[mine].sum()))


def block_rows_for(num_rows: int, cluster: Cluster, largest: int) -> int:
    """Blocks of ``largest`` rows, smaller when a split is too small to give every rank
    at least 4 blocks (so that small jobs are dealt evenly too)."""
    if not cluster.distributed:
        return largest
    return max(1, min(largest, num_rows // (4 * cluster.world_size)))


def rank_rows(num_rows: int, cluster: Cluster) -> tuple[int, int]:
    """This rank's contiguous slice of ``num_rows`` (evaluation)."""
    start = num_rows * cluster.rank // cluster.world_size
    return start, num_rows * (cluster.rank + 1) // cluster.world_size


def gather_on_main(cluster: Cluster, part: T) -> list[T] | None:
    """Every rank's ``part`` on rank 0, in rank order; ``None`` on the other ranks."""
    if not cluster.distributed:
        return [part]
    parts: list[T] | None = [part] * cluster.world_size if cluster.is_main else None
    dist.gather_object(part, parts, dst=0)
    return parts


def from_main(cluster: Cluster, value: T | None) -> T:
    """Rank 0's ``value`` on every rank."""
    if not cluster.distributed:
        assert value is not None
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    assert box[0] is not None
    return box[0]


def summed(cluster: Cluster, values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (losses and row counts for the log)."""
    if not cluster.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()
