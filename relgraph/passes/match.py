"""What the fusion passes share: one-element constants, chains of scalings and offsets, and emitting nodes in
place.

A value v is read upwards as v = m·u + c, walking through Mul/Div by a one-element constant (a scaling) and
Add/Sub of one (an offset); u is the value where the walk stops. Exporters scatter such constants around an
activation in every order (x·(1/6) or x/6, 3 + x or x + 3), and the passes compare the walk's (m, c), not
the nodes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import add_initializer, attr, const_array, replace_value

from .base import STANDARD


def scalar(v: ir.Value | None) -> float | None:
    """The value of a one-element float constant, else None."""
    arr = const_array(v)
    if arr is None or arr.size != 1 or arr.dtype.kind != "f":
        return None
    return float(arr.reshape(()))


def close(a: float, b: float) -> bool:
    """Equal up to float32 rounding of the exporter's constant (0.16666667 for 1/6)."""
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def affine_step(node: ir.Node | None, offsets: bool = True):
    """(u, m, c) when ``node`` computes m·u + c from one activation u and a one-element constant, else None.

    A constant of higher rank than u would broadcast the output up a rank: not a step.
    """
    if node is None or node.domain not in STANDARD or len(node.inputs) != 2 or None in node.inputs:
        return None
    a, b = node.inputs
    ka, kb = scalar(a), scalar(b)
    if (ka is None) == (kb is None):
        return None
    const_first = ka is not None
    u, k, const = (b, ka, a) if const_first else (a, kb, b)
    if u.shape is None or len(const.shape or ()) > len(u.shape):
        return None
    op = node.op_type
    if op == "Mul":
        return u, k, 0.0
    if op == "Div" and not const_first and k != 0:
        return u, 1.0 / k, 0.0
    if not offsets:
        return None
    if op == "Add":
        return u, 1.0, k
    if op == "Sub":
        return (u, -1.0, k) if const_first else (u, 1.0, -k)
    return None


def affine_source(v: ir.Value, offsets: bool = True):
    """(u, m, c) with v = m·u + c, walking up every scaling (and, with ``offsets``, offset) by a constant."""
    m, c = 1.0, 0.0
    while (step := affine_step(v.producer(), offsets)) is not None:
        v, m1, c1 = step  # the walk so far is m·(m1·u + c1) + c
        m, c = m * m1, m * c1 + c
    return v, m, c


def trailing_scale(v: ir.Value):
    """(w, k) with w = k·v: follows v down through scalings by a constant while each value has one consumer and
    is not a graph output (the product that (x·g(x))/6 divides afterwards)."""
    k = 1.0
    while len(v.uses()) == 1 and not v.is_graph_output():
        user = v.uses()[0].node
        step = affine_step(user, offsets=False)
        if step is None or step[0] is not v:
            break
        k *= step[1]
        v = user.outputs[0]
    return v, k


def reduction_axes(node: ir.Node) -> list[int] | None:
    """The axes a Reduce* node reduces over, non-negative and sorted ([] when none are given), from its
    ``axes`` attribute (ReduceSum before opset 13, the others before 18) or its constant second input; None
    when they are computed at run time or the rank of its input is unknown."""
    x = node.inputs[0]
    if x.shape is None:
        return None
    axes = attr(node, "axes", None)
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_array(node.inputs[1])
        if axes is None:
            return None
    rank = len(x.shape)
    return sorted({int(a) % rank for a in np.asarray(axes if axes is not None else [], np.int64).reshape(-1)})


def per_channel(layer: ir.Node, c: np.ndarray | None, uniform: bool = False) -> np.ndarray | None:
    """``c`` as one value per output channel of a Conv or (canonical) Gemm ``layer``, when it broadcasts against
    the layer's output along the channel axis alone: shape [C], [1, C], [C, 1, 1], [1, C, 1, 1] … (with
    ``uniform``, one element too); else None."""
    weight, out = const_array(layer.inputs[1]), layer.outputs[0]
    if c is None or weight is None or out.shape is None or len(out.shape) < 2 or c.ndim > len(out.shape):
        return None
    channels, rank = weight.shape[0], len(out.shape)
    if uniform and c.size == 1:
        return np.full(channels, c.reshape(()), c.dtype)
    if c.size != channels:
        return None
    if layer.op_type == "Conv" and c.ndim >= 1 and (c.ndim < rank - 1 or c.shape[-(rank - 1)] != channels):
        return None
    if layer.op_type == "Gemm" and c.shape[-1] != channels:
        return None
    return c.reshape(-1)


class Emitter:
    """Inserts nodes just before ``anchor`` (so the graph stays in topological order) and names them after it.

    The ops the passes emit are elementwise over one activation and one-element constants, so each output
    gets the shape and type of its highest-rank input, and no shape inference needs to run in between (a pass
    that emits another op sets the shape itself).
    """

    def __init__(self, graph: ir.Graph, anchor: ir.Node):
        self.graph, self.anchor, self.count = graph, anchor, 0

    def __call__(self, op_type: str, *inputs, **attributes) -> ir.Value:
        self.count += 1
        name = f"{self.anchor.name}/{op_type}_{self.count}"
        node = ir.node(op_type, list(inputs), attributes=attributes, name=name)
        out = node.outputs[0]
        out.name = f"{name}:0"
        shaped = [v for v in inputs if v is not None and v.shape is not None]
        if shaped:
            widest = max(shaped, key=lambda v: len(v.shape))
            out.shape, out.type = widest.shape, widest.type
        self.graph.insert_before(self.anchor, node)
        return node.outputs[0]

    def scalar(self, x: float) -> ir.Value:
        return self.constant(np.array(x, np.float32))

    def constant(self, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, f"{self.anchor.name}/constant", array)

    def replace(self, old: ir.Value, new: ir.Value) -> None:
        """``new`` takes over every use and the name of ``old`` (the shape is the same: it computes the same)."""
        new.shape, new.type = old.shape, old.type
        replace_value(self.graph, old, new)
