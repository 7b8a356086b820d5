"""Remove a chain of reshapes (Reshape, Flatten, Squeeze, Unsqueeze) that gives back a shape it started from.

onnx's version converter rewrites a Softmax or LogSoftmax of opset < 13 (which flattened its input from
``axis`` on) as Flatten → Softmax → Reshape to the input's shape; on [N, classes] logits both are no-ops, and
the softmax at the model output must be seen as such (its input is what is explained). A flatten of an
[N, classes] tensor (a head written for any rank) is the same no-op. A head that lifts the logits to
[N, classes, 1, 1] for its softmax (a SqueezeNet-style 1×1-conv classifier, an opset-7 Softmax over axis 1)
and flattens the probabilities after it becomes, through the converter, Unsqueeze → Flatten → Softmax →
Reshape → Flatten: two chains, each back at the shape it started from.

Reshape, Flatten, Squeeze and Unsqueeze all keep the elements in row-major order, so a chain of them is the
identity when its end has the shape of some value along it: the same rank and the same static dimensions
beyond the batch axis (the element count then fixes the batch axis too). The end's uses then read that
value. At a graph output the value takes the output's name, unless it is a graph input, a constant or another
output (then the chain stays).
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import ReportingPass
from .match import STANDARD
from ..graph import replace_value


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape) or len(a.shape) == 0:
        return False
    rest_a, rest_b = list(a.shape)[1:], list(b.shape)[1:]
    return all(isinstance(d, int) and d > 0 for d in rest_a) and rest_a == rest_b


RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _reshape(node: ir.Node | None) -> bool:
    return node is not None and node.op_type in RESHAPES and node.domain in STANDARD


def _chain_source(node: ir.Node) -> ir.Value | None:
    """The nearest value up the chain of reshapes that ends at ``node`` with node's output shape, else None."""
    out, value = node.outputs[0], node.inputs[0]
    while value is not None:
        if _same_shape(value, out):
            return value
        producer = value.producer()
        value = producer.inputs[0] if _reshape(producer) else None
    return None


class DropNoopReshapesPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if not _reshape(node):
                continue
            source, out = _chain_source(node), node.outputs[0]
            if source is None:
                continue
            if out.is_graph_output():
                if source.producer() is None or source.is_graph_output():
                    continue
                replace_value(graph, out, source)
            else:
                out.replace_all_uses_with(source)
            graph.remove(node, safe=True)
            modified = True
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
