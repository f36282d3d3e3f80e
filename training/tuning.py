"""Hyper-parameters for small and large data, and a search that picks them on validation.

``size_defaults`` is what ``python -m training train`` uses when a flag is not given; its
values come from runs of ``tune`` on the validation splits of the public slices and of the
synthetic data (docs/QUALITY.md lists every trial). ``tune`` never looks at the test rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.dataset import Prepared
from training.evaluation import headline
from training.models import DEFAULTS, ModelName
from training.train import TrainConfig, evaluate, fit, new_model

logger = logging.getLogger(__name__)

SMALL_DATA_ROWS = 100_000
MAX_BATCH = 1024
FIELD_AWARE = frozenset({"ffm", "deepffm", "nffm"})

# The knobs ``tune`` searches, in the order it searches them.
GRID: dict[str, tuple[Any, ...]] = {
    "min_count": (1, 2, 5),
    "embed_dim": (4, 8, 16),
    "l2": (1e-5, 1e-4, 1e-3),
}


def size_defaults(name: ModelName, rows: int) -> dict[str, Any]:
    """Training settings for a file of ``rows`` rows (TrainConfig fields; ``embed_dim``
    belongs to the model).

    The batch size is the power of two nearest rows/50, from 256 to 1024: ~40 optimiser
    steps an epoch on mid-sized files (a 5k-row file still gets steps, not one batch), and
    no more than 1024 above 50k rows. With sparse updates a step's fixed cost is small, and
    measured on a 39-field NFFM (k=4) 1024 ran at 17-19k samples/s against 9-15k at 4096,
    whose 100 MB activations fall out of the caches; on the 200k-row default data it also
    reached NFFM's best validation AUC in fewer epochs. Below ``SMALL_DATA_ROWS``: started
    from the published settings, the search on Criteo's and Avazu's validation rows chose
    min-count 5 for 10 of the 14 models, and k=4 or 8 for 9 of the 12 with an embedding
    (field-aware tables hold a vector per field, so they get the smaller one); L2 showed no
    consistent direction, so 1e-4 stays. Most gaps were under 0.005 AUC, below the noise of
    ~700 validation rows: these are the consistent direction, not a sharp optimum. Large
    files keep DESIGN.md's published settings, which the 1M-row search in docs/QUALITY.md
    checks for NFFM.
    """
    batch_size = 2 ** round(math.log2(max(rows, 1) / 50))
    settings: dict[str, Any] = {"batch_size": int(min(MAX_BATCH, max(256, batch_size)))}
    if rows < SMALL_DATA_ROWS:
        settings["min_count"] = 5
        if name != "lr":
            cap = 4 if name in FIELD_AWARE else 8
            settings["embed_dim"] = min(DEFAULTS[name].embed_dim, cap)
    return settings


@dataclass(frozen=True)
class Trial:
    """One configuration tried: its knob values and its validation score (AUC, or minus the
    weighted RMSE for regression)."""

    settings: dict[str, Any]
    val_score: float
    seconds: float


def with_setting(config: TrainConfig, knob: str, value: Any) -> TrainConfig:
    if knob == "embed_dim":
        model = config.model.model_copy(update={"embed_dim": value})
        return config.model_copy(update={"model": model})
    return config.model_copy(update={knob: value})


def settings_of(config: TrainConfig, grid: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    return {
        knob: config.model.embed_dim if knob == "embed_dim" else getattr(config, knob)
        for knob in grid
    }


def tune(
    prepared_for: Callable[[TrainConfig], Prepared],
    start: TrainConfig,
    grid: dict[str, tuple[Any, ...]] | None = None,
) -> tuple[TrainConfig, list[Trial]]:
    """Coordinate search on the validation score: each knob in turn over its grid, the others held
    at the best values so far. Costs at most ``sum(len(values))`` fits instead of the
    grid's product; LR has no embedding, so its ``embed_dim`` is never searched.

    Args:
        prepared_for: the shards for a configuration (:func:`training.dataset.prepare`:
            configurations that differ only in the model share one cached preparation).

    Returns the best configuration and every trial, in the order run.
    """
    grid = dict(GRID if grid is None else grid)
    if start.model.name == "lr":
        grid.pop("embed_dim", None)
    trials: dict[tuple[Any, ...], Trial] = {}

    def score(config: TrainConfig) -> float:
        key = tuple(settings_of(config, grid).values())
        if key not in trials:
            prepared = prepared_for(config)
            started = time.perf_counter()
            model = new_model(prepared, config)
            fit(model, prepared, config, progress=False)
            value = headline(evaluate(model, prepared.val, config.task))
            trials[key] = Trial(settings_of(config, grid), value, time.perf_counter() - started)
            logger.info("%s %s: validation %.4f", config.model.name, trials[key].settings, value)
        return trials[key].val_score

    best = start
    for knob, values in grid.items():
        candidates = [with_setting(best, knob, value) for value in values]
        best = max([best, *candidates], key=score)
    return best, list(trials.values())
