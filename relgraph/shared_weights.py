"""A square weight read both as W and as Wᵀ, rewritten so that no two products read it as their right operand
in different orientations.

An explainer reads every forward weight twice: the forward pass computes x·Wᵀ (a Gemm with ``transB``), the
relevance pass pushes a share back through s·W. OpenVINO's CPU plugin (2026.4) gets the second of two such
products wrong when the weight is square: it computes s·Wᵀ instead, silently (a rectangular weight would not
fit, so only square ones go unnoticed). A transformer's attention projections are square, and every
transformer explainer came out wrong there, with a relative error above 1, while its logits were right.

A constant taken as the *left* operand is not affected, so each product after the first that reads a square
weight the other way round (by ``transB``, or through a Transpose of the weight) is written with the weight
on the left:

    op(A) · W  = (Wᵀ · op(A)ᵀ)ᵀ = Transpose(Gemm(W, A, transA=1, transB=1 − transA₀))
    op(A) · Wᵀ = (W · op(A)ᵀ)ᵀ  = Transpose(Gemm(W, A, transB=1 − transA₀))

A batched MatMul's A is flattened to 2-D first and the result reshaped back; a Gemm's alpha is kept, and its
β·C added after the transpose. The price on onnxruntime is one transpose of the product per rewritten node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def read_one_way(proto: onnx.ModelProto) -> bool:
    """Rewrite ``proto``'s graph in place as the module docstring says; whether anything changed. Reads the
    ranks ONNX shape inference recorded."""
    graph = proto.graph
    sizes = _square_constants(graph)
    # a Transpose of a square constant reads that constant the other way round (the runtime folds it)
    flipped = {n.output[0]: n.input[0] for n in graph.node
               if n.op_type == "Transpose" and n.input[0] in sizes and _attr(n, "perm", [1, 0]) == [1, 0]}
    first: dict[str, bool] = {}
    rewrite = {}
    for i, node in enumerate(graph.node):  # by position: protobuf hands out a new wrapper on each access
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in sizes:
            continue
        weight = flipped.get(node.input[1], node.input[1])
        transposed = (node.op_type == "Gemm" and _attr(node, "transB", 0) == 1) != (node.input[1] in flipped)
        if first.setdefault(weight, transposed) != transposed:
            rewrite[i] = weight, transposed
    if not rewrite:
        return False
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info, *graph.output]}
    nodes = []
    for i, node in enumerate(graph.node):
        nodes += _left_operand(node, ranks, sizes, *rewrite[i]) if i in rewrite else [node]
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def _square_constants(graph: onnx.GraphProto) -> dict[str, int]:
    """Name → size of the square matrices that are constants: initializers, and values computed from
    constants alone (a runtime folds them into constants too: W⁺ = Relu(W) of the αβ rules)."""
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    shapes |= {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
               for v in graph.value_info}
    # an initializer that is also a graph input (DeepLIFT's baseline) may be fed: not a constant
    constant = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    for node in graph.node:
        if node.op_type == "Constant" or node.input and all(i in constant or not i for i in node.input):
            constant.update(node.output)
    return {name: shapes[name][0] for name in constant
            if len(shapes.get(name, [])) == 2 and shapes[name][0] is not None and shapes[name][0] == shapes[name][1]}


def _left_operand(node: onnx.NodeProto, ranks: dict, sizes: dict, w: str, transposed: bool) -> list[onnx.NodeProto]:
    """``node`` (MatMul or Gemm reading the square constant ``w`` as its right operand, as Wᵀ if
    ``transposed``) as nodes that take ``w`` on the left, computing the same output."""
    a, _, *rest = node.input
    name, out = node.name or node.output[0], node.output[0]
    size = sizes[w]
    gemm = node.op_type == "Gemm"
    trans_a = _attr(node, "transA", 0) if gemm else 0
    nodes, flat = [], a
    batched = not gemm and ranks.get(a) != 2
    if batched:  # [..., K] → [M, K]
        flat = f"{name}/flat"
        nodes += [_const(f"{name}/flat_shape", [-1, size]), helper.make_node("Reshape", [a, f"{name}/flat_shape"],
                                                                              [flat], f"{name}/flatten")]
    product = f"{name}/left"
    attributes = {"transA": 0 if transposed else 1, "transB": 1 - trans_a}
    if gemm:
        attributes["alpha"] = _attr(node, "alpha", 1.0)
    nodes.append(helper.make_node("Gemm", [w, flat], [product], f"{name}/weight_left", **attributes))
    bias = rest[0] if gemm and rest and rest[0] else None
    done = out if not (batched or bias) else f"{name}/transposed"
    nodes.append(helper.make_node("Transpose", [product], [done], f"{name}/transpose", perm=[1, 0]))
    if bias:
        beta = _attr(node, "beta", 1.0)
        if beta != 1.0:
            nodes += [_const(f"{name}/beta", np.array(beta, np.float32)),
                      helper.make_node("Mul", [bias, f"{name}/beta"], [f"{name}/beta_c"], f"{name}/scale_c")]
            bias = f"{name}/beta_c"
        nodes.append(helper.make_node("Add", [done, bias], [out], f"{name}/add_c"))
    if batched:  # [M, D] → [..., D]
        nodes += [helper.make_node("Shape", [a], [f"{name}/lead"], f"{name}/lead_shape", end=-1),
                  _const(f"{name}/last", [size]),
                  helper.make_node("Concat", [f"{name}/lead", f"{name}/last"], [f"{name}/out_shape"],
                                   f"{name}/out_shape", axis=0),
                  helper.make_node("Reshape", [done, f"{name}/out_shape"], [out], f"{name}/unflatten")]
    return nodes


def _attr(node: onnx.NodeProto, key: str, default):
    found = next((a for a in node.attribute if a.name == key), None)
    return default if found is None else helper.get_attribute_value(found)


def _const(name: str, value) -> onnx.NodeProto:
    array = np.asarray(value, np.int64) if isinstance(value, list) else value
    return helper.make_node("Constant", [], [name], name, value=numpy_helper.from_array(array))
