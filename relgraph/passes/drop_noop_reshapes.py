"""Remove a Reshape or Flatten that gives its input's shape back.

onnx's version converter rewrites a Softmax or LogSoftmax of opset < 13 (which flattened its input from
``axis`` on) as Flatten → Softmax → Reshape to the input's shape; on [N, classes] logits both are no-ops, and
the softmax at the model output must be seen as such (its input is what is explained). A flatten of an
[N, classes] tensor (a head written for any rank) is the same no-op.

A Reshape/Flatten is a no-op when its input and output have the same rank and the same static dimensions
beyond the batch axis (the element count then fixes the batch axis too). At a graph output the input takes
the output's name, unless it is a graph input, a constant or another output (then the op stays).
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


class DropNoopReshapesPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type not in ("Reshape", "Flatten") or node.domain not in STANDARD:
                continue
            source, out = node.inputs[0], node.outputs[0]
            if not _same_shape(source, out):
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
