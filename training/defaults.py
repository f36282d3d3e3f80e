"""Training settings that follow the data, used when a flag or a config file does not say.

The file's size decides the batch, the embedding size of small files, L2 and the epoch cap
(``size_defaults``); each categorical field's min-count follows its own value counts
(``training.fit_spec.LONG_TAIL_MEAN_COUNT``). The rules come from ``ctrserve tune`` runs on
the validation rows of every data set the project has; docs/QUALITY.md lists the defaults
beside the tuned settings and both test scores.
"""

from __future__ import annotations

import math
from typing import Any

from training.models import DEFAULTS, ModelName

SMALL_DATA_ROWS = 100_000
MAX_BATCH = 1024
FIELD_AWARE = frozenset({"ffm", "deepffm", "nffm"})
# The epoch cap covers about this many samples seen (patience stops most fits earlier): 20
# epochs up to 2M rows, 4 at 10M, 1 past 40M, as CTR models of that size are trained.
EPOCH_SAMPLES = 40_000_000
MAX_EPOCHS = 20
# Below SMALL_DATA_ROWS the field-aware factorization models take stronger L2: the search
# on Criteo's and Avazu's validation rows chose 1e-3 over 1e-4 and 1e-5 for FFM and NFFM in
# all four runs (docs/QUALITY.md of 2026-11-24); the other models showed no direction.
SMALL_DATA_L2 = 1e-3
STRONG_L2_MODELS = frozenset({"ffm", "nffm"})


def size_defaults(name: ModelName, rows: int) -> dict[str, Any]:
    """Training settings for a file of ``rows`` rows (TrainConfig fields; ``embed_dim``
    belongs to the model).

    The batch size is the power of two nearest rows/50, from 256 to 1024: ~40 optimiser
    steps an epoch on mid-sized files (a 5k-row file still gets steps, not one batch), and
    no more than 1024 above 50k rows. With sparse updates a step's fixed cost is small, and
    measured on a 39-field NFFM (k=4) 1024 ran at 17-19k samples/s against 9-15k at 4096,
    whose 100 MB activations fall out of the caches. Below ``SMALL_DATA_ROWS`` the tables
    are small (k=4 for field-aware models, which hold a vector per field; k=8 for the
    others) and FFM and NFFM take L2 ``SMALL_DATA_L2``. Large files keep DESIGN.md's
    published settings, and an epoch cap of ``EPOCH_SAMPLES`` samples.
    """
    rows = max(rows, 1)
    batch_size = 2 ** round(math.log2(rows / 50))
    settings: dict[str, Any] = {
        "batch_size": int(min(MAX_BATCH, max(256, batch_size))),
        "epochs": int(min(MAX_EPOCHS, max(1, math.ceil(EPOCH_SAMPLES / rows)))),
    }
    if rows < SMALL_DATA_ROWS:
        if name in STRONG_L2_MODELS:
            settings["l2"] = SMALL_DATA_L2
        if name != "lr":
            cap = 4 if name in FIELD_AWARE else 8
            settings["embed_dim"] = min(DEFAULTS[name].embed_dim, cap)
    return settings
