"""Score encoded rows with onnxruntime. No torch, no FastAPI: the service and
``python -m training evaluate`` both use this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from app.features.encoder import FeatureEncoder
from app.features.errors import SpecError
from app.features.spec import UNSEEN_INDEX
from app.repository.manifest import TRAINING_FILES, ModelManifest, verify_files

logger = logging.getLogger(__name__)


class ScoringError(RuntimeError):
    """onnxruntime failed or returned something unusable (the service answers 503)."""


class Calls:
    """The onnxruntime calls of one thread, which its owner stops when it shuts down: a
    daemon thread left inside onnxruntime when the process exits aborts it ("terminate
    called without an active exception") as the library's globals go."""

    def __init__(self) -> None:
        self.options = ort.RunOptions()

    def stop(self, thread: threading.Thread, wait_s: float = 5.0) -> None:
        """Terminate the call ``thread`` is still in, once its owner has waited for it."""
        if thread.is_alive():
            self.options.terminate = True
            thread.join(timeout=wait_s)


def inference_session(onnx_path: Path, intra_op_threads: int = 1) -> ort.InferenceSession:
    """The graph at ``onnx_path`` as the service runs it: ``intra_op_threads`` for a call,
    one call at a time a session (the scoring threads give the parallelism), every graph
    optimisation, on the CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


class Scorer:
    """One loaded model version: manifest, encoder and onnxruntime session."""

    def __init__(
        self,
        manifest: ModelManifest,
        session: ort.InferenceSession,
        model_dir: Path,
        max_value_chars: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.session = session
        self.model_dir = model_dir
        self.encoder = FeatureEncoder(manifest.features, max_value_chars)
        self.version = manifest.version
        self._input = manifest.onnx.input_name
        self._output = manifest.onnx.output_name
        self._num_fields = len(manifest.features.fields)
        # What the version maps into memory: its graph and weights, shared by every worker.
        self.file_bytes = sum(manifest.files[f].bytes for f in manifest.onnx.content_files)

    @classmethod
    def load(
        cls, model_dir: Path, intra_op_threads: int = 1, max_value_chars: int | None = None
    ) -> Scorer:
        """Load and verify ``model_dir``: manifest, sha256, graph I/O, and a smoke score.

        Raises:
            SpecError: anything wrong with the directory, with the reason.
        """
        manifest = ModelManifest.load(model_dir)
        onnx_path = model_dir / manifest.onnx.file
        # Every file the service may read, checked before onnxruntime maps the weights;
        # the checkpoint and optimiser state are checked by what reads them (re-export, warm
        # start) and by publish.
        verify_files(model_dir, manifest.files, skip=TRAINING_FILES)
        try:
            manifest.check_content()
        except SpecError as exc:
            raise SpecError(f"{model_dir}: {exc}") from None
        try:
            session = inference_session(onnx_path, intra_op_threads)
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise SpecError(f"{onnx_path}: onnxruntime cannot load it ({exc})") from None
        scorer = cls(manifest, session, model_dir, max_value_chars)
        scorer._check_graph()
        logger.info(
            "loaded model %s version %s from %s (%d fields)",
            manifest.model_type,
            manifest.version,
            model_dir,
            scorer._num_fields,
        )
        return scorer

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self._input not in inputs or self._output not in outputs:
            raise SpecError(
                f"{self.model_dir}: graph I/O {sorted(inputs)} -> {sorted(outputs)} does not "
                f"match spec.json ({self._input!r} -> {self._output!r})"
            )
        width = inputs[self._input].shape[-1]
        if isinstance(width, int) and width != self._num_fields:
            raise SpecError(
                f"{self.model_dir}: graph takes {width} fields, spec.json lists {self._num_fields}"
            )
        try:
            self.smoke_test()
        except ScoringError as exc:
            raise SpecError(f"{self.model_dir}: smoke prediction failed ({exc})") from None

    def warm(self, batch_sizes: Sequence[int]) -> None:
        """Score rows at each batch size before live traffic does.

        onnxruntime sizes its buffers on the first call of each shape, and the first calls
        page the model's tables in; warming a new version beside the old one keeps that
        first-call cost off the requests after the swap (and the encoder's request lookups
        are built here for the same reason).
        """
        self.encoder.warm_lookups()
        rng = np.random.default_rng(0)
        dims = np.array(self.manifest.features.field_dims, dtype=np.int64)
        for size in sorted({size for size in batch_sizes if size > 0}):
            self.score_indices((rng.random((size, self._num_fields)) * dims).astype(np.int64))

    def ready(self) -> bool:
        """Whether the model scores a smoke row right now."""
        try:
            self.smoke_test()
        except ScoringError:
            return False
        return True

    def smoke_test(self) -> float:
        """Score one all-unseen row; proves the graph runs and gives a finite number."""
        row = np.full((1, self._num_fields), UNSEEN_INDEX, dtype=np.int64)
        return float(self.score_indices(row)[0])

    def score_indices(
        self, indices: NDArray[np.int64], calls: Calls | None = None
    ) -> NDArray[np.float32]:
        """Probabilities (binary) or values (regression) for ``(N, F)`` encoded rows, as one
        of ``calls`` (a thread's, which its owner may stop)."""
        if len(indices) == 0:
            return np.empty(0, dtype=np.float32)
        options = None if calls is None else calls.options
        try:
            (scores,) = self.session.run([self._output], {self._input: indices}, options)
        except Exception as exc:  # ORT's exceptions are not one type
            raise ScoringError(f"onnxruntime failed: {exc}") from exc
        result = np.asarray(scores, dtype=np.float32).reshape(-1)
        if result.shape[0] != indices.shape[0] or not np.isfinite(result).all():
            raise ScoringError("the model returned non-finite or mis-shaped scores")
        return result

    def score_rows(self, rows: Sequence[Mapping[str, object]]) -> NDArray[np.float32]:
        return self.score_indices(self.encoder.encode_rows(rows))
