"""Fold BatchNormalization into the Conv or Gemm it follows.

Inference-mode batch norm is an affine map per channel c:

    y = γ_c (z − μ_c) / √(σ²_c + ε) + β_c = a_c · z + (β_c − a_c μ_c),   a_c = γ_c / √(σ²_c + ε)

With z = W ⋆ x + b this is z' = (a ⊙ W) ⋆ x + (a ⊙ (b − μ) + β): the layer's weights are scaled per
output channel and its bias absorbs the shift. zennit's canonizers do the same before attributing, so
folded models get the same relevance as zennit's.

Skipped (and kept as an affine op with its own rule) when the producer is not a Conv/Gemm with
constant weights, or when the producer's output has other consumers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import ReportingPass
from ..graph import add_initializer as _initializer, attr, const_array, replace_value


class FoldBatchNormPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type == "BatchNormalization" and node.domain == "":
                why = self._fold(model.graph, node)
                if why:
                    self.skipped.append(f"BatchNormalization '{node.name}' kept: {why}")
                else:
                    modified = True
        return ir.passes.PassResult(model, modified)

    def _fold(self, graph: ir.Graph, bn: ir.Node) -> str | None:
        z = bn.inputs[0]
        layer = z.producer()
        if layer is None or layer.op_type not in ("Conv", "Gemm"):
            return "it does not follow a Conv or Gemm"
        if len(z.uses()) != 1 or z.is_graph_output():
            return f"the output of '{layer.name}' has other consumers"
        if len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:]):
            return "training-mode outputs are used"
        params = [const_array(v) for v in bn.inputs[1:5]]
        weight = const_array(layer.inputs[1])
        if weight is None or any(p is None for p in params):
            return "its parameters are not constants"
        if layer.op_type == "Gemm" and (attr(layer, "transB", 0) != 1 or attr(layer, "transA", 0) != 0):
            return "the Gemm is not in canonical form"
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        bias = const_array(layer.inputs[2]) if len(layer.inputs) > 2 and layer.inputs[2] is not None else 0.0
        shape = (-1,) + (1,) * (weight.ndim - 1)
        new_w = (weight * scale.reshape(shape)).astype(weight.dtype)
        new_b = (scale * (np.asarray(bias, np.float64) - mean) + beta).astype(weight.dtype)
        w_val = _initializer(graph, f"{layer.name}/weight_bn", new_w)
        b_val = _initializer(graph, f"{layer.name}/bias_bn", new_b)
        layer.replace_input_with(1, w_val)
        if len(layer.inputs) > 2:
            layer.replace_input_with(2, b_val)
        else:
            layer.resize_inputs(3)
            layer.replace_input_with(2, b_val)
        replace_value(graph, bn.outputs[0], z)
        graph.remove(bn, safe=True)
        return None

