"""Where the batch axis is: per-sample sums must follow it.

Relevance taken by biases is summed per sample, [N, …] → [N]. Most values keep the batch on axis 0, but not all:
a Gemm may run on a flattened [N·S, D] (GPT-2's Conv1D, Keras Dense on sequences), and sequence-first attention
(torchvision's MultiheadAttention) moves the batch to axis 1 of [S, N, E]. A forward sweep from the explained
input tracks the batch axis of every value on the relevance path:

* it moves with Transpose, Squeeze, Unsqueeze, Gather along another axis and reductions without keepdims, and
  shifts with the rank of broadcasting elementwise ops;
* a Reshape or Flatten of a value with the batch on axis 0 keeps it there, its rows grouped batch-major
  ([N, S, D] → [N·S, D]): a sample's values stay contiguous, so a per-sample sum reshapes to [N, −1] first;
* anything else (a reshape that merges the batch with an axis in front of it) leaves the batch axis unknown,
  and a bias reported there is refused at compile time, never summed over the wrong axis.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import attr, const_array

_UNKNOWN = -1


def batch_axes(nodes: list[ir.Node], x: ir.Value) -> dict[int, int]:
    """Value id → the axis holding the batch (``_UNKNOWN`` where no single axis does)."""
    axes = {id(x): 0}
    for node in nodes:
        found = [_shifted(axes[id(v)], v, node) for v in node.inputs if v is not None and id(v) in axes]
        if not found:
            continue
        a = found[0] if all(f == found[0] for f in found) else _UNKNOWN
        for out in node.outputs:
            axes[id(out)] = _moved(node, a) if a != _UNKNOWN else _UNKNOWN
    return axes


BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Where", "MatMul", "Expand"}


def _shifted(a: int, v: ir.Value, node: ir.Node) -> int:
    """The axis a of an input broadcast to the output's rank (broadcasting aligns trailing axes)."""
    out = node.outputs[0]
    if node.op_type not in BROADCASTING or a == _UNKNOWN or v.shape is None or out.shape is None:
        return a
    return a + max(len(out.shape) - len(v.shape), 0)


def _moved(node: ir.Node, a: int) -> int:
    op = node.op_type
    if op == "Transpose":
        perm = attr(node, "perm", None)
        rank_ = len(node.inputs[0].shape)
        perm = list(perm) if perm is not None else list(reversed(range(rank_)))
        return perm.index(a)
    if op in ("Reshape", "Flatten"):
        return 0 if a == 0 else _UNKNOWN
    if op in ("Squeeze", "Unsqueeze", "ReduceSum", "ReduceMean", "ReduceMax"):
        listed = _axes(node)
        if listed is None:
            return _UNKNOWN if op.startswith("Reduce") and not attr(node, "keepdims", 1) else a
        if op == "Unsqueeze":
            rank_out = len(node.outputs[0].shape)
            for ax in sorted(x % rank_out for x in listed):
                a += ax <= a
            return a
        if op.startswith("Reduce") and attr(node, "keepdims", 1):
            return _UNKNOWN if a in _normalized(listed, node) else a
        listed = _normalized(listed, node)
        return _UNKNOWN if a in listed else a - sum(ax < a for ax in listed)
    if op == "Gather":
        g = attr(node, "axis", 0) % len(node.inputs[0].shape)
        if g == a:
            return _UNKNOWN
        return a if g > a else a - 1 + np.ndim(const_array(node.inputs[1]))
    return a


def _axes(node: ir.Node):
    listed = attr(node, "axes", None)
    if listed is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        listed = None if arr is None else arr.tolist()
    return None if listed is None else list(listed)


def _normalized(listed, node):
    rank_ = len(node.inputs[0].shape)
    return [x % rank_ for x in listed]


def layout_of(value: ir.Value, axes: dict[int, int], x: ir.Value):
    """:attr:`relgraph.graph.Builder.layout` for the rules of the node that produces ``value``."""
    a = axes.get(id(value), _UNKNOWN)
    if a == 0 and value.shape is not None and x.shape is not None and len(value.shape) > 0 \
            and value.shape[0] == x.shape[0]:
        return None  # [N, …] as the input (a merged axis of the same static size would need S = 1)
    if a == 0:
        return ("major",)
    if a > 0:
        return ("axis", a)
    return ("unknown", f"cannot tell which axis of '{value.name}' holds the batch (a reshape merges it with "
                       "another axis): its bias relevance cannot be summed per sample")
