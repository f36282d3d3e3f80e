"""The quality report: docs/QUALITY.md from one command (make quality).

Criteo and Avazu slices from ../shared/data (or $CTR_DATA_DIR) and the README's synthetic
data: the seven ladder models with their defaults and tuned, LightGBM and XGBoost tuned with
the same budget, DeepCTR-Torch's DeepFM and ONN, on one seeded split each, AUC with its
bootstrap standard error; the regression task on aggregated Avazu rows; latent-vector maps;
the ladder on Criteo-shaped synthetic rows. Each section is one run on one data set, kept in
docs/quality.json with its date: ``--sections`` reruns some and rewrites the page from all of
them. Data files are read in place and never copied into the repository.
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

import numpy as np
import pandas as pd

from benchmarks.compare import TUNED, Entry, compare, markdown
from support.reports import machine
from support.servers import ROOT
from training import synth
from training.data import ColumnRoles, DataFormat, DataSource, open_source
from training.dataset import CACHE_ENV
from training.models import MODELS
from training.tuning import Budget, Trial, trials_markdown

logger = logging.getLogger("quality")
DATA = Path(os.environ.get("CTR_DATA_DIR", ROOT.parent / "shared" / "data"))
DOCS = ROOT / "docs"
OUT_MODELS = ROOT / "models" / "quality"
RESULTS = DOCS / "quality.json"
# One split of a 6k-row slice leaves ~650 test rows (AUC standard error ~0.02): the real
# slices are also retrained on more seeded splits, to show how much of a ranking is luck.
SMALL_DATA_SPLITS = 5
# Trials per tuned contender: every ladder model and both GBDTs get the same number.
REAL_TRIALS = 20
# The README's data: 200k rows; a NFFM fit takes ~1 minute there, so only NFFM is tuned
# beside the GBDTs, with fewer trials.
SYNTHETIC_ROWS = 200_000
SYNTHETIC_TRIALS = 10
REGRESSION_TRIALS = 10
# The Criteo-shaped ladder: 3M rows, one epoch per model (as Criteo results are usually
# reported; a 2.4M-row epoch of NFFM at its default k=16 takes ~15 minutes here), each field
# capped as in docs/TRAINING.md.
CRITEO_SHAPED_ROWS = 3_000_000
CRITEO_SHAPED_EPOCHS = 1
CRITEO_SHAPED_VOCAB = 50_000
SECTIONS = ("speed", "criteo", "avazu", "synthetic", "regression", "latent", "criteo-shaped")
CRITEO, AVAZU = DATA / "criteo" / "criteo_train.txt", DATA / "avazu" / "train.csv"


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
    colours = {
        "ctrserve": "tab:blue",
        "LightGBM": "tab:green",
        "XGBoost": "tab:olive",
        "DeepCTR-Torch": "tab:orange",
    }
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(ordered) + 1.5))
    axis.barh(
        [e.name for e in ordered],
        [e.auc for e in ordered],
        xerr=[e.auc_se for e in ordered],
        color=[colours[e.family] for e in ordered],
        capsize=3,
    )
    if oracle is not None:
        axis.axvline(oracle, color="black", linestyle="--", label="oracle (p_true)")
        axis.legend(loc="lower right")
    low = min(e.auc - 2 * e.auc_se for e in ordered)
    high = max(e.auc + 2 * e.auc_se for e in ordered)
    axis.set_xlim(max(0.5, low - 0.01), min(1.0, max(high, oracle or 0) + 0.01))
    axis.set_xlabel("test AUC ± bootstrap standard error")
    axis.set_title(f"{name}: the ladder vs GBDTs vs DeepCTR-Torch")
    figure.tight_layout()
    out = DOCS / f"quality_{name}_auc.png"
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def dataset_section(
    name: str,
    data: DataSource,
    tune_models: tuple[str, ...],
    trials: int,
    repeats: int = 1,
) -> dict[str, Any]:
    """One data set's comparison, as raw results for docs/quality.json."""
    entries, setup = compare(
        data,
        seed=0,
        tune_models=tune_models,
        budget=Budget(trials),
        export_dir=OUT_MODELS / name,
        repeats=repeats,
    )
    entries_raw = [asdict(e) for e in entries]
    return {"setup": setup, "entries": entries_raw, "oracle_auc": setup["oracle_auc"]}


def _source_text(name: str, rows: int) -> str:
    if name == "synthetic":
        return f"The README's data: `ctrserve synth --rows {rows} --seed 0`"
    path = CRITEO if name == "criteo" else AVAZU
    return f"`{path.name}` (md5 {md5(path)})" if path.is_file() else f"`{path.name}`"


def dataset_text(name: str, record: dict[str, Any]) -> str:
    """A data set's section from its raw results (so the page can be written again)."""
    setup, oracle_auc = record["setup"], record["oracle_auc"]
    entries = [Entry(**{**e, "split_aucs": tuple(e["split_aucs"])}) for e in record["entries"]]
    plot = auc_plot(name, entries, oracle_auc)
    tuned = ", ".join(e.name.removesuffix(TUNED) for e in entries if e.name.endswith(TUNED)
                      and e.family == "ctrserve")  # fmt: skip
    trials = setup["budget"]["trials"]
    return (
        f"## {name}\n\n{_source_text(name, setup['rows'])}. {setup['rows']:,} rows, "
        f"{setup['fields']} fields; seeded random split 80/10/10 (seed {setup['seed']}): "
        f"{setup['train']:,} train, {setup['validation']:,} validation, {setup['test']:,} "
        f"test rows (test click rate {setup['test_rate']:.1%}). Every ladder model with its "
        f"defaults (`defaults:` in its note); {tuned} also tuned (`tuned:`), and LightGBM "
        f"and XGBoost tuned, each with the same budget of {trials} trials on the validation "
        f"rows. Settings are in each row's note.\n\n"
        f"{verdict(entries, setup['differences'])}\n\n"
        f"{markdown(entries, oracle_auc)}\n\n![{name} AUC]({plot.name})\n\n"
        f"{trials_details(setup['trials'])}"
    )


def verdict(entries: list[Entry], differences: dict[str, list[float]]) -> str:
    """Where NFFM stands against the tuned GBDTs and the rest, in words, from the numbers."""
    by_name = {e.name: e for e in entries}
    ours = by_name.get("nffm" + TUNED) or by_name["nffm"]

    def rank(entry: Entry) -> int:  # ties share a rank
        return 1 + sum(e.auc > entry.auc for e in entries)

    parts = [f"**{ours.name} is {rank(ours)} of {len(entries)}** ({ours.auc:.4f})"]
    if ours.name != "nffm":
        defaults = by_name["nffm"]
        parts[0] += f", nffm with its defaults {rank(defaults)} ({defaults.auc:.4f})"
    for pair, (gap, se) in differences.items():
        rival = pair.split(" - ")[1]
        if abs(gap) <= se:
            call = "within one standard error: no winner"
        else:
            call = f"{'NFFM' if gap > 0 else rival} ahead by more than one standard error"
        parts.append(f"minus {rival}: {gap:+.4f} ± {se:.4f} (paired bootstrap; {call})")
    text = "; ".join(parts) + "."
    lifted = [
        f"{e.name.removesuffix(TUNED)} {e.auc - base.auc:+.4f}"
        for e in entries
        if e.name.endswith(TUNED) and e.family == "ctrserve"
        for base in entries
        if base.name == e.name.removesuffix(TUNED)
    ]
    if lifted:
        text += " Tuned minus defaults on test: " + ", ".join(lifted) + "."
    if len(ours.split_aucs) > 1:
        means = sorted(entries, key=lambda e: -statistics.mean(e.split_aucs))
        top = means[0]
        mean = statistics.mean(ours.split_aucs)
        text += (
            f" Over {len(ours.split_aucs)} seeded splits {ours.name}'s mean test AUC ranks "
            f"{1 + sum(statistics.mean(e.split_aucs) > mean for e in entries)} of "
            f"{len(means)} ({mean:.4f}"
            + (
                ")."
                if top is ours
                else f"; first: {top.name}, {statistics.mean(top.split_aucs):.4f})."
            )
        )
    return text


def trials_details(trials: dict[str, list[dict[str, Any]]]) -> str:
    """Every trial of every search, folded away under a details tag."""
    if not trials:
        return ""
    table = trials_markdown({name: [Trial(**run) for run in runs] for name, runs in trials.items()})
    return f"<details><summary>Validation trials</summary>\n\n{table}\n</details>\n"


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
            config, _ = tune(lambda trial: prepare(data, trial), start, Budget(REGRESSION_TRIALS))
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
        f"each searched on validation weighted RMSE ({REGRESSION_TRIALS} trials of "
        "`ctrserve tune`'s search).",
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
    predicted = np.asarray(booster.predict(test.indices))
    return regression_metrics(test.labels, predicted, test.weights)


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
        fmt: DataFormat | None = "criteo" if dataset == "criteo" else None
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


def _synthetic(scratch: Path, rows: int) -> Path:
    path = scratch / f"synth-{rows}.csv"
    if not path.is_file():
        synth.write(path, rows, seed=0)
    return path


def run_section(
    name: str, args: argparse.Namespace, scratch: Path
) -> tuple[str, dict[str, Any] | None]:
    """One section's Markdown, and a dataset section's raw results."""
    real = {"criteo": CRITEO, "avazu": AVAZU}
    if name in real:
        path = real[name]
        if not path.is_file():
            return f"## {name}\n\nNot run: `{path.name}` is not in `$CTR_DATA_DIR`.\n", None
        data = (
            open_source(path, "criteo")
            if name == "criteo"
            else open_source(path, roles=ColumnRoles(label="click", ignore=("id",)))
        )
        record = dataset_section(name, data, tuple(MODELS), args.trials, repeats=SMALL_DATA_SPLITS)
        return dataset_text(name, record), record
    if name == "synthetic":
        path = _synthetic(scratch, args.synthetic_rows)
        record = dataset_section("synthetic", open_source(path), ("nffm",), args.synthetic_trials)
        return dataset_text(name, record), record
    if name == "speed":
        return speed_section(open_source(_synthetic(scratch, args.synthetic_rows))), None
    if name == "regression":
        if not AVAZU.is_file():
            return "## Regression\n\nNot run: `train.csv` is not in `$CTR_DATA_DIR`.\n", None
        return regression_section(AVAZU), None
    if name == "latent":
        pictures = [("synthetic", "c0", _synthetic(scratch, args.synthetic_rows))]
        for dataset, field, path in (("avazu", "site_id", AVAZU), ("criteo", "C6", CRITEO)):
            if path.is_file():
                pictures.insert(0, (dataset, field, path))
        return inspect_section(pictures), None
    return criteo_shaped_section(args.criteo_shaped_rows, CRITEO_SHAPED_EPOCHS), None


def page(sections: dict[str, dict[str, Any]]) -> str:
    packages = ", ".join(
        f"{p} {version(p)}"
        for p in (
            "torch", "onnxruntime", "optuna", "lightgbm", "xgboost-cpu", "deepctr-torch",
            "scikit-learn",
        )
    )  # fmt: skip
    files = [f for f in (CRITEO, AVAZU) if f.is_file()]
    head = [
        "# ctrserve quality",
        "",
        f"Written by `make quality` (`python -m benchmarks.quality`). Machine: {machine()}. "
        f"{packages}. Seeds: split 0, models 0, bootstrap 0 (1,000 resamples of the test "
        "rows). Each section is one run on one data set; its date is under its heading.",
        "",
        "Data: "
        + ("; ".join(f"`{f.name}` md5 {md5(f)}" for f in files) or "no real slices found")
        + " (from `../shared/data`, or `$CTR_DATA_DIR`).",
        "",
        "How settings were chosen, only on each data set's validation rows: every ladder model "
        "is listed with its defaults, which follow the data (`training/defaults.py`: batch, "
        "k, L2 and the epoch cap from the rows; each field's min-count from its own value "
        "counts, `training/fit_spec.py`), and tuned by `ctrserve tune`'s search "
        "(`training/tuning.py`: Optuna TPE over learning rate, L2, optimizer, batch, "
        "min-count, numeric bins, k, MLP width, depth and dropout, with median pruning per "
        "epoch; its first trial is the defaults). LightGBM and XGBoost are searched by the "
        "same sampler with the same number of trials (`benchmarks/gbdt.py`: categorical or "
        "frequency encoding, their tree knobs, and the same min-count and bins), each trial "
        "early-stopped on validation AUC. DeepCTR-Torch's DeepFM and ONN train with the "
        "settings our deepfm and nffm were tuned to. Ladder rows are scored as served: "
        "through the exported graph with its calibration. The test rows are scored "
        f"once, at the end. On the real slices every contender is then retrained, with the "
        f"same settings, on {SMALL_DATA_SPLITS - 1} more seeded splits. Raw numbers: "
        "quality.json.",
        "",
        "Other public sets: no installable package ships a click log without downloading "
        "it at run time, which this project never does (scikit-learn's bundled sets are not "
        "click logs; catboost.datasets, lightfm, surprise and the like fetch theirs from the "
        "network). Put another set's file in `$CTR_DATA_DIR` and run `benchmarks.compare` on it.",
        "",
    ]
    body = [
        f"{sections[name]['markdown'].rstrip()}\n\n"
        f"<sub>Run {sections[name]['generated']} UTC, {sections[name]['seconds']:.0f} s.</sub>\n"
        for name in SECTIONS
        if name in sections
    ]
    return "\n".join(head) + "\n" + "\n".join(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sections",
        type=lambda text: tuple(s for s in text.split(",") if s),
        default=SECTIONS,
        help=f"which to run (default all): {','.join(SECTIONS)}; the others keep their last "
        "run ('' runs none and writes the page again)",
    )
    parser.add_argument("--trials", type=int, default=REAL_TRIALS)
    parser.add_argument("--synthetic-rows", type=int, default=SYNTHETIC_ROWS)
    parser.add_argument("--synthetic-trials", type=int, default=SYNTHETIC_TRIALS)
    parser.add_argument("--criteo-shaped-rows", type=int, default=CRITEO_SHAPED_ROWS)
    parser.add_argument("--out", type=Path, default=DOCS / "QUALITY.md")
    args = parser.parse_args()
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx", "app", "training"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    DOCS.mkdir(exist_ok=True)
    results = args.out.with_name(RESULTS.name)
    kept = json.loads(results.read_text()) if results.is_file() else {}
    sections = {k: v for k, v in kept.items() if isinstance(v, dict) and "markdown" in v}
    for name, section in sections.items():  # the page follows today's presentation
        if "results" in section and name not in args.sections:
            section["markdown"] = dataset_text(name, section["results"])
    # Shards of the generated and public files live as long as this run, not in the cache.
    with tempfile.TemporaryDirectory(prefix="ctrserve-quality-") as scratch:
        os.environ[CACHE_ENV] = str(Path(scratch) / "shards")
        for name in (s for s in SECTIONS if s in args.sections):
            started = time.perf_counter()
            logger.info("section %s", name)
            text, results_of = run_section(name, args, Path(scratch))
            sections[name] = {
                "generated": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
                "seconds": time.perf_counter() - started,
                "markdown": text,
                **({} if results_of is None else {"results": results_of}),
            }
            # written after every section, so a stopped run keeps what it finished
            results.write_text(json.dumps(sections, indent=1) + "\n")
            args.out.write_text(page(sections))
    args.out.write_text(page(sections))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
