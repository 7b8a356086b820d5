"""Blame the bias: every bias is an input of its layer, the weight of a constant-one input.

A layer z = x·W + b is read as z = [x, 1]·[W; b]: the bias is a weight whose input is always one, so a
rule gives it its share like any other input, and Σ R_x + Σ R_bias + leak = R_out is an exact account
("blame the bias": LRP read as back-propagation, README "Rules"). The constant one itself is left implicit:
the share of the bias input is ⟨b, s⟩ with s = R ⊘ stab(z), which needs no column of ones.

A rule returns the bias's relevance at the bias's input position (``relgraph.rules.registry``), and the
relevance pass books whatever flows into a constant input as bias relevance. This pass makes every affine
layer's bias that input: a Conv or Gemm followed by an ``Add`` of one constant per output channel gets that
constant as its input 2 (added to the bias it had), so the ε step stabilizes z = x·W + b once, with the
bias inside, as the rule reads, instead of splitting R again at a separate bias add.
"""

from __future__ import annotations

import onnx_ir as ir

from .match import per_channel
from ..graph import add_initializer, const_array, replace_value


class BiasAsInputPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.domain == "" and node.op_type in ("Conv", "Gemm"):
                modified |= _fold_following_add(graph, node)
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
