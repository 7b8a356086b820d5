"""Fold a softmax or log-softmax written out to the Softmax or LogSoftmax op.

    softmax(x)_i     = exp(x_i − m) / Σ_j exp(x_j − m)
    log_softmax(x)_i = (x_i − m) − log Σ_j exp(x_j − m)

over one axis, with m = max_j x_j (the overflow guard) or m = 0: a constant per row cancels, so every such
spelling is the same function of x. Spellings: jax computes ``jax.nn.softmax`` and ``log_softmax`` as
x − max(x), exp, a sum, then a quotient or x − log(sum), and jax2onnx writes that op by op (ReduceMax, Sub,
Exp, ReduceSum, Div or Log and Sub) where it has no plugin for the function (releases before its softmax
plugin, a softmax written with ``jnp`` ops); tf2onnx writes a softmax a TensorFlow model computes with
``tf.exp`` and ``tf.reduce_sum`` op by op too, and so do both torch exports for a softmax a model computes
by hand (``e = (x − x.max(1, keepdim=True).values).exp()``, ``e / e.sum(1, keepdim=True)``, or without the
max). Every reduction keeps its axis (keepdims = 1).

The op is what the compiler reads: at the model output the Softmax or LogSoftmax is recognised and its
input is explained (:func:`relgraph.passes.relevance.explained_values`), and inside the network the
Softmax has its own rules (:mod:`relgraph.rules.attention`). The Exp, ReduceSum and ReduceMax left
without a consumer are removed; a graph that is not one of these forms is left unchanged.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import ReportingPass
from .match import STANDARD, Emitter, reduction_axes
from ..graph import attr


def _producer(v: ir.Value | None, op_type: str) -> ir.Node | None:
    node = None if v is None else v.producer()
    return node if node is not None and node.op_type == op_type and node.domain in STANDARD else None


def _axis(node: ir.Node | None) -> int | None:
    """The one axis a Reduce* node reduces over, keeping it; else None."""
    if node is None or not attr(node, "keepdims", 1):
        return None
    axes = reduction_axes(node)
    return axes[0] if axes is not None and len(axes) == 1 else None


def _shifted(d: ir.Value, axis: int) -> ir.Value:
    """x when d = x − ReduceMax(x) over ``axis`` (keeping it); else d itself."""
    sub = _producer(d, "Sub")
    if sub is not None:
        x, m = sub.inputs
        peak = _producer(m, "ReduceMax")
        if peak is not None and peak.inputs[0] is x and _axis(peak) == axis:
            return x
    return d


def _log_sum_exp(s: ir.Value) -> tuple[ir.Value, ir.Value, int] | None:
    """(e, d, axis) when s = ReduceSum(e) over one axis with e = Exp(d); else None."""
    total = _producer(s, "ReduceSum")
    axis = _axis(total)
    exp = _producer(total.inputs[0], "Exp") if axis is not None else None
    return None if exp is None else (exp.outputs[0], exp.inputs[0], axis)


def _match(node: ir.Node) -> tuple[str, ir.Value, int] | None:
    """(op type, x, axis) when ``node`` ends a softmax (Div(e, Σe)) or a log-softmax (d − log Σ exp(d))."""
    if node.domain not in STANDARD or len(node.inputs) != 2:
        return None
    if node.op_type == "Div":
        found = _log_sum_exp(node.inputs[1])
        if found is not None and found[0] is node.inputs[0]:
            return "Softmax", _shifted(found[1], found[2]), found[2]
    if node.op_type == "Sub":
        log = _producer(node.inputs[1], "Log")
        found = _log_sum_exp(log.inputs[0]) if log is not None else None
        if found is not None and found[1] is node.inputs[0]:
            return "LogSoftmax", _shifted(found[1], found[2]), found[2]
    return None


class FuseSoftmaxPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.graph is None or (found := _match(node)) is None:
                continue
            op_type, x, axis = found
            emit = Emitter(graph, node)
            emit.replace(node.outputs[0], emit(op_type, x, axis=axis))
            graph.remove(node, safe=True)
            modified = True
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
