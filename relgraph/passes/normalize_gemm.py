"""Bring every fully connected layer to one form: ``Gemm(x, W, b)`` with W of shape [out, in], transB=1,
alpha = beta = 1, transA = 0.

    alpha·op(A)·op(B) + beta·C  →  A·(alpha·op(B))ᵀᵀ + beta·C

Also fuses ``MatMul(x, W) [+ Add(b)]`` with a constant W (torch's export of ``nn.Linear``, tf2onnx's of
Keras ``Dense``, every transformer's projections) into the same Gemm, so that the bias is one explicit input
of the layer and the ε rule stabilizes z = x·Wᵀ + b once, the bias inside, as the textbook rule reads. An x
of rank > 2 ([N, S, K], or [S, N, K] sequence-first) runs as rows:

    Reshape(x, [−1, K]) → Gemm → Reshape(·, [N, S, M])

with at most one dynamic leading dimension (it becomes the −1). The transposed pass of a Gemm reads W as it
is, so the explainer holds no transposed copy of a projection's weights.

Skipped: Gemm with a non-constant B or transA=1 (kept; reported by validation if on the relevance
path), MatMul with its constant on the left or of rank > 2, or with two dynamic leading dimensions (kept as
MatMul; its own rule handles it).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import ReportingPass
from .match import Emitter
from ..graph import add_initializer as _initializer, attr, const_array, dims, rank, replace_value


class NormalizeGemmPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.domain != "":
                continue
            if node.op_type == "Gemm":
                modified |= self._normalize(model.graph, node)
            elif node.op_type == "MatMul":
                modified |= self._fuse_matmul(model.graph, node)
        return ir.passes.PassResult(model, modified)

    def _normalize(self, graph, node) -> bool:
        w = const_array(node.inputs[1])
        if w is None or attr(node, "transA", 0):
            self.skipped.append(f"Gemm '{node.name}': weights not constant or transA=1")
            return False
        alpha, beta, trans_b = attr(node, "alpha", 1.0), attr(node, "beta", 1.0), attr(node, "transB", 0)
        if trans_b == 1 and alpha == 1.0 and (beta == 1.0 or len(node.inputs) < 3):
            return False
        w = (alpha * (w if trans_b else w.T)).astype(w.dtype)
        inputs = [node.inputs[0], _initializer(graph, f"{node.name}/weight", np.ascontiguousarray(w))]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            b = const_array(node.inputs[2])
            if b is None:
                self.skipped.append(f"Gemm '{node.name}': bias not constant")
                return False
            inputs.append(_initializer(graph, f"{node.name}/bias", (beta * b).astype(b.dtype)))
        _replace(graph, node, inputs)
        return True

    def _fuse_matmul(self, graph, node) -> bool:
        x, w_val = node.inputs
        w = const_array(w_val)
        if w is None or const_array(x) is not None or x.shape is None or rank(x) < 2 or w.ndim != 2:
            return False
        leading = dims(x)[:-1]
        if rank(x) > 2 and (x.shape[-1] != w.shape[0] or sum(d is None for d in leading) > 1):
            self.skipped.append(f"MatMul '{node.name}' kept: more than one dynamic leading dimension")
            return False
        # Wᵀ as a view: no copy of the weights while compiling (a memory-mapped weight stays mapped); its bytes
        # are laid out when the explainer is written
        inputs = [x, _initializer(graph, f"{node.name}/weight", w.T)]
        out = node.outputs[0]
        consumers = out.uses()
        last = node
        if len(consumers) == 1 and not out.is_graph_output():
            add = consumers[0].node
            other = add.inputs[1 - consumers[0].idx] if add.op_type == "Add" else None
            b = const_array(other)
            if b is not None and b.size == w.shape[1] and b.shape[-1:] == (w.shape[1],) and (
                    add.outputs[0].shape is None or rank(add.outputs[0]) == rank(x)):
                inputs.append(_initializer(graph, f"{node.name}/bias", b.reshape(-1)))
                last = add
        emit, flat = Emitter(graph, node), rank(x) > 2
        if flat:  # the rows flattened, [..., K] → [rows, K], and the Gemm's [rows, M] back to [..., M]
            rows = None if None in leading else int(np.prod(leading))
            inputs[0] = emit("Reshape", x, emit.constant(np.array([-1, w.shape[0]], np.int64)))
            inputs[0].shape = ir.Shape([rows, w.shape[0]])
        z = emit("Gemm", *inputs, transB=1)
        z.producer().name = node.name
        if flat:
            z.shape = ir.Shape([rows, w.shape[1]])
            back = [-1 if d is None else d for d in leading] + [w.shape[1]]
            z = emit("Reshape", z, emit.constant(np.array(back, np.int64)))
        emit.replace(last.outputs[0], z)
        if last is not node:
            graph.remove(last, safe=True)
        graph.remove(node, safe=True)
        return True


def _replace(graph, node, inputs):
    gemm = ir.node("Gemm", inputs, attributes={"transB": 1}, name=node.name)
    graph.insert_before(node, gemm)
    gemm.outputs[0].shape, gemm.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
    replace_value(graph, node.outputs[0], gemm.outputs[0])
    graph.remove(node, safe=True)
