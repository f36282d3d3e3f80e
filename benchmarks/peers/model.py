"""What every peer serves: the model's own encoder and one onnxruntime session, one thread.

The peers import this (numpy, pydantic and onnxruntime: nothing of ctrserve's service), so
each does the same work per request as ctrserve: decode the body, encode with the same
vocabulary, one onnxruntime call, the probabilities back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from app.features.encoder import FeatureEncoder
from app.repository.manifest import ModelManifest
from app.repository.store import resolve_model_dir


class PeerModel:
    def __init__(self, model_dir: Path) -> None:
        version_dir = resolve_model_dir(model_dir)
        manifest = ModelManifest.load(version_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(version_dir / manifest.onnx.file), options, providers=["CPUExecutionProvider"]
        )
        self.encoder = FeatureEncoder(manifest.features)
        self.input_name = manifest.onnx.input_name
        self.output_name = manifest.onnx.output_name

    def score(self, indices: NDArray[np.int64]) -> NDArray[np.float32]:
        (scores,) = self.session.run([self.output_name], {self.input_name: indices})
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def score_rows(self, rows: Sequence[Mapping[str, object]]) -> NDArray[np.float32]:
        return self.score(self.encoder.encode_rows(rows))

    def score_columns(self, arrays: Mapping[str, NDArray[Any]], count: int) -> NDArray[np.float32]:
        return self.score(self.encoder.encode_columns(arrays, count))
