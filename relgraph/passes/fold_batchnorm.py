"""Fold BatchNormalization, or a Mul and an Add of per-channel constants, into the Conv or Gemm it follows.

Inference-mode batch norm is an affine map per channel c:

    y = γ_c (z − μ_c) / √(σ²_c + ε) + β_c = a_c · z + (β_c − a_c μ_c),   a_c = γ_c / √(σ²_c + ε)

With z = W ⋆ x + b this is z' = (a ⊙ W) ⋆ x + (a ⊙ b + t), t = β − a ⊙ μ: the layer's weights are scaled per
output channel and its bias absorbs the shift. zennit's canonizers do the same before attributing, so
folded models get the same relevance as zennit's.

The same batch norm written as a Mul by a per-channel constant a and an Add of a per-channel t (tf2onnx
writes a Keras BatchNormalization it does not fuse so; so do hand-written inference graphs) is folded
alike, W ← a ⊙ W, b ← a ⊙ b + t, so both spellings reach the rules as one layer with the same weights.
The Add is what makes the pair a batch norm: a Mul by a constant alone (x·(−1), a layer scale) stays a
scale layer, which passes relevance on unchanged, as the Neg op or a Div by the constant does.

Skipped (and kept as an affine op with its own rule) when the producer is not a Conv/Gemm with
constant weights, or when the producer's output has other consumers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import ReportingPass
from .match import per_channel
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
            elif node.op_type == "Mul" and node.domain == "" and node.graph is not None:
                # not reported when kept: most products are not a batch norm
                modified |= _fold_scale(model.graph, node)
        return ir.passes.PassResult(model, modified)

    def _fold(self, graph: ir.Graph, bn: ir.Node) -> str | None:
        z = bn.inputs[0]
        layer = z.producer()
        why = _foldable(layer, z)
        if why:
            return why
        if len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:]):
            return "training-mode outputs are used"
        params = [const_array(v) for v in bn.inputs[1:5]]
        if any(p is None for p in params):
            return "its parameters are not constants"
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        _scale_layer(graph, layer, scale, beta - scale * mean)
        replace_value(graph, bn.outputs[0], z)
        graph.remove(bn, safe=True)
        return None


def _foldable(layer: ir.Node | None, z: ir.Value) -> str | None:
    """Why the output z of ``layer`` cannot take a per-channel affine map into the layer, or None."""
    if layer is None or layer.op_type not in ("Conv", "Gemm") or layer.domain != "":
        return "it does not follow a Conv or Gemm"
    if len(z.uses()) != 1 or z.is_graph_output():
        return f"the output of '{layer.name}' has other consumers"
    if const_array(layer.inputs[1]) is None:
        return "its parameters are not constants"
    if layer.op_type == "Gemm" and (attr(layer, "transB", 0) != 1 or attr(layer, "transA", 0) != 0):
        return "the Gemm is not in canonical form"
    return None


def _scale_layer(graph: ir.Graph, layer: ir.Node, scale: np.ndarray, shift) -> None:
    """The layer computes scale ⊙ z + shift per output channel: W ← scale ⊙ W, b ← scale ⊙ b + shift."""
    weight = const_array(layer.inputs[1])
    bias = const_array(layer.inputs[2]) if len(layer.inputs) > 2 and layer.inputs[2] is not None else 0.0
    shape = (-1,) + (1,) * (weight.ndim - 1)
    new_w = (weight * scale.reshape(shape)).astype(weight.dtype)
    new_b = (scale * np.asarray(bias, np.float64) + shift).astype(weight.dtype)
    layer.replace_input_with(1, _initializer(graph, f"{layer.name}/weight_bn", new_w))
    if len(layer.inputs) < 3:
        layer.resize_inputs(3)
    layer.replace_input_with(2, _initializer(graph, f"{layer.name}/bias_bn", new_b))


def _fold_scale(graph: ir.Graph, mul: ir.Node) -> bool:
    """Conv/Gemm(x, W, b) → Mul(·, a) → Add(·, t), a (or one value for all) and t one value per output channel,
    becomes Conv/Gemm(x, a ⊙ W, a ⊙ b + t)."""
    product = mul.outputs[0]
    if len(product.uses()) != 1 or product.is_graph_output():
        return False
    add, at = product.uses()[0]
    if add.op_type != "Add" or add.domain != "":
        return False
    for idx, z in enumerate(mul.inputs):
        layer = z.producer() if z is not None else None
        if layer is None or _foldable(layer, z):
            continue
        scale = per_channel(layer, const_array(mul.inputs[1 - idx]), uniform=True)
        shift = per_channel(layer, const_array(add.inputs[1 - at]))
        if scale is None or shift is None:
            continue
        _scale_layer(graph, layer, scale.astype(np.float64), shift.astype(np.float64))
        replace_value(graph, add.outputs[0], z)
        graph.remove([add, mul], safe=True)
        return True
    return False
