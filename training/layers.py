"""Tiny composable blocks the whole model ladder is built from.

Every block takes encoded indices or embeddings, never raw features. Field offsets and
pair indices are non-persistent buffers built once in ``__init__``. Embedding tables take
sparse gradients: a step touches the rows its batch read, never the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from app.features.spec import NUM_RESERVED, UNSEEN_INDEX


def field_offsets(field_dims: Sequence[int]) -> torch.Tensor:
    dims = torch.tensor([0, *field_dims[:-1]], dtype=torch.int64)
    return torch.cumsum(dims, dim=0)


def sparse_table(rows: int, width: int, std: float) -> nn.Embedding:
    """A trainable table with sparse gradients, drawn once from N(0, ``std``²) (zeros for
    ``std`` 0): ``nn.Embedding``'s own N(0, 1) draw, overwritten at once, took 5.7 s of the
    6.7 s that building a 470M-parameter NFFM took here."""
    weight = torch.zeros(rows, width) if std == 0 else torch.empty(rows, width).normal_(0, std)
    return nn.Embedding.from_pretrained(weight, freeze=False, sparse=True)


class FeaturesLinear(nn.Module):
    """First-order term ``w0 + sum_i w[x_i]``."""

    offsets: torch.Tensor  # a buffer: typed here, as nn.Module's attribute lookup is not

    def __init__(self, field_dims: Sequence[int]) -> None:
        super().__init__()
        self.weight = sparse_table(sum(field_dims), 1, std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("offsets", field_offsets(field_dims), persistent=False)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` int64 -> ``(B,)``."""
        return self.weight(indices + self.offsets).sum(dim=(1, 2)) + self.bias


class FeaturesEmbedding(nn.Module):
    """One ``embed_dim`` vector per value: ``v_i``."""

    offsets: torch.Tensor

    def __init__(self, field_dims: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.embedding = sparse_table(sum(field_dims), embed_dim, std=0.01)
        self.register_buffer("offsets", field_offsets(field_dims), persistent=False)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` int64 -> ``(B, F, K)``."""
        return self.embedding(indices + self.offsets)


def field_aware_width(num_fields: int, embed_dim: int) -> int:
    """Columns of a :class:`FieldAwareEmbedding` row: ``F*K`` vector entries, then the weight."""
    return num_fields * embed_dim + 1


class FieldAwareRows(NamedTuple):
    """What :class:`FieldAwareEmbedding` gives a batch of ``B`` rows of ``F`` fields."""

    vectors: torch.Tensor  # (B, F, F*K): [b, i, j*K:(j+1)*K] is v_{x_i, f=j}
    weights: torch.Tensor  # (B, F): the first-order weights w_{x_i}
    table_rows: torch.Tensor | None  # (B, F, F*K + 1): both, as the table holds them; None
    # in the exported graph, which holds the vectors and the weights as two tables


class FieldAwareEmbedding(nn.Module):
    """All a field-aware model keeps per value, in one table row: the value's vector for every
    target field, ``v_{i, f}`` (``F*K`` columns), then its first-order weight ``w_i``.

    One row for both terms means one gather a batch, one sparse gradient and one optimiser
    update. With the first-order weights in a table of their own, an NFFM step (39 fields,
    k=4, batch 1024) spent ~3.5 ms more on the second lookup, its per-row gradient sum and
    its Adagrad update.

    Exported, the vectors and the weights are two tables (:func:`serving_tables`): the
    vectors then come out of onnxruntime's gather ready to be viewed ``(F*F, K)``, where one
    table's rows must first be copied without their weight (1.1 ms of the production NFFM's
    6.4 ms a 100-row batch).
    """

    offsets: torch.Tensor

    def __init__(self, field_dims: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        width = field_aware_width(len(field_dims), embed_dim)
        self.embedding = sparse_table(sum(field_dims), width, std=0.01)
        with torch.no_grad():
            self.embedding.weight[:, -1] = 0.0  # first-order weights start at zero, as in LR
        self.register_buffer("offsets", field_offsets(field_dims), persistent=False)
        self.served: tuple[torch.Tensor, torch.Tensor] | None = None  # see serving_tables

    def forward(self, indices: torch.Tensor) -> FieldAwareRows:
        """``(B, F)`` int64 -> the rows' vectors and weights."""
        rows = indices + self.offsets
        if self.served is not None and torch.compiler.is_exporting():
            vectors, weights = self.served
            rows_weights = nn.functional.embedding(rows, weights).squeeze(-1)
            return FieldAwareRows(nn.functional.embedding(rows, vectors), rows_weights, None)
        table_rows = self.embedding(rows)
        return FieldAwareRows(table_rows[..., :-1], table_rows[..., -1], table_rows)


@contextmanager
def serving_tables(model: nn.Module) -> Iterator[None]:
    """While exporting ``model``, hold each field-aware table as two: the vectors and the
    weights. They are views of the trained table (the exporter keeps them as they are, and
    the graph's file is written from them a few rows at a time), dropped when the block
    ends."""
    layers = [m for m in model.modules() if isinstance(m, FieldAwareEmbedding)]
    for layer in layers:
        table = layer.embedding.weight.detach()
        layer.served = (table[:, :-1], table[:, -1:])
    try:
        yield
    finally:
        for layer in layers:
            layer.served = None


class FieldPairs(nn.Module):
    """All field pairs ``i < j``, as index buffers built once with ``triu_indices``."""

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def num_pairs(self) -> int:
        return int(self.rows.numel())


class FieldAwareTerms(nn.Module):
    """The two terms of the FFM family, read from :class:`FieldAwareEmbedding` rows: the
    first-order sum ``w0 + sum_i w_i`` and the pair products ``v_{i, f(j)} ⊙ v_{j, f(i)}``
    for all ``i < j``.

    Every element both terms need is taken in one ``gather`` over the flattened rows, with
    an index built once, and split into the left factors, the right factors and the
    weights. Measured on an NFFM step (39 fields, k=4, batch 1024): ``index_select`` on the
    same index ran 2.4x faster forward and backward than two advanced-indexing gathers
    ``[:, rows, cols]`` (whose backward is an accumulating ``index_put`` over the block),
    and ``gather`` with the index expanded over the batch is ~20% faster again; exported,
    onnxruntime runs it (GatherElements) 4-9x faster than ``index_select`` (Gather on axis
    1). A custom backward gathering by the inverse permutation was slower, and so were
    per-field slices. ``split`` keeps the backward to one concatenation: taking the factors
    as ``[:, 0]`` and ``[:, 1]`` cost 3 ms more a step, each slice's backward zero-filling
    the whole block.

    Exported, the same terms are taken a vector at a time instead (:meth:`served`): two
    ``Gather`` on axis 1 of K-float vectors, where the training form's expanded element
    index and ``GatherElements`` copy every element on its own. onnxruntime ran the
    production NFFM (39 fields, k=16) in 6.4 against 7.9 ms a 100-row batch. Training has no
    use for it: its backward is the slow ``index_select`` one above.
    """

    elements: torch.Tensor
    left_vectors: torch.Tensor
    right_vectors: torch.Tensor

    def __init__(self, num_fields: int, embed_dim: int) -> None:
        super().__init__()
        self.pairs = FieldPairs(num_fields)
        self.num_pairs = self.pairs.num_pairs
        self.embed_dim = embed_dim
        width = field_aware_width(num_fields, embed_dim)
        rows, cols = self.pairs.rows, self.pairs.cols
        columns = torch.arange(embed_dim)
        left = (rows * width + cols * embed_dim)[:, None] + columns
        right = (cols * width + rows * embed_dim)[:, None] + columns
        weights = torch.arange(num_fields) * width + width - 1
        elements = torch.cat([left.reshape(-1), right.reshape(-1), weights])
        self.register_buffer("elements", elements, persistent=False)
        self.sizes = [left.numel(), right.numel(), num_fields]
        # served(): vector ``[i, j]`` of the ``(F*F, K)`` view is ``v_{x_i, f=j}``.
        self.register_buffer("left_vectors", rows * num_fields + cols, persistent=False)
        self.register_buffer("right_vectors", cols * num_fields + rows, persistent=False)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, rows: FieldAwareRows) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows -> first-order ``(B,)`` and products ``(B, P, K)``."""
        if rows.table_rows is None or torch.compiler.is_exporting():
            return self.served(rows)
        flat = rows.table_rows.reshape(rows.table_rows.shape[0], -1)
        every = self.elements.expand(flat.shape[0], -1)
        left, right, weights = torch.gather(flat, 1, every).split(self.sizes, dim=1)
        products = (left * right).view(-1, self.num_pairs, self.embed_dim)
        return weights.sum(dim=1) + self.bias, products

    def served(self, rows: FieldAwareRows) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s terms, as the exported graph takes them (the class docstring)."""
        vectors = rows.vectors.reshape(rows.vectors.shape[0], -1, self.embed_dim)
        left = vectors.index_select(1, self.left_vectors)
        right = vectors.index_select(1, self.right_vectors)
        return rows.weights.sum(dim=1) + self.bias, left * right


class FactorizationMachine(nn.Module):
    """``sum_{i<j} <v_i, v_j>`` via the O(FK) identity ``((sum v)^2 - sum v^2) / 2``."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, F, K)`` -> ``(B,)``."""
        return BiInteractionPooling()(embeddings).sum(dim=1)


class BiInteractionPooling(nn.Module):
    """``sum_{i<j} v_i ⊙ v_j`` (He & Chua 2017), the vector form of the FM term."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, F, K)`` -> ``(B, K)``."""
        square_of_sum = embeddings.sum(dim=1).pow(2)
        sum_of_square = embeddings.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square)


class Dropout(nn.Module):
    """Inverted dropout whose mask costs about a fifth of ``nn.Dropout``'s on CPU.

    torch's CPU ``bernoulli_`` makes one generator call per element: it was 41% of a
    DeepFM training step (400-400-400, dropout 0.5, batch 4096). Here each 64-bit draw
    gives four 16-bit uniforms that are compared with a threshold, so the keep probability
    is ``p`` rounded to 1/65536 and the output is rescaled by its exact inverse. The
    default generator is used, so ``torch.manual_seed`` makes it reproducible. Identity in
    eval mode, so exported models contain no trace of it.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        dropped = round(p * 65536)
        self.p = p
        self.threshold = dropped - 32768  # keep an int16 uniform v when v >= threshold
        self.scale = 65536 / (65536 - dropped)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Any shape -> same shape."""
        if not self.training or self.threshold == -32768:
            return inputs
        count = inputs.numel()
        words = torch.empty((count + 3) // 4, dtype=torch.int64, device=inputs.device)
        words.random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.int16)[:count].view(inputs.shape) >= self.threshold
        return inputs * (keep * self.scale).to(inputs.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """Hidden layers ending in a single linear output unit.

    Dropout and batch norm are options (off by default: InMobi's NFFM used neither).
    """

    def __init__(
        self,
        input_dim: int,
        mlp_dims: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if any(d < 1 for d in mlp_dims):
            raise ValueError(f"mlp_dims must be positive, got {list(mlp_dims)}")
        layers: list[nn.Module] = []
        for dim in mlp_dims:
            layers.append(nn.Linear(input_dim, dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(dim))
            layers.append(activation())
            if dropout > 0:
                layers.append(Dropout(dropout))
            input_dim = dim
        layers.append(nn.Linear(input_dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` float -> ``(B,)``."""
        return self.layers(inputs).squeeze(-1)


def embedding_tables(model: nn.Module) -> list[torch.Tensor]:
    """Every table indexed by field offsets (first-order weights, vectors, field-aware)."""
    tables: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, FeaturesLinear):
            tables.append(module.weight.weight)
        elif isinstance(module, FeaturesEmbedding | FieldAwareEmbedding):
            tables.append(module.embedding.weight)
    return tables


def unseen_rows(field_dims: Sequence[int]) -> torch.Tensor:
    """Each field's unseen row in the tables, as table row numbers."""
    return field_offsets(field_dims) + UNSEEN_INDEX


def fill_unseen_rows(model: nn.Module, field_dims: Sequence[int]) -> None:
    """Set every field's unseen row to the plain average of its value rows, in every table.

    This is InMobi's rule for values never seen in training. The average is unweighted on
    purpose: a new value is far more like a typical *value* of its field (most values are
    tail values) than like the impression-weighted head that frequency weighting would
    favour. Reserved rows (missing, unseen) are left out of the average.
    """
    starts = field_offsets(field_dims).tolist()
    for table in embedding_tables(model):
        with torch.no_grad():
            for start, size in zip(starts, field_dims, strict=True):
                values = table[start + NUM_RESERVED : start + size]
                average = values.mean(dim=0) if len(values) else torch.zeros_like(table[0])
                table[start + UNSEEN_INDEX] = average
