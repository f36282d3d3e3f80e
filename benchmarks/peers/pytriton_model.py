"""Triton Inference Server, through PyTriton, for the same model: Open Inference Protocol
(V2) JSON in, one FP32 ``score`` tensor out. Triton's dynamic batcher gathers concurrent
requests into one call of the Python function (its default: no queue delay), its C++
response cache answers repeats before Python runs, and two instances of the function
score at once.

Every field is a BYTES tensor: numbers come as text, since the protocol's JSON has no NaN and
Triton refuses null in an FP32 tensor (a missing value is an empty string).

Runs in the peers' own environment (``make peers``)::

    .venv-peers/pytriton/bin/python -m benchmarks.peers.pytriton_model \
        --model-dir models/default --http-port 8000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peers.model import PeerModel

MAX_BATCH = 1024
INSTANCES = 2
# Small, as the other servers' caches of 2,000 rows are: a response cache that held every
# body a run sends would answer the replays of a VU's slice of bodies.
CACHE_BYTES = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    model = PeerModel(args.model_dir)
    fields = model.encoder.spec.fields

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        count = len(next(iter(inputs.values())))
        arrays = {name: values.reshape(-1).astype(str) for name, values in inputs.items()}
        return {"score": model.score_columns(arrays, count).reshape(-1, 1)}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        cache_config=[f"local,size={CACHE_BYTES}"],
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="ctr",
            infer_func=[infer] * INSTANCES,
            # BYTES for every field: numbers come as text (V2 JSON has no NaN for missing)
            inputs=[Tensor(name=f.name, dtype=np.bytes_, shape=(1,)) for f in fields],
            outputs=[Tensor(name="score", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=MAX_BATCH, batcher=DynamicBatcher(), response_cache=True
            ),
        )
        triton.serve()


if __name__ == "__main__":
    main()
