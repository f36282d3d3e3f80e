"""What a training run will hold in memory, worked out before anything is allocated.

The model is built on torch's ``meta`` device (shapes, no storage), so a plan for a model
that would not fit costs nothing. Shards are read from disk by block and are not counted
beyond the shuffle buffer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from training.data import DataError
from training.graph_file import DENSE_BLOCK, INT8_MIN_WIDTH
from training.layers import embedding_tables
from training.models import build_model
from training.shards import BLOCK_ROWS, BUFFER_BLOCKS

_FLOAT = 4
_MIB = 1 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
# Torch, onnxruntime, pyarrow and the interpreter, measured: ~0.4 GB RSS before any data.
RUNTIME_BYTES = 450 * _MIB
# One serving worker's own memory besides the mapped weights (its USS in
# docs/LARGE_MODELS.md): the runtime, then the encoder's lookup of every vocabulary value.
SERVING_WORKER_BYTES = 80 * _MIB
SERVING_BYTES_PER_VALUE = 480
_DTYPE_BYTES = {"float32": 4, "float16": 2, "int8": 1}


@dataclass(frozen=True)
class MemoryPlan:
    tables: int  # embedding tables (first-order, vectors, field-aware)
    optimizer: int  # optimiser state of tables and dense layers
    dense: int  # MLP weights
    batch: int  # one step's activations and gradients, roughly
    buffers: int  # the shuffle buffer and the runtime
    export: int  # what the export holds besides the model: compact tables (float32: none)
    exported: int  # the version's weights file, as the service maps it
    worker: int  # one serving worker's own memory: the runtime and the encoder

    @property
    def training(self) -> int:
        return self.tables + self.optimizer + self.dense + self.batch + self.buffers

    @property
    def total(self) -> int:
        """The run's peak: training, or the export after it (the optimiser state is gone)."""
        return max(self.training, self.tables + self.dense + self.export + self.buffers)

    def replica(self, workers: int) -> int:
        """A serving replica of ``workers``: one mapped copy of the weights, shared."""
        return self.exported + workers * self.worker

    def lines(self) -> list[str]:
        parts = [
            ("embedding tables", self.tables),
            ("optimiser state", self.optimizer),
            ("dense layers", self.dense),
            ("one batch (activations, gradients)", self.batch),
            ("shuffle buffer + runtime", self.buffers),
            ("training", self.training),
            ("export (compact tables' copy)", self.export),
            ("total (the peak of the two)", self.total),
            ("exported weights (model.onnx.data)", self.exported),
            *((f"served by {n} worker(s), a replica", self.replica(n)) for n in (1, 2, 4)),
        ]
        return [f"{name:<38}{size / _MIB:>10,.0f} MiB" for name, size in parts]


def plan(
    field_dims: Sequence[int],
    model_config: object,
    batch_size: int,
    optimizer: str,
    table_dtype: str = "float32",
    dense_dtype: str = "float32",
) -> MemoryPlan:
    """Bytes the run will need: tables, optimiser state (Adam: two moments; Adagrad: one
    sum), dense layers, one batch's activations (every intermediate kept for backward,
    counted from a forward pass on the meta device) and the buffers; then the export (the
    compact copy of the tables, if any: the graph's file is written from the trained
    tables themselves) and what serving maps."""
    with torch.device("meta"):
        model = build_model(field_dims, model_config)  # type: ignore[arg-type]
        tables = embedding_tables(model)
        table_ids = {id(t) for t in tables}
        table_bytes = sum(t.numel() for t in tables) * _FLOAT
        dense = [p for p in model.parameters() if id(p) not in table_ids]
        dense_bytes = sum(p.numel() for p in dense) * _FLOAT
        stored_dense = sum(_stored_dense(tuple(p.shape), dense_dtype) for p in dense)
        activations = _activation_bytes(model, len(field_dims), batch_size)
    moments = 2 if optimizer == "adam" else 1
    touched = batch_size * len(field_dims)
    widest = max((t.shape[1] for t in tables), default=1)
    sparse_grads = touched * widest * _FLOAT * 3  # gradient, coalesced copy, update
    buffer_bytes = BLOCK_ROWS * BUFFER_BLOCKS * (len(field_dims) + 2) * 8
    stored = sum(_stored_bytes(t.shape[0], t.shape[1], table_dtype) for t in tables)
    compact = stored if table_dtype != "float32" else 0
    return MemoryPlan(
        tables=table_bytes,
        optimizer=moments * table_bytes + 2 * dense_bytes,
        dense=dense_bytes,
        batch=activations + sparse_grads,
        buffers=buffer_bytes + RUNTIME_BYTES,
        export=compact,
        exported=stored + stored_dense,
        worker=SERVING_WORKER_BYTES + SERVING_BYTES_PER_VALUE * sum(field_dims),
    )


def _stored_bytes(rows: int, width: int, table_dtype: str) -> int:
    """A table's bytes in the exported graph (int8 keeps a float scale a row)."""
    if table_dtype == "int8" and width < INT8_MIN_WIDTH:  # stays float16
        table_dtype = "float16"
    scales = rows * _FLOAT if table_dtype == "int8" else 0
    return rows * width * _DTYPE_BYTES[table_dtype] + scales


def _stored_dense(shape: tuple[int, ...], dense_dtype: str) -> int:
    """A dense parameter's bytes in the exported graph: an int8 layer's ``(outputs, inputs)``
    weight keeps a byte a weight, its inputs padded to whole blocks, and a float scale a
    block; biases stay float32."""
    if dense_dtype != "int8" or len(shape) != 2:
        return _FLOAT * int(torch.Size(shape).numel())
    outputs, inputs = shape
    blocks = -(-inputs // DENSE_BLOCK)
    return outputs * blocks * (DENSE_BLOCK + _FLOAT)


def _activation_bytes(model: torch.nn.Module, num_fields: int, batch_size: int) -> int:
    """Sum of the sizes of every module output in one forward pass (meta tensors), doubled
    for their gradients."""
    total = 0

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if m is not model]
    try:
        model(torch.zeros((batch_size, num_fields), dtype=torch.int64, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * total


@contextlib.contextmanager
def activations_kept_in_the_heap() -> Iterator[None]:
    """While training steps or scoring passes run, serve blocks up to 32 MiB from glibc's
    heap and keep them.

    By default every block over 128 KiB is ``mmap``ed and unmapped on free, so each step's
    activations (tens of MB) are faulted back in page by page: a third of an NFFM step here
    (profiled: ``fill_`` of a fresh ``(B, F, F, K)`` gradient ran at ~1 GB/s), and nearly
    a third of a scoring pass (12 page faults a row). From the heap they are reused.
    Larger blocks (shuffle buffers, the blocks of rows a scoring pass reads) stay mapped,
    and the defaults come back afterwards: with every block on the heap, a test pass over
    300k rows fragmented it to 3 GB more resident memory. No effect off glibc. Not
    re-entrant: the first block to leave restores the defaults.
    """
    mallopt = _mallopt()
    if mallopt is None:
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's ceiling for this setting
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, 128 << 10)  # glibc's defaults
        mallopt(_M_TRIM_THRESHOLD, 128 << 10)


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        return getattr(ctypes.CDLL("libc.so.6"), "mallopt", None)  # type: ignore[no-any-return]
    except OSError:
        return None


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(memory: MemoryPlan, budget: int) -> None:
    """Refuse a run that will not fit, naming the knobs that make it smaller."""
    if memory.total <= budget:
        return
    raise DataError(
        f"training needs about {memory.total / _MIB:,.0f} MiB but the budget is "
        f"{budget / _MIB:,.0f} MiB (--max-memory). Tables and their optimiser state are "
        f"{(memory.tables + memory.optimizer) / _MIB:,.0f} MiB: raise --min-count, cap each "
        "field with --max-vocab, or lower --embed-dim; a smaller --batch-size cuts the "
        f"{memory.batch / _MIB:,.0f} MiB of one batch."
    )
