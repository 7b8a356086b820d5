"""Fold a softsign written out to the Softsign op.

    x / (1 + |x|) = softsign(x)

torch writes ``F.softsign`` (``nn.Softsign``) so in both its exports, Div(x, Add(Abs(x), 1)); TensorFlow's
``tf.nn.softsign`` has an op of its own, which tf2onnx writes as Softsign. The denominator is read as
m·|x| + c through scalings and offsets by one-element constants (:func:`.match.affine_source`), so 1 + |x|
in either order folds, and nothing else does.

Left alone, the quotient is a Div of two activations, x and a normalizer 1 + |x| of x, and Abs has no rule;
as the op, it has its exact derivative and the activation rules.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import ReportingPass
from .match import STANDARD, Emitter, affine_source, close


def _softsign_of(node: ir.Node) -> ir.Value | None:
    """x when ``node`` computes x / (1 + |x|); else None."""
    if node.op_type != "Div" or node.domain not in STANDARD or len(node.inputs) != 2 or None in node.inputs:
        return None
    x, denominator = node.inputs
    magnitude, m, c = affine_source(denominator)
    source = magnitude.producer()
    if source is None or source.op_type != "Abs" or source.domain not in STANDARD or source.inputs[0] is not x:
        return None
    return x if close(m, 1.0) and close(c, 1.0) else None


class FuseSoftsignPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            x = _softsign_of(node)
            if x is None:
                continue
            emit = Emitter(graph, node)
            emit.replace(node.outputs[0], emit("Softsign", x))
            graph.remove(node, safe=True)
            modified = True
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
