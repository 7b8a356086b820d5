"""Blame the bias: every bias becomes the weight of an explicit constant-one input.

A layer z = x·W + b is read as z = [x, 1]·[W; b]: the bias is a weight whose input is always one, so
the relevance rules give it a share like any other input, and Σ R_x + Σ R_bias + leak = R_out is an
exact account ("blame the bias": LRP read as back-propagation, README "Rules").

The pass gives every affine layer its bias as input #2 (a Conv/Gemm followed by an ``Add`` of a
per-channel constant gets that constant folded in as its bias) and tags each bias value with
``meta["relgraph.bias"]`` — Conv/Gemm input 2, the shift of a BatchNormalization, the constant operand
of an Add/Sub — so the relevance pass reports what flows into it.
"""

from __future__ import annotations

import onnx_ir as ir

from .match import per_channel
from ..graph import add_initializer, const_array, is_const, replace_value

BIAS = "relgraph.bias"


class BiasAsInputPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.domain != "":
                continue
            if node.op_type in ("Conv", "Gemm"):
                modified |= _fold_following_add(graph, node)
                if len(node.inputs) > 2 and node.inputs[2] is not None:
                    node.inputs[2].meta[BIAS] = True
            elif node.op_type == "BatchNormalization":
                node.inputs[2].meta[BIAS] = True
            elif node.op_type in ("Add", "Sub"):
                for v in node.inputs:
                    if is_const(v):
                        v.meta[BIAS] = True
        return ir.passes.PassResult(model, modified)


def _fold_following_add(graph: ir.Graph, layer: ir.Node) -> bool:
    """Conv/Gemm(x, W[, b]) → Add(·, c) with c one value per output channel becomes Conv/Gemm(x, W, b + c)."""
    out = layer.outputs[0]
    uses = out.uses()
    weight = const_array(layer.inputs[1])
    if len(uses) != 1 or out.is_graph_output() or weight is None:
        return False
    add = uses[0].node
    if add.op_type != "Add":
        return False
    c = per_channel(layer, const_array(add.inputs[1 - uses[0].idx]))
    if c is None:
        return False
    bias = c.astype(weight.dtype)
    if len(layer.inputs) > 2 and layer.inputs[2] is not None:
        bias = bias + const_array(layer.inputs[2])
    else:
        layer.resize_inputs(3)
    layer.replace_input_with(2, add_initializer(graph, f"{layer.name}/bias", bias))
    replace_value(graph, add.outputs[0], out)
    graph.remove(add, safe=True)
    return True
