"""Write a ReduceSum over non-batch axes as n times the ReduceMean over them.

    Σ_{axes} x = n · mean_{axes}(x),   n = the number of elements summed (static)

torch writes ``x.sum(dim)`` as ReduceSum (ResNeSt's split attention sums its radix groups), tf2onnx writes
``tf.reduce_sum`` so, and softmax is sometimes written out as Exp / ReduceSum. The mean has its rules (an ε-normalized linear map,
:mod:`relgraph.rules.pooling`); the scaling by n is exact under every rule (R_x = R under ε, n·R for the
gradient). So the gradient is exact, and ε gives R_x = x ⊙ R ⊘ (Σx + n·ε·s): the sum's ε rule with the
stabilizer acting on the mean, the same relevance as a model that writes n · ReduceMean itself.

Skipped: axes computed at run time, a reduction over the batch axis or over all axes, dimensions summed
that are not static.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import NodeRewritePass
from .match import Emitter, reduction_axes
from ..graph import attr, dims


class ReduceSumAsMeanPass(NodeRewritePass):
    op_types = ("ReduceSum",)

    def rewrite(self, graph: ir.Graph, node: ir.Node, opset: int) -> str | None:
        x = node.inputs[0]
        if x.shape is None:
            return "the rank of its input is unknown"
        axes = reduction_axes(node)
        if axes is None:
            return "its axes are computed at run time"
        if not axes:
            return "it reduces over all axes" if not attr(node, "noop_with_empty_axes", 0) else "it reduces nothing"
        if 0 in axes:
            return "it reduces over the batch axis"
        summed = [dims(x)[a] for a in axes]
        if None in summed:
            return "the dimensions it sums are not static"
        emit = Emitter(graph, node)
        keepdims = int(attr(node, "keepdims", 1))
        if opset >= 18:
            axes_value = emit.constant(np.asarray(axes, np.int64))
            mean = emit("ReduceMean", x, axes_value, keepdims=keepdims)
        else:
            mean = emit("ReduceMean", x, axes=axes, keepdims=keepdims)
        mean.shape = node.outputs[0].shape
        emit.replace(node.outputs[0], emit("Mul", mean, emit.scalar(float(np.prod(summed)))))
        graph.remove(node, safe=True)
        return None
