"""Broken copies of a good model directory, one per fault the service must refuse."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from app.features.spec import FeatureSpec
from app.repository.manifest import (
    MANIFEST_FILE,
    ONNX_DATA_FILE,
    OnnxGraph,
    content_version,
    describe_files,
)
from app.repository.store import resolve_model_dir


def _rewrite_manifest(target: Path, change: Callable[[dict[str, object]], None]) -> None:
    """Edit spec.json and keep its file list and version consistent with the files."""
    path = target / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    change(manifest)
    names = [item.name for item in target.iterdir() if item.is_file() and item != path]
    files = describe_files(target, names)
    manifest["files"] = {name: entry.model_dump() for name, entry in files.items()}
    graph = OnnxGraph.model_validate(manifest["onnx"])
    features = FeatureSpec.model_validate(manifest["features"])
    manifest["version"] = content_version(graph, files, features)
    path.write_text(json.dumps(manifest))


def _truncated(target: Path) -> None:
    data = (target / "model.onnx").read_bytes()
    (target / "model.onnx").write_bytes(data[: len(data) // 2])


def _bit_flipped_weights(target: Path) -> None:
    """One bit of one table weight flipped: a valid graph scoring slightly differently."""
    path = target / ONNX_DATA_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncated_weights(target: Path) -> None:
    path = target / ONNX_DATA_FILE
    path.write_bytes(path.read_bytes()[:-4096])


def _garbage_with_matching_hash(target: Path) -> None:
    (target / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf graph")
    _rewrite_manifest(target, lambda manifest: None)


def _spec_does_not_match_graph(target: Path) -> None:
    def drop_a_field(manifest: dict[str, object]) -> None:
        features = manifest["features"]
        assert isinstance(features, dict)
        features["fields"] = features["fields"][:-1]

    _rewrite_manifest(target, drop_a_field)


def _wrong_io_names(target: Path) -> None:
    def rename(manifest: dict[str, object]) -> None:
        onnx = manifest["onnx"]
        assert isinstance(onnx, dict)
        onnx["output_name"] = "probability"

    _rewrite_manifest(target, rename)


def _missing_spec(target: Path) -> None:
    (target / "spec.json").unlink()


def _missing_graph(target: Path) -> None:
    (target / "model.onnx").unlink()


def _nan_output(target: Path) -> None:
    """A valid graph with the right I/O that answers NaN for every row."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["indices"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["as_float", "axis"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "nan"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", None])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=[
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(target / "model.onnx"))
    _rewrite_manifest(target, lambda manifest: None)


FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated model.onnx": (_truncated, "truncated"),
    "bit flipped in model.onnx.data": (_bit_flipped_weights, "model.onnx.data: sha256"),
    "truncated model.onnx.data": (_truncated_weights, "model.onnx.data: "),
    "corrupt model.onnx": (_garbage_with_matching_hash, "onnxruntime cannot load it"),
    "spec.json does not match the graph": (_spec_does_not_match_graph, "graph takes"),
    "wrong input/output names": (_wrong_io_names, "does not match spec.json"),
    "missing spec.json": (_missing_spec, "spec.json"),
    "missing model.onnx": (_missing_graph, "missing"),
    "model outputs NaN": (_nan_output, "smoke prediction failed"),
}


def broken_copy(model_dir: Path, target: Path, fault: str) -> Path:
    """A flat copy of ``model_dir``'s current version with ``fault`` in it."""
    shutil.copytree(resolve_model_dir(model_dir), target)
    FAULTS[fault][0](target)
    return target


def second_version(model_dir: Path, target: Path) -> Path:
    """A second valid version (flat): the same graph, the first field's two most frequent
    values swapped, so rows holding either score differently than under the first."""
    shutil.copytree(resolve_model_dir(model_dir), target)

    def rename(manifest: dict[str, object]) -> None:
        features = manifest["features"]
        assert isinstance(features, dict)
        field = features["fields"][0]
        first, second, *rest = field["vocabulary"]
        field["vocabulary"] = [second, first, *rest]

    _rewrite_manifest(target, rename)
    return target


def nth_version(model_dir: Path, target: Path, n: int) -> Path:
    """A valid version (flat), one of many: the same graph, the first field's vocabulary
    rotated by ``n`` places, so each ``n`` (below the vocabulary's size) is its own version."""
    shutil.copytree(resolve_model_dir(model_dir), target)

    def rotate(manifest: dict[str, object]) -> None:
        features = manifest["features"]
        assert isinstance(features, dict)
        field = features["fields"][0]
        vocabulary = field["vocabulary"]
        field["vocabulary"] = vocabulary[n:] + vocabulary[:n]

    _rewrite_manifest(target, rotate)
    return target


def slow_version(model_dir: Path, target: Path, matmuls: int = 6) -> Path:
    """A valid version (flat) that scores exactly as ``model_dir``'s current one, slowly:
    the graph also multiplies a 1024x1024 matrix, scaled by the rows' indices (so
    onnxruntime cannot fold it away), ``matmuls`` times a call, and adds zero times it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shutil.copytree(resolve_model_dir(model_dir), target)
    model = onnx.load(str(target / "model.onnx"))
    graph = model.graph
    output = graph.output[0].name
    inner = f"{output}_fast"
    for node in graph.node:
        node.output[:] = [inner if name == output else name for name in node.output]
    weights = np.random.default_rng(0).random((1024, 1024), dtype=np.float32) * 1e-3
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights, "slow_weights"),
            numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "slow_scale"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
        ]
    )
    nodes = [
        helper.make_node("Cast", [graph.input[0].name], ["slow_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["slow_float"], ["slow_total"], keepdims=0),
        helper.make_node("Mul", ["slow_total", "slow_scale"], ["slow_factor"]),
        helper.make_node("Mul", ["slow_weights", "slow_factor"], ["slow_0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_weights"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{matmuls}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", [inner, "slow_nothing"], [output]),
    ]
    graph.node.extend(nodes)
    onnx.save(model, str(target / "model.onnx"))
    _rewrite_manifest(target, lambda manifest: None)
    return target
