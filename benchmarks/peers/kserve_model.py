"""KServe's Python model server for the same model: its V1 protocol (``{"instances":
[...]}`` rows in, ``{"predictions": [...]}`` out) on ``kserve.ModelServer``, which parses the
body, calls ``predict`` (a sync method: KServe runs it in its thread pool) and answers.

Runs in the peers' own environment (``make peers``)::

    .venv-peers/kserve/bin/python -m benchmarks.peers.kserve_model \
        --model_dir models/default --http_port 8080 --workers 2 --enable_grpc false
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kserve import Model, ModelServer, model_server

from benchmarks.peers.model import PeerModel


class CtrModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self._model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self._model = PeerModel(self._model_dir)
        self.ready = True
        return True

    def __getstate__(self) -> dict[str, Any]:
        # With --workers > 1 KServe pickles the model into each worker process; an
        # onnxruntime session cannot be pickled, so each worker loads its own.
        state = dict(self.__dict__)
        del state["_model"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        rows = payload["instances"]
        return {"predictions": self._model.score_rows(rows).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", type=Path, required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([CtrModel("ctr", args.model_dir)])


if __name__ == "__main__":
    main()
