"""Open Inference Protocol clients we did not write, run against a server, one family per
process: each package registers the protocol's messages (``inference.*``) in protobuf's
default pool under its own file name, so KServe's SDK, the client compiled from the
protocol's own ``open_inference_grpc.proto`` (PyPI ``open-inference-grpc``) and tritonclient
cannot share an interpreter.

    python -m support.oip_clients kserve HTTP_BASE GRPC_ADDRESS MODEL
    python -m support.oip_clients open-inference GRPC_ADDRESS MODEL

Prints one JSON object: what each call answered (scores, readiness, error messages).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np

# The rows every client sends: a categorical field, FP32 and FP16 numeric fields.
C0 = np.array([b"c0_1", b"c0_2", b"never-seen"], dtype=object)
N0 = np.array([2.5, -4.0, 0.25], dtype=np.float32)
N1 = np.array([0.5, 1.5, -2.0], dtype=np.float16)


async def _kserve(base: str, address: str, model: str) -> dict[str, Any]:
    import httpx
    from kserve import (
        InferenceGRPCClient,
        InferenceRESTClient,
        InferInput,
        InferRequest,
        RESTConfig,
    )

    def request(big: bool = False) -> InferRequest:
        inputs = []
        c0 = np.array([b"x" * 200] * 2000, dtype=object) if big else C0
        for name, datatype, values in (("c0", "BYTES", c0), ("n0", "FP32", N0), ("n1", "FP16", N1)):
            if big and name != "c0":
                continue
            tensor = InferInput(name, [len(values)], datatype)
            tensor.set_data_from_numpy(values, binary_data=not big)
            inputs.append(tensor)
        return InferRequest(model_name=model, infer_inputs=inputs)

    report: dict[str, Any] = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    report["rest_live"] = await rest.is_server_live(base)
    report["rest_ready"] = await rest.is_server_ready(base)
    report["rest_model_ready"] = await rest.is_model_ready(base, model)
    answer = await rest.infer(base, request(), model_name=model)
    report["rest_scores"] = answer.outputs[0].as_numpy().tolist()
    try:
        await rest.infer(base, request(big=True), model_name=model)
        report["rest_oversize"] = "accepted"
    except httpx.HTTPStatusError as exc:
        report["rest_oversize"] = str(exc)
    await rest.close()
    grpc_client = InferenceGRPCClient(address, retries=2)
    report["grpc_live"] = await grpc_client.is_server_live()
    report["grpc_ready"] = await grpc_client.is_server_ready()
    report["grpc_model_ready"] = await grpc_client.is_model_ready(model)
    answer = await grpc_client.infer(request())
    report["grpc_scores"] = answer.outputs[0].as_numpy().tolist()
    await grpc_client.close()
    return report


def _open_inference(address: str, model: str) -> dict[str, Any]:
    import grpc
    from open_inference.grpc import protocol as pb
    from open_inference.grpc.service import GRPCInferenceServiceStub

    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
        tensor = pb.ModelInferRequest.InferInputTensor
        raw = [
            b"".join(len(v).to_bytes(4, "little") + v for v in C0),
            N0.astype("<f4").tobytes(),
            N1.astype("<f2").tobytes(),
        ]
        answer = stub.ModelInfer(
            pb.ModelInferRequest(
                model_name=model,
                inputs=[
                    tensor(name="c0", datatype="BYTES", shape=[3]),
                    tensor(name="n0", datatype="FP32", shape=[3]),
                    tensor(name="n1", datatype="FP16", shape=[3]),
                ],
                raw_input_contents=raw,
            )
        )
        try:
            stub.ModelInfer(pb.ModelInferRequest(model_name="no-such-model", inputs=[]))
            unknown = "accepted"
        except grpc.RpcError as exc:
            unknown = f"{exc.code().name}: {exc.details()}"
    return {
        "metadata_inputs": [t.name for t in metadata.inputs],
        "scores": np.frombuffer(answer.raw_output_contents[0], dtype="<f4").tolist(),
        "unknown_model": unknown,
    }


def main() -> None:
    family, *args = sys.argv[1:]
    if family == "kserve":
        report = asyncio.run(_kserve(*args))
    elif family == "open-inference":
        report = _open_inference(*args)
    else:
        raise SystemExit(f"unknown client family {family!r}: kserve or open-inference")
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
