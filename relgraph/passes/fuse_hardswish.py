"""Fold a hard swish written out to the HardSwish op.

    (s·x) · (k·hardsigmoid(x; 1/6, 1/2)) · t = (s·k·t) · hardswish(x),   hardswish(x) = x · relu6(x + 3)/6

Spellings: tf2onnx writes Keras's ``hard_swish`` (MobileNetV3) as x · (Clip(x + 3, 0, 6) · 1/6); paddle2onnx
writes (x · Clip(x + 3, 0, 6)) / 6, the scaling after the product; jax's ``hard_swish`` exported op by op,
x · relu6(x + 3)/6 through Min/Max (folded to Clip first, see :mod:`.fuse_clip`); an exporter without the
HardSwish op (opset < 14), x · HardSigmoid(x) with α = 1/6. The hard sigmoid is read by :func:`.fuse_hard_sigmoid.hard_sigmoid_of` (Clip or HardSigmoid, the
constants on either side, scalings or divisions), the scalings after the product are taken in while the
product has no other consumer, and an overall factor other than 1 stays as a Mul by a constant.

Left alone, the product would be a Mul of two activations and the offset +3 an Add of a constant in the gate;
the relevance pass recognises the gate either way (a product of x and an elementwise function of x), so
this fold is a simplification the rules do not depend on: one op, one exact derivative, one kernel.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import ReportingPass
from .fuse_hard_sigmoid import hard_sigmoid_of
from .match import STANDARD, Emitter, affine_source, close, trailing_scale


class FuseHardSwishPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type != "Mul" or node.domain not in STANDARD or len(node.inputs) != 2 \
                    or node.graph is None:
                continue
            for signal, gate in (node.inputs, reversed(node.inputs)):
                found = hard_sigmoid_of(gate)
                x, s, _ = affine_source(signal, offsets=False)
                if found is None or found[0] is not x or not close(found[2], 1 / 6) or not close(found[3], 0.5):
                    continue
                last, t = trailing_scale(node.outputs[0])
                factor = s * found[1] * t
                anchor = last.producer()
                emit = Emitter(graph, anchor)
                out = emit("HardSwish", x)
                if not close(factor, 1.0):
                    out = emit("Mul", out, emit.scalar(factor))
                emit.replace(last, out)
                graph.remove(anchor, safe=True)
                modified = True
                break
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
