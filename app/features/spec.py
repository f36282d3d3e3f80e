"""The feature spec: which fields a model reads and how raw values become indices.

Index layout of every field (fixed, so artifacts from any version agree):

* ``0`` = missing (absent key, ``null`` or ``""``) -- learned like any other value;
* ``1`` = unseen (a value not in the vocabulary) -- holds the field average, filled at export;
* ``2..`` = vocabulary values, sorted by ``(-count, value)``, or numeric bins in order.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.features.errors import SpecError

FORMAT_VERSION: Literal[1] = 1
MISSING_INDEX = 0
UNSEEN_INDEX = 1
NUM_RESERVED = 2


class CategoricalField(BaseModel):
    """A field whose values are opaque tokens (ids, hashes, names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["categorical"] = "categorical"
    name: str = Field(min_length=1)
    min_count: int = Field(default=1, ge=1)
    vocabulary: tuple[str, ...]

    @field_validator("vocabulary")
    @classmethod
    def _unique_non_empty_tokens(cls, vocabulary: tuple[str, ...]) -> tuple[str, ...]:
        if "" in vocabulary:
            raise ValueError("the empty string means 'missing' and cannot be a vocabulary value")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary values must be unique")
        return vocabulary

    @property
    def size(self) -> int:
        """Rows this field owns in every embedding table (reserved rows included)."""
        return NUM_RESERVED + len(self.vocabulary)


class NumericField(BaseModel):
    """A numeric field, binned on training data and then treated as categorical.

    Bin ``b`` (index ``NUM_RESERVED + b``) holds values ``v`` with
    ``bin_edges[b-1] <= v < bin_edges[b]``; the first and last bins are open-ended.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["numeric"] = "numeric"
    name: str = Field(min_length=1)
    binning: Literal["quantile", "log"]
    bin_edges: tuple[float, ...]

    @field_validator("bin_edges")
    @classmethod
    def _strictly_increasing(cls, edges: tuple[float, ...]) -> tuple[float, ...]:
        if any(not b > a for a, b in itertools.pairwise(edges)):
            raise ValueError("bin_edges must be strictly increasing")
        return edges

    @property
    def size(self) -> int:
        """Rows this field owns in every embedding table (reserved rows included)."""
        return NUM_RESERVED + len(self.bin_edges) + 1


_M = TypeVar("_M", bound=BaseModel)

FieldSpec = Annotated[CategoricalField | NumericField, Field(discriminator="kind")]


class FeatureSpec(BaseModel):
    """Ordered fields; the order here is the column order of every index array."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    fields: tuple[FieldSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureSpec:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field names: {duplicates}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def field_dims(self) -> tuple[int, ...]:
        """Rows per field, i.e. the sizes the model's embedding tables are built from."""
        return tuple(f.size for f in self.fields)


def load_json_model(model: type[_M], path: Path) -> _M:
    """Read and validate a JSON file, turning every failure into one ``SpecError``."""
    try:
        text = path.read_text()
    except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
        raise SpecError(
            f"{path!s:.200}: cannot read ({getattr(exc, 'strerror', None) or exc})"
        ) from exc
    try:
        return model.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON ({exc})") from exc
    except ValidationError as exc:
        raise SpecError(f"{path}: {exc}") from exc
