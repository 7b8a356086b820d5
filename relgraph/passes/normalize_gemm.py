"""Bring every fully connected layer to one form: ``Gemm(x, W, b)`` with W of shape [out, in], transB=1,
alpha = beta = 1, transA = 0.

    alpha·op(A)·op(B) + beta·C  →  A·(alpha·op(B))ᵀᵀ + beta·C

Also fuses ``MatMul(x, W) [+ Add(b)]`` with a constant W and a 2-D x (torch's dynamo export of
``nn.Linear``) into the same Gemm, so that the bias is one explicit input of the layer.

Skipped: Gemm with a non-constant B or transA=1 (kept; reported by validation if on the relevance
path), MatMul whose x is not 2-D (kept as MatMul; its own rule handles it).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import ReportingPass
from ..graph import add_initializer as _initializer, attr, const_array, rank, replace_value


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
        if w is None or const_array(x) is not None or x.shape is None or rank(x) != 2 or w.ndim != 2:
            return False
        inputs = [x, _initializer(graph, f"{node.name}/weight", np.ascontiguousarray(w.T))]
        out = node.outputs[0]
        consumers = out.uses()
        last = node
        if len(consumers) == 1 and not out.is_graph_output():
            add = consumers[0].node
            other = add.inputs[1 - consumers[0].idx] if add.op_type == "Add" else None
            b = const_array(other)
            if b is not None and b.size == w.shape[1] and (add.outputs[0].shape is None or rank(add.outputs[0]) == 2):
                inputs.append(_initializer(graph, f"{node.name}/bias", b.reshape(-1)))
                last = add
        gemm = ir.node("Gemm", inputs, attributes={"transB": 1}, name=node.name)
        graph.insert_before(node, gemm)
        gemm.outputs[0].shape, gemm.outputs[0].type = last.outputs[0].shape, last.outputs[0].type
        replace_value(graph, last.outputs[0], gemm.outputs[0])
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
