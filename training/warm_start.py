"""Continue yesterday's model on today's data: the vocabulary grows, learned rows carry over.

```
yesterday's version: checkpoint.pt (rows), optimizer.pt (per-row optimiser state),
  spec.json (values), statistics.npz (counts)
today's pass 1: counts of today's values ─► merge ─► today's spec (old values first claim
  a row; new values with --min-count today; at most --max-vocab a field, the lowest
  decayed counts evicted)
new model ◄─ every table row of a value kept, by value (missing, unseen and numeric bins
  by index); a new value starts at its field's average row; dense layers copied
optimiser ◄─ the same rows of Adagrad's sums or Adam's moments (a new value starts with
  none, as a fresh row does); the dense layers' Adam state
```

A value's count is ``decay x yesterday's count + today's``, so one not seen for days fades
and, in a field at its capacity, gives its row to a value seen today: memory stays bounded
across months of days while the head of every field keeps what it learned. Numeric fields
keep yesterday's bins (new edges would move every bin's meaning under its learned row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.features.spec import NUM_RESERVED, CategoricalField, FeatureSpec, NumericField
from app.repository.manifest import read_version
from app.repository.store import resolve_model_dir
from training.data import DataError
from training.export import TrainedModel, load_checkpoint, load_optimizer_state
from training.fit_spec import SpecBuilder
from training.layers import embedding_tables, field_offsets
from training.models import ModelConfig
from training.statistics import TrainingStatistics


@dataclass(frozen=True)
class WarmStart:
    """The version a run continues: its model, spec and decayed value counts."""

    version: str
    model: nn.Module
    trained: TrainedModel
    counts: dict[str, np.ndarray]  # field -> decayed training count per encoded index
    optimizer: dict[str, Any] | None = None  # SparseOptimizer.state(), when it was kept

    @property
    def spec(self) -> FeatureSpec:
        return self.trained.features

    @property
    def model_config(self) -> ModelConfig:
        return self.trained.layers


def load_warm_start(path: Path) -> WarmStart:
    """The model in ``path`` (a repository's current version, or a version directory).

    Raises:
        DataError: it has no training statistics to take counts from.
    """
    version_dir = resolve_model_dir(path)
    model, trained = load_checkpoint(version_dir)
    statistics = TrainingStatistics.load(version_dir)
    if statistics is None:
        raise DataError(f"{version_dir}: no statistics.npz (value counts); train it again")
    counts = statistics.vocabulary_counts or statistics.field_counts
    optimizer = load_optimizer_state(version_dir)
    return WarmStart(read_version(version_dir), model, trained, counts, optimizer)


def check_fields(base: FeatureSpec, builder: SpecBuilder) -> None:
    """Today's columns must be yesterday's fields, of the same kinds, in any order (rows
    are encoded by column name, and today's spec keeps yesterday's field order)."""
    today = dict.fromkeys(builder.tokens, "categorical")
    today |= dict.fromkeys(builder.numbers, "numeric")
    before = {f.name: f.kind for f in base.fields}
    differences = []
    if added := [name for name in today if name not in before]:
        differences.append(f"adds {', '.join(added)}")
    if lacking := [name for name in before if name not in today]:
        differences.append(f"lacks {', '.join(lacking)}")
    differences += [
        f"has {name} as {kind}, not {before[name]} (--categorical, --numeric)"
        for name, kind in today.items()
        if before.get(name, kind) != kind
    ]
    if differences:
        raise DataError(
            f"--warm-start continues a model of fields {', '.join(before)}; today's data "
            f"{'; '.join(differences)}: the fields must be the same"
        )


def merge_spec(
    base: WarmStart,
    builder: SpecBuilder,
    min_count: int | None,
    capacity: int | None,
    decay: float,
) -> FeatureSpec:
    """Today's spec: yesterday's values and today's, by decayed count, at most ``capacity``
    a field (see the module's docstring)."""
    check_fields(base.spec, builder)
    fields: list[CategoricalField | NumericField] = []
    for field in base.spec.fields:
        if not isinstance(field, CategoricalField):
            fields.append(field)  # numeric: yesterday's bins
            continue
        today = builder.tokens[field.name]
        cutoff = today.min_count() if min_count is None else min_count
        old = base.counts[field.name][NUM_RESERVED:]
        score = {value: decay * float(c) for value, c in zip(field.vocabulary, old, strict=True)}
        for value, count in today.counted().items():
            if value in score:
                score[value] += count
            elif count >= cutoff:
                score[value] = float(count)
        order = sorted(score, key=lambda value: (-score[value], value))
        fields.append(
            CategoricalField(name=field.name, min_count=cutoff, vocabulary=tuple(order[:capacity]))
        )
    return FeatureSpec(fields=tuple(fields))


def decayed_counts(
    base: WarmStart, spec: FeatureSpec, today: dict[str, np.ndarray], decay: float
) -> dict[str, np.ndarray]:
    """Per encoded index of ``spec``: ``decay x`` the base's count of the same value (or
    reserved row, or bin) ``+`` today's training rows."""
    merged = {}
    for field, old_field in zip(spec.fields, base.spec.fields, strict=True):
        counts = today[field.name].astype(np.float64)
        rows = _row_map(old_field, field)
        kept = rows >= 0
        counts[kept] += decay * base.counts[field.name][rows[kept]]
        merged[field.name] = counts
    return merged


RowSources = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _row_sources(base: WarmStart, spec: FeatureSpec) -> RowSources:
    """Per field of ``spec``: its table rows, which of them hold a value the base knew, and
    that value's row in the base's tables."""
    old_starts = field_offsets(base.spec.field_dims).tolist()
    new_starts = field_offsets(spec.field_dims).tolist()
    sources = []
    for j, (old_field, field) in enumerate(zip(base.spec.fields, spec.fields, strict=True)):
        rows = torch.from_numpy(_row_map(old_field, field))
        found = rows >= 0
        sources.append((new_starts[j] + torch.arange(len(rows)), found, old_starts[j] + rows))
    return sources


def transplant(base: WarmStart, model: nn.Module, spec: FeatureSpec) -> dict[str, int]:
    """Copy the base model into ``model`` (built for ``spec``): every kept value's row of
    every table, the reserved rows and the bins; new values at their field's unseen row (the
    field average); every dense parameter. Returns the values kept and new."""
    if type(model) is not type(base.model):
        raise DataError(f"--warm-start continues a {type(base.model).__name__}")
    old_tables, new_tables = embedding_tables(base.model), embedding_tables(model)
    old_starts = field_offsets(base.spec.field_dims).tolist()
    sources = _row_sources(base, spec)
    table_ids = {id(t) for t in new_tables}
    with torch.no_grad():
        for old, fresh in zip(old_tables, new_tables, strict=True):
            if old.shape[1] != fresh.shape[1]:
                raise DataError("--warm-start needs the same model hyper-parameters")
            for (target, found, source), start in zip(sources, old_starts, strict=True):
                fresh[target[found]] = old[source[found]]
                fresh[target[~found]] = old[start + 1]  # the unseen row: the field average
        old_ids = {id(t) for t in old_tables}
        old_dense = {n: p for n, p in base.model.named_parameters() if id(p) not in old_ids}
        for name, parameter in model.named_parameters():
            if id(parameter) not in table_ids:
                parameter.copy_(old_dense[name])
    new = sum(int((~found).sum()) for _, found, _ in sources)
    kept = sum(int(found.sum()) - NUM_RESERVED for _, found, _ in sources)
    return {"kept_values": kept, "new_values": new}


def carried_optimizer(
    base: WarmStart, spec: FeatureSpec, optimizer: str
) -> tuple[dict[str, Any] | None, str]:
    """The base's optimiser state for today's tables (every kept value's rows of every
    per-row tensor; new values start with zeros, as a fresh row does; the dense layers'
    state as it was), and what became of it, in words. ``None`` when there is nothing to
    carry: no state was kept, or today's optimiser is another one."""
    if base.optimizer is None:
        return None, f"fresh: {base.version} kept no optimizer state"
    if base.optimizer["name"] != optimizer:
        return None, f"fresh: {base.version} trained with {base.optimizer['name']}"
    old_rows = sum(base.spec.field_dims)
    new_rows = sum(spec.field_dims)
    sources = _row_sources(base, spec)
    tables = base.optimizer["tables"]
    state: dict[int, dict[str, Any]] = {}
    for index, entries in tables["state"].items():
        state[index] = {}
        for key, value in entries.items():
            if not (isinstance(value, torch.Tensor) and value.dim() and len(value) == old_rows):
                state[index][key] = value  # a step count: the same optimiser goes on
                continue
            fresh = value.new_zeros((new_rows, *value.shape[1:]))
            for target, found, source in sources:
                fresh[target[found]] = value[source[found]]
            state[index][key] = fresh
    carried = {**base.optimizer, "tables": {**tables, "state": state}}
    return carried, f"carried from {base.version}"


def _row_map(
    old: CategoricalField | NumericField, new: CategoricalField | NumericField
) -> np.ndarray:
    """For each encoded index of ``new``, the same value's index in ``old`` (-1: new)."""
    if not isinstance(new, CategoricalField) or not isinstance(old, CategoricalField):
        return np.arange(new.size)  # numeric: the same bins
    where = {value: NUM_RESERVED + i for i, value in enumerate(old.vocabulary)}
    mapped = [where.get(value, -1) for value in new.vocabulary]
    return np.array([*range(NUM_RESERVED), *mapped], dtype=np.int64)
