"""``inference.GRPCInferenceService`` (KServe V2 over gRPC) on ``CTR_GRPC_PORT``.

The generated messages and servicer base come from tritonclient's package
(``tritonclient.grpc.service_pb2``), the same stubs Triton's own clients use, rather than a
copy of the .proto. It runs on the event loop of the uvicorn worker that started it; each
worker of a replica binds the same port (SO_REUSEPORT), so the kernel spreads connections
over them as it does for HTTP.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

import grpc
import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from app.core.config import Settings
from app.model.scorer import Scorer
from app.protocol.infer import (
    PAYLOAD_TOO_LARGE,
    UNAVAILABLE,
    any_model_ready,
    decode_off_loop,
    score,
    served,
)
from app.protocol.tensors import (
    NUMERIC_DTYPES,
    OUTPUT_NAME,
    ProtocolError,
    check_outputs,
    gather_grpc,
    model_metadata,
    server_metadata,
)
from app.request import (
    CURRENT_REQUEST,
    REQUEST_ID_HEADER,
    RequestContext,
    new_request_id,
    valid_request_id,
)
from app.scoring.service import PredictionService

logger = logging.getLogger(__name__)

_CODES = {
    404: grpc.StatusCode.NOT_FOUND,
    PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}
# Typed contents per datatype: which repeated field of InferTensorContents holds them.
_CONTENTS: dict[str, tuple[str, type[np.generic]]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int8),
    "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint8),
    "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", np.bytes_),
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The protocol's health, metadata and infer calls over one :class:`PredictionService`.

    Method names are the proto's.
    """

    def __init__(self, service: PredictionService, settings: Settings, version: str) -> None:
        self._service = service
        self._settings = settings
        self._version = version

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=any_model_ready(self._service))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(**server_metadata(self._version))

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            scorer = served(self._service, request.name, request.version).scorer
        except ProtocolError as exc:
            if exc.status == UNAVAILABLE:  # known, and not loaded: not ready
                return pb.ModelReadyResponse(ready=False)
            await _abort(context, exc)
        return pb.ModelReadyResponse(ready=scorer.ready())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        scorer = await self._served(request.name, request.version, context)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        metadata = model_metadata(request.name, scorer.version, scorer.manifest.features)
        for part in ("inputs", "outputs"):
            metadata[part] = [tensor(**t) for t in metadata[part]]  # type: ignore[arg-type,union-attr]
        return pb.ModelMetadataResponse(**metadata)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        metadata = context.invocation_metadata() or ()
        headers = [(k.encode("latin-1"), _text(v)) for k, v in metadata]
        given = next((v for k, v in metadata if k == REQUEST_ID_HEADER), None)
        request_id = valid_request_id(given if isinstance(given, str) else None)
        request_id = request_id or new_request_id()
        CURRENT_REQUEST.set(RequestContext(request_id, headers))
        await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        try:
            target = served(self._service, request.model_name, request.model_version)
            started = time.perf_counter()
            raw = list(request.raw_input_contents)
            arrays, rows = await decode_off_loop(
                request.ByteSize(),
                lambda: gather_grpc(
                    [
                        (t.name, t.datatype, list(t.shape), None if raw else _typed(t))
                        for t in request.inputs
                    ],
                    raw,
                ),
            )
            self._service.parsed(time.perf_counter() - started)
            check_outputs([o.name for o in request.outputs])
            scored = await score(self._service, self._settings, target, arrays, rows)
        except ProtocolError as exc:
            await _abort(context, exc)
        response = pb.ModelInferResponse(
            model_name=request.model_name,
            model_version=scored.version,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=OUTPUT_NAME, datatype="FP32", shape=[len(scored.scores)]
                )
            ],
            raw_output_contents=[scored.scores.astype("<f4", copy=False).tobytes()],
        )
        response.parameters["cache_hits"].int64_param = scored.cache_hits
        return response

    async def _served(self, name: str, version: str, context: Any) -> Scorer:
        try:
            return served(self._service, name, version).scorer
        except ProtocolError as exc:
            await _abort(context, exc)


async def _abort(context: Any, exc: ProtocolError) -> NoReturn:
    """End the call with the gRPC status for ``exc``."""
    await context.abort(_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), str(exc))
    raise AssertionError("grpc's context.abort returned instead of raising")


def _text(value: str | bytes) -> bytes:
    """A metadata value as header bytes (a ``-bin`` key's value is already bytes)."""
    return value if isinstance(value, bytes) else value.encode("latin-1", "replace")


def _typed(tensor: Any) -> NDArray[Any] | None:
    """A tensor's typed contents as an array, or ``None`` when it has none."""
    found = _CONTENTS.get(tensor.datatype)
    if found is None:
        if tensor.datatype in NUMERIC_DTYPES:  # FP16: the protocol has no typed field for it
            raise ProtocolError(
                f"input '{tensor.name}': {tensor.datatype} has no typed contents in the "
                "protocol; send it in raw_input_contents"
            )
        raise ProtocolError(f"input '{tensor.name}': datatype {tensor.datatype!r} is not supported")
    field, dtype = found
    values = getattr(tensor.contents, field)
    if not len(values):
        return None
    return np.array(list(values), dtype=dtype)


async def start_grpc(service: PredictionService, settings: Settings, version: str) -> Any:
    """Serve the inference service on ``settings.host:settings.grpc_port``."""
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.max_inflight_requests,
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.so_reuseport", 1),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(service, settings, version), server
    )
    address = f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    await server.start()
    logger.info("gRPC inference service on %s", address)
    return server
