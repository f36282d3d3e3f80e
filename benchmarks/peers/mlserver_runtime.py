"""Seldon MLServer's custom runtime for the same model: Open Inference Protocol (V2) JSON in,
one FP32 ``score`` tensor out. MLServer parses and validates the request with its pydantic
types; the runtime encodes the field tensors with the model's encoder and calls onnxruntime.

Runs in the peers' own environment (``make peers``), started by ``mlserver start`` on a
folder holding ``settings.json`` and ``model-settings.json`` (written by the benchmark).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from benchmarks.peers.model import PeerModel


class CtrRuntime(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        if uri is None:
            raise ValueError("model-settings.json must give parameters.uri (the model directory)")
        self._model = PeerModel(Path(uri))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        count = 0
        arrays: dict[str, np.ndarray] = {}
        for tensor in payload.inputs:
            if tensor.datatype == "BYTES":
                arrays[tensor.name] = np.array(StringCodec.decode_input(tensor), dtype=np.str_)
            else:
                arrays[tensor.name] = NumpyCodec.decode_input(tensor).reshape(-1)
            count = len(arrays[tensor.name])
        scores = self._model.score_columns(arrays, count)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("score", scores)]
        )
