"""Fold a hard sigmoid written out to the HardSigmoid op.

    k·clip(m·x + c, 0, h) = hardsigmoid(x; α = m/h, β = c/h)   when k·h = 1,   hardsigmoid(x; α, β) = clip(αx + β, 0, 1)

Spellings: tf2onnx writes the hard sigmoid of Keras's MobileNetV3 (its squeeze-excitation gates) as
Mul(Clip(x + 3, 0, 6), 1/6), and Keras 2's ``hard_sigmoid``, clip(0.2·x + 0.5, 0, 1), op by op; paddle2onnx
writes Div(Clip(x + 3, 0, 6), 6); jax's ``hard_sigmoid`` = relu6(x + 3)/6 exported op by op comes through
Min/Max (folded to Clip first, see :mod:`.fuse_clip`); torch writes the HardSigmoid op itself, α = 1/6. The constants may stand on
either side and be scalings or divisions. Without the fold, the offset c would be an Add of a constant before
the clamp, and ε would give it, as a bias, a share of the relevance that the HardSigmoid op passes on.

A plain clamp Clip(x, 0, 1) stays a Clip (the same function, already one op).
"""

from __future__ import annotations

import math

import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import ReportingPass
from .fuse_clip import clamp_bounds
from .match import Emitter, affine_source, affine_step, close
from ..graph import attr


def hard_sigmoid_of(v: ir.Value):
    """(x, k, α, β) with v = k·hardsigmoid(x; α, β), read through the scalings above v, a Clip(·, 0, h) or a
    HardSigmoid, and the scalings and offsets below it; None when v is not of that form."""
    base, k, _ = affine_source(v, offsets=False)
    node = base.producer()
    if node is not None and node.op_type == "HardSigmoid" and node.domain in ("", "ai.onnx"):
        x, m, c = affine_source(node.inputs[0])
        a0, b0 = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
        return x, k, a0 * m, a0 * c + b0
    bounds = clamp_bounds(node)
    if bounds is None or bounds[1] != 0 or not 0 < bounds[2] < math.inf:
        return None
    x, m, c = affine_source(bounds[0])
    h = bounds[2]
    return x, k * h, m / h, c / h


class FuseHardSigmoidPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type not in ("Clip", "Mul", "Div") or node.domain not in ("", "ai.onnx"):
                continue
            # the outermost value of the form: a Clip whose one consumer scales it is matched at that scaling
            out = node.outputs[0]
            users = out.uses()
            if node.op_type == "Clip" and len(users) == 1 and not out.is_graph_output() \
                    and affine_step(users[0].node, offsets=False) is not None:
                continue
            found = hard_sigmoid_of(out)
            if found is None:
                continue
            x, k, alpha, beta = found
            if not close(k, 1.0):
                continue
            if node.op_type == "Clip" and close(alpha, 1.0) and close(beta, 0.0):
                continue  # clip(x, 0, 1) itself
            emit = Emitter(graph, node)
            emit.replace(out, emit("HardSigmoid", x, alpha=float(alpha), beta=float(beta)))
            graph.remove(node, safe=True)
            modified = True
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
