"""The ``ctrserve`` command: one entry point for training (needs the ``train`` extra, torch)
and serving (the ``serve`` extra alone). Serving commands never import torch.

    ctrserve synth|prepare|train|tune|ladder|evaluate|predict|join|drift|export|inspect ...
                                                   (python -m training ..., the train extra)
    ctrserve serve|publish|label|prune ...             (python -m app ...)
"""

from __future__ import annotations

import sys

TRAINING = {
    "synth": "write synthetic CTR logs with known true probabilities",
    "prepare": "fit the spec and write the encoded shards into the cache, once",
    "train": "train one model and export it into a model repository",
    "tune": "search min-count, k and L2 on the validation rows",
    "ladder": "train every model of the ladder on one split",
    "evaluate": "score a labelled file with an exported model (onnxruntime): metrics",
    "predict": "score a file or directory without labels (onnxruntime) into Parquet or CSV",
    "join": "join the prediction log with label events into training rows",
    "drift": "compare new data (or the prediction log) with a model's training data",
    "export": "re-export a model from its checkpoint",
    "inspect": "map a field's latent vectors (PCA/t-SNE)",
}
SERVING = {
    "serve": "serve a model repository (HTTP /predict, Open Inference Protocol, gRPC)",
    "publish": "copy an exported model into a repository and point CURRENT at it",
    "label": "point a label (stable, canary...) of a model at a version",
    "prune": "remove old versions a repository's pointers and policy no longer name",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    if command in SERVING:
        from app.__main__ import main as serving

        return serving(args, prog="ctrserve")
    if command in TRAINING:
        from training.cli import main as training

        return training(args, prog="ctrserve")
    lines = ["usage: ctrserve COMMAND [options]   (ctrserve COMMAND --help for its options)", ""]
    lines += [f"  {name:<9} {text}" for name, text in {**TRAINING, **SERVING}.items()]
    stream = sys.stdout if command in ("", "-h", "--help") else sys.stderr
    if stream is sys.stderr:
        lines.insert(0, f"ctrserve: unknown command {command!r}")
    stream.write("\n".join(lines) + "\n")
    return 0 if stream is sys.stdout else 2


if __name__ == "__main__":
    sys.exit(main())
