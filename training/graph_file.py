"""The exported graph as it is shipped: the same bytes for the same model, the weights in a
file beside it that every serving worker maps, the tables compact if asked.

- **Deterministic.** torch's exporter stores each node's Python stack trace (with the
  checkout's absolute paths), its FX node and class hierarchy in the graph's metadata; two
  exports of one trained model from two checkouts differed in every node. None of it is
  needed to run the graph, so all of it is dropped before the graph is written.
- **Weights beside the graph** (``model.onnx.data``, large tensors at 64 KiB offsets,
  written by :func:`save_graph` straight from the trained tables).
  onnxruntime maps that file read-only instead of copying it into each process, so every
  worker of a replica scores from the page cache's one copy (docs/LARGE_MODELS.md).
- **Compact tables** (``float16``, or ``int8`` with one scale per row): a table is any float
  matrix that the graph only ever gathers rows from. It is stored compact and each gathered
  row is turned back into float32 inside the graph, so the service is unchanged.
- **int8 dense layers**: each fully connected layer (a ``Gemm`` or ``MatMul`` by a constant
  matrix) becomes onnxruntime's ``MatMulNBits`` with 8-bit weights in blocks of 128 along the
  input, one scale a block, quantized by onnxruntime's own quantizer. Its int8 compute
  quantizes each row's activations on its own, so a row's score does not depend on the
  rows batched with it (the standard ``DynamicQuantizeLinear`` takes one scale for the
  whole batch: a row's score moved by 3e-4 with its batch-mates, and the score cache keeps
  whichever came first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    DefaultWeightOnlyQuantizer,
)

from app.repository.manifest import ONNX_DATA_FILE, DenseDtype, TableDtype, VersionFile
from training.uncached_file import UncachedWriter

# Tensors above this go to the data file (what stays inline is a few index buffers).
EXTERNAL_TENSOR_BYTES = 1024
_ALIGNMENT = 1 << 16  # onnxruntime maps a tensor at such an offset rather than copy it
_ALIGN_OVER = 1 << 20  # smaller tensors are packed: aligning them only wastes the file
# int8 pays a float scale per row: narrower rows (first-order weights) stay float16.
INT8_MIN_WIDTH = 8
# Weights a scale in int8 dense layers (onnxruntime's default block): on a 100-row call
# 128 against 256 measured p99 score moves of 3.8e-3 against 4.8e-3 and 250 against 242 µs.
DENSE_BLOCK = 128
# MatMulNBits' int8 compute: activations quantized per row and block (its accuracy_level 4).
_INT8_COMPUTE = 4
_ORT_DOMAIN = "com.microsoft"


def strip_build_metadata(model: ir.Model) -> None:
    """Drop what the exporter recorded about where and how it ran (stack traces, FX nodes,
    module paths, the exported program's signature) from the model, its graphs, nodes and
    values; the computation is untouched."""
    model.metadata_props.clear()
    model.doc_string = None
    for graph in (model.graph, *model.graph.subgraphs()):
        graph.metadata_props.clear()
        graph.doc_string = None
        values = [*graph.inputs, *graph.outputs, *graph.initializers.values()]
        for node in graph:
            node.metadata_props.clear()
            node.doc_string = None
            values.extend(node.outputs)
        for value in values:
            value.metadata_props.clear()
            value.doc_string = None


def compact_tables(model: ir.Model, dtype: TableDtype) -> list[str]:
    """Store every embedding table of ``model`` as ``dtype``, dequantized after each gather.
    Returns the tables' names (none for ``float32``)."""
    if dtype == "float32":
        return []
    graph = model.graph
    converted = []
    for name, table in list(graph.initializers.items()):
        gathers = _gathered_only(table)
        if not gathers:
            continue
        weights = table.const_value.numpy()  # type: ignore[union-attr]
        if dtype == "int8" and weights.shape[1] >= INT8_MIN_WIDTH:
            _to_int8(graph, table, weights, gathers)
        else:
            _to_float16(graph, table, weights, gathers)
        converted.append(name)
    return converted


def compact_dense(model: ir.Model, dtype: DenseDtype) -> list[str]:
    """Store every fully connected layer of ``model`` (``Gemm`` or ``MatMul`` of an input by
    a constant float matrix) as ``dtype``: ``int8`` makes it a ``MatMulNBits`` of 8-bit
    weight blocks, plus its bias. Returns the layers' weight names (none for ``float32``, or
    for a model without such layers: LR, FM, FFM)."""
    if dtype == "float32":
        return []
    quantizer = DefaultWeightOnlyQuantizer(
        DefaultWeightOnlyQuantConfig(
            block_size=DENSE_BLOCK, is_symmetric=True, accuracy_level=_INT8_COMPUTE, bits=8
        )
    )
    graph = model.graph
    converted = []
    for node in list(graph):
        layer = _dense_layer(node)
        if layer is None:
            continue
        inputs, weight, weights = layer
        packed, scales, _ = quantizer.qbits_block_quant(weights)
        blocks = _initializer(graph, f"{weight.name}.int8", packed)
        block_scales = _initializer(graph, f"{weight.name}.block_scale", scales)
        depth, width = weights.shape
        matmul = ir.node(
            "MatMulNBits",
            [inputs, blocks, block_scales],
            attributes={
                "K": depth,
                "N": width,
                "bits": 8,
                "block_size": DENSE_BLOCK,
                "accuracy_level": _INT8_COMPUTE,
            },
            domain=_ORT_DOMAIN,
            name=f"{node.name}.int8",
        )
        nodes = [matmul]
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            nodes.append(
                ir.node("Add", [matmul.outputs[0], node.inputs[2]], name=f"{node.name}.bias")
            )
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], nodes, [node.outputs[0]], [nodes[-1].outputs[0]]
        )
        if not list(weight.uses()):
            graph.initializers.pop(weight.name or "")
        converted.append(weight.name or "")
    if converted:
        model.opset_imports.setdefault(_ORT_DOMAIN, 1)
    return converted


def save_graph(model: ir.Model, path: Path) -> VersionFile | None:
    """Write ``model`` to ``path`` with its tensors over :data:`EXTERNAL_TENSOR_BYTES` in
    :data:`ONNX_DATA_FILE` beside it (those over 1 MiB at 64 KiB offsets, as
    ``onnx_ir.save`` places them), the file written around the page cache
    (:class:`UncachedWriter`); returns that file's size and sha256, or ``None`` when every
    tensor was small enough to stay inline. The model's large tensors refer to the file
    afterwards.

    The tables are written from what the exporter holds (a view of each trained table
    without its last column), a few rows at a time, not from a copy of them."""
    large = [
        (value, value.const_value)
        for value in model.graph.initializers.values()
        if value.const_value is not None and value.const_value.nbytes > EXTERNAL_TENSOR_BYTES
    ]
    if not large:
        ir.save(model, path)
        return None
    with UncachedWriter(path.parent / ONNX_DATA_FILE) as out:
        for value, tensor in large:
            if tensor.nbytes > _ALIGN_OVER:
                out.pad_to(_ALIGNMENT)
            offset = out.tell()
            out.write_array(tensor.numpy())
            value.const_value = ir.ExternalTensor(
                ONNX_DATA_FILE,
                offset,
                tensor.nbytes,
                tensor.dtype,
                shape=ir.Shape(tensor.shape.numpy()),
                name=tensor.name or value.name or "",
                base_dir=path.parent,
            )
    ir.save(model, path)
    return out.written


def _gathered_only(value: ir.Value) -> list[ir.Node]:
    """The Gather nodes reading rows of ``value``, if that is all the graph does with it and
    it is a float matrix; else ``[]``."""
    if value.dtype != ir.DataType.FLOAT or value.const_value is None:
        return []
    if len(value.const_value.shape) != 2:
        return []
    uses = list(value.uses())
    if not uses or any(
        use.node.op_type != "Gather" or use.node.domain not in ("", "ai.onnx") or use.idx != 0
        for use in uses
    ):
        return []
    if any(use.node.attributes.get_int("axis", 0) != 0 for use in uses):
        return []
    return list(dict.fromkeys(use.node for use in uses))


def _to_float16(
    graph: ir.Graph, table: ir.Value, weights: np.ndarray, gathers: list[ir.Node]
) -> None:
    table.const_value = ir.tensor(weights.astype(np.float16), name=table.name)
    table.dtype = ir.DataType.FLOAT16
    for gather in gathers:
        _dequantize_after(graph, gather, scale=None)


def _to_int8(graph: ir.Graph, table: ir.Value, weights: np.ndarray, gathers: list[ir.Node]) -> None:
    """Symmetric int8 per row: ``row ≈ q * scale`` with ``scale = max|row| / 127``."""
    peaks = np.abs(weights).max(axis=1, keepdims=True)
    scales = np.where(peaks > 0, peaks / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(weights / scales), -127, 127).astype(np.int8)
    table.const_value = ir.tensor(quantized, name=table.name)
    table.dtype = ir.DataType.INT8
    scale_table = _initializer(graph, f"{table.name}.row_scale", scales)
    for gather in gathers:
        _dequantize_after(graph, gather, scale=scale_table)


def _dequantize_after(graph: ir.Graph, gather: ir.Node, scale: ir.Value | None) -> None:
    """Make ``gather``'s output float32 again for every node that read it."""
    rows = gather.outputs[0]
    readers = list(rows.uses())
    graph_outputs = [i for i, out in enumerate(graph.outputs) if out is rows]
    cast = ir.node("Cast", [rows], attributes={"to": ir.DataType.FLOAT}, name=f"{rows.name}.cast")
    nodes = [cast]
    restored = cast.outputs[0]
    if scale is not None:
        row_scales = ir.node(
            "Gather", [scale, gather.inputs[1]], attributes={"axis": 0}, name=f"{rows.name}.scale"
        )
        multiply = ir.node("Mul", [restored, row_scales.outputs[0]], name=f"{rows.name}.dequant")
        nodes += [row_scales, multiply]
        restored = multiply.outputs[0]
    restored.name = f"{rows.name}.float"
    restored.dtype = ir.DataType.FLOAT
    restored.shape = rows.shape
    rows.dtype = ir.DataType.FLOAT16 if scale is None else ir.DataType.INT8
    graph.insert_after(gather, nodes)
    for use in readers:
        use.node.replace_input_with(use.idx, restored)
    for i in graph_outputs:
        graph.outputs[i] = restored


def _dense_layer(node: ir.Node) -> tuple[ir.Value, ir.Value, np.ndarray] | None:
    """``node``'s input, weight and the ``(inputs, outputs)`` float matrix it multiplies the
    input by, if it is a plain fully connected layer (MatMul, or Gemm with unit alpha and
    beta and an untransposed input); else ``None``."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul"):
        return None
    inputs, weight = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if inputs is None or weight is None or weight.const_value is None:
        return None
    if weight.dtype != ir.DataType.FLOAT or len(weight.const_value.shape) != 2:
        return None
    matrix = weight.const_value.numpy()
    if node.op_type == "MatMul":
        return inputs, weight, matrix
    attributes = node.attributes
    if attributes.get_int("transA", 0) or attributes.get_float("alpha", 1.0) != 1.0:
        return None
    if attributes.get_float("beta", 1.0) != 1.0:
        return None
    if attributes.get_int("transB", 0):
        matrix = np.ascontiguousarray(matrix.T)
    return inputs, weight, matrix


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """``array`` as a new initializer of ``graph`` named ``name``."""
    value = ir.val(name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value
