"""Pictures of what a model learned: a 2-D map (PCA or t-SNE) of one field's latent vectors,
coloured by each value's observed click rate (InMobi's latent-vector interpretation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from app.features.encoder import FeatureEncoder
from app.features.spec import NUM_RESERVED, CategoricalField
from training.data import BadRowLog, DataError, DataSource
from training.dataset import encode_batch
from training.export import load_checkpoint
from training.layers import FeaturesEmbedding, FieldAwareEmbedding, field_offsets

logger = logging.getLogger(__name__)
Method = Literal["pca", "tsne"]


def field_vectors(model: torch.nn.Module, field_dims: tuple[int, ...], field: int) -> np.ndarray:
    """The value rows of ``field`` in the model's richest embedding table.

    Field-aware models give each value one vector per other field: the map uses them all,
    concatenated, since together they are what the model knows about the value.
    """
    tables = [
        # A field-aware row ends with the value's first-order weight: not a latent vector.
        m.embedding.weight[:, :-1] if isinstance(m, FieldAwareEmbedding) else m.embedding.weight
        for m in model.modules()
        if isinstance(m, FieldAwareEmbedding | FeaturesEmbedding)
    ]
    if not tables:
        raise DataError("this model has no latent vectors (LR): nothing to map")
    start = int(field_offsets(field_dims)[field])
    rows = tables[0][start + NUM_RESERVED : start + field_dims[field]]
    return rows.detach().numpy()


def value_rates(
    source: DataSource, encoder: FeatureEncoder, field: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Observed click rate and impressions of every value of ``field`` in ``source``,
    streamed batch by batch (malformed rows are left out)."""
    counts, clicks = np.zeros(size), np.zeros(size)
    for batch in source.batches(BadRowLog("skip")):
        indices = encode_batch(encoder, batch)[:, field]
        counts += np.bincount(indices, minlength=size)
        clicks += np.bincount(indices, weights=batch.labels, minlength=size)
    rates = np.divide(clicks, counts, out=np.full(size, np.nan), where=counts > 0)
    return rates[NUM_RESERVED:], counts[NUM_RESERVED:]


def project(vectors: np.ndarray, method: Method, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method == "pca" or len(vectors) < 5:
        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    perplexity = float(min(30, max(2, len(vectors) // 4)))
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
        vectors
    )


def plot_field(
    model_dir: Path,
    field_name: str,
    source: DataSource | None,
    out: Path,
    method: Method = "pca",
    max_values: int = 2000,
) -> dict[str, object]:
    """Draw the map of ``field_name`` into ``out``; returns a short summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, manifest = load_checkpoint(model_dir)
    spec = manifest.features
    if field_name not in spec.names:
        raise DataError(f"unknown field {field_name!r}; fields are {list(spec.names)}")
    field = spec.names.index(field_name)
    definition = spec.fields[field]
    vectors = field_vectors(model, spec.field_dims, field)[:max_values]
    if len(vectors) < 3:
        raise DataError(f"field {field_name!r} has only {len(vectors)} values: nothing to map")
    labels = (
        list(definition.vocabulary)
        if isinstance(definition, CategoricalField)
        else [f"bin {b}" for b in range(len(vectors))]
    )[: len(vectors)]
    if source is not None:
        rates, counts = value_rates(source, FeatureEncoder(spec), field, spec.field_dims[field])
        rates, counts = rates[: len(vectors)], counts[: len(vectors)]
    else:
        rates, counts = np.full(len(vectors), np.nan), np.ones(len(vectors))
    points = project(vectors, method)
    figure, axis = plt.subplots(figsize=(7, 5.5))
    seen = ~np.isnan(rates)
    axis.scatter(points[~seen, 0], points[~seen, 1], s=8, c="lightgrey", label="no rows")
    image = axis.scatter(
        points[seen, 0],
        points[seen, 1],
        c=rates[seen],
        cmap="viridis",
        s=8 + 40 * np.log1p(counts[seen]) / max(1.0, np.log1p(counts.max())),
    )
    figure.colorbar(image, ax=axis, label="observed click rate")
    for i in np.argsort(-counts)[:8]:
        axis.annotate(labels[i][:14], points[i], fontsize=7, alpha=0.8)
    axis.set_title(
        f"{manifest.model_type}: {method.upper()} of field {field_name!r} ({len(vectors)} values)"
    )
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    correlation = float("nan")
    if seen.sum() > 3:
        correlation = float(np.corrcoef(points[seen, 0], rates[seen])[0, 1])
    logger.info("wrote %s", out)
    return {
        "plot": str(out),
        "field": field_name,
        "values": len(vectors),
        "method": method,
        "corr_first_axis_vs_rate": correlation,
    }
