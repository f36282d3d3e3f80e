"""The quality report: docs/QUALITY.md from one command (make quality).

Criteo and Avazu slices from ../shared/data (or $CTR_DATA_DIR) and 1M synthetic rows: the
seven ladder models, LightGBM and DeepCTR-Torch's DeepFM and ONN on one seeded split each,
AUC with bootstrap 95% intervals; the regression task on aggregated Avazu rows; latent-vector
maps. Data files are read in place and never copied into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.compare import Entry, compare, markdown
from support.reports import machine
from support.servers import ROOT
from training import synth
from training.data import ColumnRoles, DataSource, open_source
from training.dataset import CACHE_ENV
from training.models import MODELS
from training.tuning import GRID

logger = logging.getLogger("quality")
DATA = Path(os.environ.get("CTR_DATA_DIR", ROOT.parent / "shared" / "data"))
DOCS = ROOT / "docs"
OUT_MODELS = ROOT / "models" / "quality"
# One split of a 6k-row slice leaves ~640 test rows (AUC standard error ~0.02): the real
# slices are also retrained on more seeded splits, to show how much of a ranking is luck.
SMALL_DATA_SPLITS = 5
# At 1M rows a fit takes minutes: only NFFM, the production model, is searched, and every
# value is seen often enough that min-count does not matter; k goes up instead of down.
LARGE_GRID: dict[str, tuple[Any, ...]] = {"embed_dim": (8, 16, 32), "l2": (1e-5, 1e-4, 1e-3)}
# The Criteo-shaped ladder: 3M rows, one epoch per model (as Criteo results are usually
# reported; a 2.4M-row epoch of NFFM at its default k=16 takes ~15 minutes here), each field
# capped as in docs/TRAINING.md.
CRITEO_SHAPED_ROWS = 3_000_000
CRITEO_SHAPED_EPOCHS = 1
CRITEO_SHAPED_VOCAB = 50_000


def md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def auc_plot(name: str, entries: list[Entry], oracle: float | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(entries, key=lambda e: e.auc)
    colours = {"ctrserve": "tab:blue", "LightGBM": "tab:green", "DeepCTR-Torch": "tab:orange"}
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(ordered) + 1.5))
    axis.barh(
        [e.name for e in ordered],
        [e.auc for e in ordered],
        xerr=[[e.auc - e.auc_low for e in ordered], [e.auc_high - e.auc for e in ordered]],
        color=[colours[e.family] for e in ordered],
        capsize=3,
    )
    if oracle is not None:
        axis.axvline(oracle, color="black", linestyle="--", label="oracle (p_true)")
        axis.legend(loc="lower right")
    low = min(e.auc_low for e in ordered)
    axis.set_xlim(max(0.5, low - 0.02), min(1.0, max(e.auc_high for e in ordered) + 0.02))
    axis.set_xlabel("test AUC with bootstrap 95% interval")
    axis.set_title(f"{name}: the ladder vs LightGBM vs DeepCTR-Torch")
    figure.tight_layout()
    out = DOCS / f"quality_{name}_auc.png"
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def dataset_section(
    name: str,
    data: DataSource,
    source: str,
    tune_models: tuple[str, ...],
    grid: dict[str, tuple[Any, ...]] | None = None,
    repeats: int = 1,
) -> tuple[str, dict[str, Any]]:
    """The section's Markdown, and its raw results for docs/quality.json."""
    started = time.perf_counter()
    entries, setup = compare(
        data,
        seed=0,
        tune_models=tune_models,
        grid=grid,
        export_dir=OUT_MODELS / name,
        repeats=repeats,
    )
    oracle_auc = setup["oracle_auc"]
    plot = auc_plot(name, entries, oracle_auc)
    searched = ", ".join(f"{knob} {list(values)}" for knob, values in (grid or GRID).items())
    tuned = ", ".join(tune_models) or "none"
    text = (
        f"## {name}\n\n{source}. {setup['rows']:,} rows, {setup['fields']} fields; seeded "
        f"random split 80/10/10 (seed {setup['seed']}): {setup['train']:,} train, "
        f"{setup['validation']:,} validation, {setup['test']:,} test rows (test click rate "
        f"{setup['test_rate']:.1%}). Batch size {setup['batch_size']}. Searched on validation "
        f"AUC for {tuned}: {searched} (coordinate search, `training/tuning.py`); the other "
        f"models take the size defaults. Settings used are in each row's note. "
        f"Ran in {time.perf_counter() - started:.0f} s.\n\n"
        f"{verdict(entries)}\n\n"
        f"{markdown(entries, oracle_auc)}\n\n![{name} AUC]({plot.name})\n\n"
        f"{trials_table(setup['trials'])}"
    )
    record = {"setup": setup, "entries": [asdict(e) for e in entries], "oracle_auc": oracle_auc}
    return text, record


def verdict(entries: list[Entry], ours: str = "nffm") -> str:
    """Where NFFM stands, in words, from the numbers: rank, the leader, the baselines."""
    ranked = sorted(entries, key=lambda e: -e.auc)
    nffm = next(e for e in ranked if e.name == ours)
    leader = ranked[0]
    if leader is nffm:
        standing = f"**NFFM is first** of {len(ranked)} ({nffm.auc:.4f})"
    else:
        inside = nffm.auc_high >= leader.auc
        standing = (
            f"**NFFM is {ranked.index(nffm) + 1} of {len(ranked)}**: {nffm.auc:.4f} against "
            f"{leader.name}'s {leader.auc:.4f}, "
            + ("within" if inside else "**outside**")
            + " NFFM's 95% interval"
        )
    rivals = []
    for family in ("LightGBM", "DeepCTR-Torch"):
        best = max((e for e in entries if e.family == family), key=lambda e: e.auc, default=None)
        if best is not None:
            rivals.append(f"{best.name} {nffm.auc - best.auc:+.4f}")
    text = standing + ("; NFFM minus " + ", ".join(rivals) if rivals else "") + "."
    if len(nffm.split_aucs) > 1:
        means = sorted(entries, key=lambda e: -statistics.mean(e.split_aucs))
        top = means[0]
        text += (
            f" Over {len(nffm.split_aucs)} seeded splits NFFM's mean test AUC ranks "
            f"{means.index(nffm) + 1} of {len(means)} ({statistics.mean(nffm.split_aucs):.4f}"
            + (
                ")."
                if top is nffm
                else f"; first: {top.name}, {statistics.mean(top.split_aucs):.4f})."
            )
        )
    return text


def trials_table(trials: dict[str, list[dict[str, Any]]]) -> str:
    """Every configuration the search tried, folded away under a details tag."""
    if not trials:
        return ""
    lines = [
        "<details><summary>Validation trials</summary>",
        "",
        "| model | min-count | k | L2 | validation AUC | fit s |",
        "|---|---|---|---|---|---|",
    ]
    for model, runs in trials.items():
        best = max(run["val_score"] for run in runs)
        for run in runs:
            knobs = run["settings"]
            mark = " **best**" if run["val_score"] == best else ""
            lines.append(
                f"| {model} | {knobs.get('min_count', '')} | {knobs.get('embed_dim', '')} | "
                f"{knobs.get('l2', '')} | {run['val_score']:.4f}{mark} | {run['seconds']:.1f} |"
            )
    return "\n".join([*lines, "", "</details>", ""])


def speed_section(data: DataSource) -> str:
    """Our DeepFM vs DeepCTR-Torch's, one epoch each on the same rows and settings, timing
    the training loop alone (no validation, no metrics) so the loops are compared fairly."""
    from benchmarks.compare import train_speed
    from training.config import build_config
    from training.dataset import prepare

    config = build_config("deepfm", data.estimated_rows())
    prepared = prepare(data, config)
    ours, theirs = train_speed(prepared, config)
    return (
        "## Training speed: DeepFM\n\n"
        f"One epoch over the {len(prepared.train):,} synthetic training rows, same "
        f"hyper-parameters (k={config.model.embed_dim}, 400-400-400, dropout 0.5, Adam lr "
        f"{config.learning_rate}, batch {config.batch_size}, L2 on embeddings), training loop "
        f"only: ctrserve {ours:,.0f} samples/s vs DeepCTR-Torch {theirs:,.0f} samples/s: "
        f"**{ours / theirs:.2f}x** (goal 2x).\n"
    )


def regression_section(avazu: Path) -> str:
    """InMobi's setting on real rows: predict a combination's click rate, weighted RMSE."""
    from benchmarks.compare import settings_note
    from training.config import build_config
    from training.dataset import prepare
    from training.evaluation import regression_metrics
    from training.train import fit, new_model, predict
    from training.tuning import tune

    keys = ["site_id", "app_id", "banner_pos", "device_type", "device_conn_type", "C1"]
    raw = pd.read_csv(avazu, dtype=str)
    raw["click"] = raw["click"].astype(int)
    grouped = raw.groupby(keys).agg(impressions=("click", "size"), clicks=("click", "sum"))
    grouped = grouped.reset_index()
    grouped["rate"] = grouped["clicks"] / grouped["impressions"]
    grouped["weight"] = grouped["impressions"] / grouped["impressions"].sum()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "agg.csv"
        grouped.to_csv(path, index=False)
        data = open_source(
            path,
            roles=ColumnRoles(
                label="rate",
                weight="weight",
                categorical=tuple(keys),
                ignore=("impressions", "clicks"),
            ),
            task="regression",
        )
        for name in ("lr", "fm", "nffm"):
            # ~580 training rows: batches of 64, and the knobs searched on validation wRMSE.
            start = build_config(name, len(grouped), flags={"task": "regression", "batch_size": 64})
            config, _ = tune(lambda trial: prepare(data, trial), start)
            prepared = prepare(data, config)
            model = new_model(prepared, config)
            fit(model, prepared, config, progress=False)
            test = prepared.test.load()
            metrics = regression_metrics(
                test.labels, predict(model, test.indices, "regression"), test.weights
            )
            rows.append((name, settings_note(config), metrics))
        lightgbm = _lightgbm_regression(prepared)
        rows.append(("LightGBM", "15 leaves, lr 0.05, early-stopped", lightgbm))
    lines = [
        "## Regression: click rate of feature combinations (Avazu)",
        "",
        f"Avazu rows aggregated by {', '.join(keys)}: {len(grouped):,} combinations; label = "
        "observed click rate, weight = the combination's share of impressions; loss and metric "
        "= weighted RMSE (InMobi's setting). Same seeded 80/10/10 split for every model; "
        "min-count, k and L2 searched on validation weighted RMSE.",
        "",
        "| model | test weighted RMSE | test RMSE | settings |",
        "|---|---|---|---|",
        *[f"| {n} | {m['weighted_rmse']:.4f} | {m['rmse']:.4f} | {k} |" for n, k, m in rows],
    ]
    return "\n".join(lines) + "\n"


def _lightgbm_regression(prepared: object) -> dict[str, float]:
    import lightgbm as lgb

    from training.evaluation import regression_metrics

    train, val, test = (
        split.load()
        for split in (prepared.train, prepared.val, prepared.test)  # type: ignore[attr-defined]
    )
    categorical = list(range(train.indices.shape[1]))
    booster = lgb.train(
        {
            "objective": "regression",
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_data_in_leaf": 5,
            "verbose": -1,
            "seed": 0,
            "deterministic": True,
        },
        lgb.Dataset(
            train.indices, train.labels, weight=train.weights, categorical_feature=categorical
        ),
        num_boost_round=2000,
        valid_sets=[
            lgb.Dataset(
                val.indices, val.labels, weight=val.weights, categorical_feature=categorical
            )
        ],
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )
    return regression_metrics(test.labels, booster.predict(test.indices), test.weights)


def criteo_shaped_section(rows: int, epochs: int) -> str:
    """The ladder on a Criteo-shaped synthetic file (39 fields, up to 10^6 values a field),
    with the oracle: quality at scale, through the real CLI, every model on one set of
    shards."""
    with tempfile.TemporaryDirectory(prefix="ctrserve-criteo-shaped-") as scratch:
        data, report = Path(scratch) / "criteo.tsv", Path(scratch) / "ladder.md"
        synth.write(data, rows, seed=0, layout="criteo")
        started = time.perf_counter()
        command = [
            sys.executable, "-m", "training", "ladder", "--data", str(data), "--epochs",
            str(epochs), "--max-vocab", str(CRITEO_SHAPED_VOCAB), "--no-progress",
            "--report", str(report),
        ]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        table = report.read_text().split("\n\n", 1)[1]
    return (
        f"## Criteo-shaped synthetic data at {rows:,} rows\n\n"
        f"`python -m training synth --layout criteo --rows {rows} --seed 0`: 13 integer count "
        "fields and 26 categorical fields with Criteo Kaggle's cardinalities capped at 10^6, "
        "Zipf-distributed values, missing values, 12 planted field-aware pairs and a "
        "non-linearity, and the true probability of every row. `python -m training ladder "
        f"--epochs {epochs} --max-vocab {CRITEO_SHAPED_VOCAB:,}` (each field keeps its "
        f"{CRITEO_SHAPED_VOCAB:,} most frequent values; the rest share the unseen row), "
        f"size defaults otherwise; seeded hash split 80/10/10. Ran in "
        f"{time.perf_counter() - started:.0f} s.\n\n{table}\n"
    )


def inspect_section(pictures: list[tuple[str, str, Path]]) -> str:
    from training.inspect_vectors import plot_field

    lines = ["## What the latent vectors show", ""]
    for dataset, field, data in pictures:
        model_dir = OUT_MODELS / dataset / "nffm"
        out = DOCS / f"latent_{dataset}_{field}.png"
        fmt = "criteo" if dataset == "criteo" else None
        roles = ColumnRoles(label="click") if dataset == "avazu" else None
        source = open_source(data, fmt, roles) if data.is_file() else None
        summary = plot_field(model_dir, field, source, out, "pca")
        lines.append(
            f"- {dataset}, field `{field}` ({summary['values']} values): PCA of NFFM's "
            f"field-aware vectors, coloured by observed click rate; correlation of the first "
            f"axis with the click rate {summary['corr_first_axis_vs_rate']:+.2f}.\n\n"
            f"  ![{dataset} {field}]({out.name})"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000)
    parser.add_argument("--criteo-shaped-rows", type=int, default=CRITEO_SHAPED_ROWS)
    parser.add_argument("--out", type=Path, default=DOCS / "QUALITY.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx", "app"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    DOCS.mkdir(exist_ok=True)
    # Shards of the generated and public files live as long as this run, not in the cache.
    shards = tempfile.TemporaryDirectory(prefix="ctrserve-shards-")
    os.environ[CACHE_ENV] = shards.name
    sections: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    criteo, avazu = DATA / "criteo" / "criteo_train.txt", DATA / "avazu" / "train.csv"
    files = []
    if criteo.is_file():
        text, results["criteo"] = dataset_section(
            "criteo",
            open_source(criteo, "criteo"),
            f"`{criteo.name}` (md5 {md5(criteo)})",
            tuple(MODELS),
            repeats=SMALL_DATA_SPLITS,
        )
        sections.append(text)
        files.append(criteo)
    if avazu.is_file():
        data = open_source(avazu, roles=ColumnRoles(label="click", ignore=("id",)))
        source = f"`{avazu.name}` (md5 {md5(avazu)})"
        text, results["avazu"] = dataset_section(
            "avazu", data, source, tuple(MODELS), repeats=SMALL_DATA_SPLITS
        )
        sections.append(text)
        files.append(avazu)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "synth.csv"
        synth.write(path, args.synthetic_rows, seed=0)
        data = open_source(path)
        text, results["synthetic"] = dataset_section(
            "synthetic",
            data,
            f"`python -m training synth --rows {args.synthetic_rows} --seed 0` (md5 {md5(path)})",
            ("nffm",),
            LARGE_GRID,
        )
        sections.append(text)
        speed = speed_section(data)
        if avazu.is_file():
            sections.append(regression_section(avazu))
        pictures = [("synthetic", "c0", path)]
        if avazu.is_file():
            pictures.insert(0, ("avazu", "site_id", avazu))
        if criteo.is_file():
            pictures.insert(0, ("criteo", "C6", criteo))
        sections.append(inspect_section(pictures))
    sections.append(criteo_shaped_section(args.criteo_shaped_rows, CRITEO_SHAPED_EPOCHS))
    packages = ", ".join(
        f"{p} {version(p)}"
        for p in ("torch", "onnxruntime", "lightgbm", "deepctr-torch", "scikit-learn")
    )
    head = [
        "# ctrserve quality",
        "",
        f"Generated by `make quality` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: "
        f"{machine()}. {packages}. Seeds: split 0, models 0, bootstrap 0 "
        f"({1000} resamples of the test rows).",
        "",
        "Data: "
        + ("; ".join(f"`{f.name}` md5 {md5(f)}" for f in files) or "no real slices found")
        + " (from `../shared/data`, or `$CTR_DATA_DIR`).",
        "",
        "How settings were chosen: only on each data set's validation rows. Every ladder model "
        "starts from the size defaults (`training/tuning.py`) and on the real slices its "
        "min-count, embedding size k and L2 are searched one knob at a time (the trials are "
        "listed under each table); DeepCTR-Torch's DeepFM and ONN train with the settings our "
        "deepfm and nffm won with; LightGBM picks native categoricals or frequency encoding and "
        "15, 63 or 255 leaves, early-stopped on validation. At 1M rows only NFFM is searched "
        "(k and L2). The test rows are scored once, at the end. On the real slices every contender "
        f"is then retrained, with the same settings, on {SMALL_DATA_SPLITS - 1} more seeded "
        "splits: the mean ± sd column shows how much of a ranking is one split's luck. Raw "
        "numbers: quality.json.",
        "",
    ]
    args.out.write_text("\n".join(head) + "\n" + speed + "\n" + "\n".join(sections))
    args.out.with_name("quality.json").write_text(json.dumps(results, indent=1) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
