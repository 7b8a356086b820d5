"""Fold clamps by constants to one op: Max(x, 0) → Relu, Min/Max with a constant and nested clamps → Clip.

    max(x, 0) = relu(x)        min(x, h) = clip(x, −∞, h)        max(x, l) = clip(x, l, ∞)
    clip(clip(x, l₁, h₁), l₂, h₂) = clip(x, max(l₁, l₂), min(h₁, h₂))   when max(l₁, l₂) ≤ min(h₁, h₂)

with relu(x) = clip(x, 0, ∞). ReLU6 comes out as one Clip(x, 0, 6) however it was written:
``jnp.minimum(jnp.maximum(x, 0), 6)`` (jax's ``relu6`` exported op by op, as jax2onnx does), Relu followed by
Min(·, 6), Clip with attribute bounds (opset < 11) or input bounds (torch, tf2onnx, paddle2onnx). A Clip(x, 0, ∞) becomes Relu: the relevance pass knows a ReLU's output is non-negative and reads
the ε denominator of the layer before it from it.

A Min/Max of an activation and a constant of more than one element (a bound per channel) is no Clip: it keeps
its op, the activation first (its rule, :mod:`relgraph.rules.elementwise`, reads it there).

Skipped: Min/Max with more than two inputs, clamps whose ranges do not overlap (ONNX then gives the upper
bound everywhere), an inner clamp with other consumers.
"""

from __future__ import annotations

import math

import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import ReportingPass
from .match import STANDARD, Emitter, scalar
from ..graph import attr, const_array


def clamp_bounds(node: ir.Node):
    """(x, low, high) when ``node`` clamps x between constants (±∞ for a missing bound), else None."""
    if node is None or node.domain not in STANDARD:
        return None
    op, inputs = node.op_type, node.inputs
    if op == "Relu":
        return inputs[0], 0.0, math.inf
    if op == "Clip":
        if len(inputs) == 1:  # opset < 11: bounds are attributes
            return inputs[0], attr(node, "min", -math.inf), attr(node, "max", math.inf)
        bounds = [inputs[i] if len(inputs) > i else None for i in (1, 2)]
        values = [None if v is None else scalar(v) for v in bounds]
        if any(v is not None and k is None for v, k in zip(bounds, values)):
            return None  # a bound computed at run time
        low, high = values
        return inputs[0], -math.inf if low is None else low, math.inf if high is None else high
    if op in ("Min", "Max") and len(inputs) == 2:
        k = [scalar(v) for v in inputs]
        if (k[0] is None) == (k[1] is None):
            return None
        i = 0 if k[0] is not None else 1  # the constant
        x, c = inputs[1 - i], k[i]
        if x.shape is None or len(inputs[i].shape or ()) > len(x.shape):
            return None  # the constant would broadcast the output up a rank
        return (x, -math.inf, c) if op == "Min" else (x, c, math.inf)
    return None


def _activation_first(node: ir.Node) -> bool:
    """Min/Max(c, x) → Min/Max(x, c) for a constant c of several elements."""
    if node.op_type not in ("Min", "Max") or node.domain not in STANDARD or len(node.inputs) != 2:
        return False
    c, x = node.inputs
    if const_array(c) is None or const_array(x) is not None:
        return False
    node.replace_input_with(0, x)
    node.replace_input_with(1, c)
    return True


class FuseClipPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            bounds = clamp_bounds(node)
            if bounds is None:
                modified |= _activation_first(node)
                continue
            x, low, high = bounds
            inner = clamp_bounds(x.producer())
            if inner is not None and len(x.uses()) == 1 and not x.is_graph_output():
                x, low, high = inner[0], max(low, inner[1]), min(high, inner[2])
                if low > high:
                    self.skipped.append(f"{node.op_type} '{node.name}' kept: its range does not meet the "
                                        f"clamp before it")
                    continue
            elif node.op_type in ("Clip", "Relu"):
                continue  # already one clamp
            emit = Emitter(graph, node)
            if low == 0 and high == math.inf:
                out = emit("Relu", x)
            else:
                bounds = [None if low == -math.inf else emit.scalar(low),
                          None if high == math.inf else emit.scalar(high)]
                while bounds and bounds[-1] is None:
                    bounds.pop()
                out = emit("Clip", x, *bounds)
            emit.replace(node.outputs[0], out)
            graph.remove(node, safe=True)
            modified = True
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
