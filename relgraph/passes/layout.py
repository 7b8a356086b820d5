"""Where the batch is: per-sample sums must follow it.

Relevance taken by biases is summed per sample, [N, …] → [N]. Most values keep the batch on axis 0, but not all:
a Gemm may run on a flattened [N·S, D] (GPT-2's Conv1D), and sequence-first attention (torchvision's
MultiheadAttention) moves the batch to axis 1 of [S, N, E] and then merges it, [S·N, E]. What a per-sample sum
needs is where the batch sits in memory order: every value is read as [outer, N, inner] (row-major), and
the sum is ``ReduceSum(Reshape(v, [outer, N, −1]), axes=[0, 2])``; ``outer`` = 1 is the common case.

A forward sweep from the explained input tracks, for every value on the relevance path, the axis the batch
is in and how many of that axis' elements come before it (``Batch``): an axis of its own, or merged with others.
Transpose, Squeeze, Unsqueeze, Gather and reductions move the axis; broadcasting shifts it with the rank; a
reshape keeps the memory order, so it keeps ``outer``, and the batch is an axis of its own again when the output
has a dimension of the batch's size right after ``outer`` elements. Where neither can be proven (a transpose of
a merged batch, an op along the batch axis) the layout is unknown, and a bias reported there is refused at
compile time, never summed over the wrong elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..graph import attr, const_array


@dataclass(frozen=True)
class Batch:
    """The batch sits in axis ``k``, after ``a`` of that axis' elements: the axis is [a, N, c] flattened (a = c = 1:
    the axis is the batch; GPT-2's Gemm rows [N·S]: a = 1; torchvision's [S·N] rows: a = S)."""

    k: int
    a: int = 1


UNKNOWN = None
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Where", "MatMul", "Expand"}


def batch_layouts(nodes: list[ir.Node], x: ir.Value, export_batch=None) -> dict:
    """Value id → ``Batch`` or ``UNKNOWN`` for every value on the relevance path. ``export_batch``: the static
    batch size a model was exported with (its reshapes spell it out)."""
    sizes = {x.shape[0], export_batch} - {None} if x.shape is not None else set()
    layouts = {id(x): Batch(0)}
    for node in nodes:
        found = [_broadcast(layouts[id(v)], v, node) for v in node.inputs if v is not None and id(v) in layouts]
        if not found:
            continue
        here = found[0] if all(f == found[0] for f in found) else UNKNOWN
        for out in node.outputs:
            layouts[id(out)] = UNKNOWN if here is UNKNOWN else _moved(node, here, out, sizes)
    return layouts


def _broadcast(layout, v: ir.Value, node: ir.Node):
    """An input's batch axis in the output's rank (broadcasting aligns trailing axes)."""
    out = node.outputs[0]
    if layout is UNKNOWN or node.op_type not in BROADCASTING or v.shape is None or out.shape is None:
        return layout
    return Batch(layout.k + max(len(out.shape) - len(v.shape), 0), layout.a)


def _moved(node: ir.Node, layout: Batch, out: ir.Value, sizes: set):
    op, k = node.op_type, layout.k
    if op in ("Reshape", "Flatten"):
        outer = outer_size(node.inputs[0], layout)
        return UNKNOWN if outer is None else _located(out, outer, sizes)
    if op == "Transpose":  # the axis moves whole: the batch keeps its place inside it
        perm = attr(node, "perm", None)
        perm = list(perm) if perm is not None else list(reversed(range(len(node.inputs[0].shape))))
        return Batch(perm.index(k), layout.a)
    if op in ("Squeeze", "Unsqueeze") or op.startswith("Reduce"):
        listed = _axes(node)
        if listed is None:
            return UNKNOWN if op.startswith("Reduce") and not attr(node, "keepdims", 1) else layout
        if op == "Unsqueeze":
            rank_out = len(out.shape)
            for ax in sorted(x % rank_out for x in listed):
                k += ax <= k
            return Batch(k, layout.a)
        listed = [x % len(node.inputs[0].shape) for x in listed]
        if k in listed:
            return UNKNOWN
        return layout if op.startswith("Reduce") and attr(node, "keepdims", 1) \
            else Batch(k - sum(ax < k for ax in listed), layout.a)
    if op == "Gather":
        g = attr(node, "axis", 0) % len(node.inputs[0].shape)
        if g == k:
            return UNKNOWN
        return layout if g > k else Batch(k - 1 + np.ndim(const_array(node.inputs[1])), layout.a)
    if op in ("Softmax", "LayerNormalization", "Concat", "Split"):  # along one axis: not the batch's
        rank_ = len(node.inputs[0].shape)
        if attr(node, "axis", -1 if op != "Split" else 0) % rank_ == k:
            return UNKNOWN
    if op in ("Gemm", "MatMul") and out.shape is not None and k >= len(out.shape) - 1:
        return UNKNOWN  # the batch in the contracted or the output-feature axis
    return layout


def outer_size(v: ir.Value, layout) -> int | None:
    """The number of elements before the batch in memory order, or None where it is not static."""
    if layout is UNKNOWN or v.shape is None:
        return None
    dims = list(v.shape)[:layout.k]
    return int(np.prod(dims)) * layout.a if all(isinstance(d, int) for d in dims) else None


def _located(out: ir.Value, outer: int, sizes: set):
    """The layout of a reshape's output when ``outer`` elements come before the batch (memory order is kept):
    the axis j whose elements span that offset, with a = outer / (the product of the axes before j)."""
    if out.shape is None:
        return UNKNOWN
    before = 1
    for j, d in enumerate(out.shape):
        if d in sizes and outer == before:  # an axis of the batch's size right after ``outer`` elements
            return Batch(j)
        if outer % before == 0 and (not isinstance(d, int) or outer // before < d):
            return Batch(j, outer // before) if outer // before >= 1 else UNKNOWN
        if not isinstance(d, int):
            return UNKNOWN
        before *= d
    return UNKNOWN


def _axes(node: ir.Node):
    listed = attr(node, "axes", None)
    if listed is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        listed = None if arr is None else arr.tolist()
    return None if listed is None else list(listed)


def layout_of(value: ir.Value, layouts: dict, x: ir.Value):
    """:attr:`relgraph.graph.Builder.layout` for the rules of the node that produces ``value``: None for
    [N, …] as the input, ("outer", k) for the batch after k elements in memory order, or ("unknown", why)."""
    layout = layouts.get(id(value), UNKNOWN)
    if layout == Batch(0) and value.shape is not None and x.shape is not None and len(value.shape) > 0 \
            and value.shape[0] == x.shape[0]:
        return None
    outer = outer_size(value, layout)
    if outer is None:
        return ("unknown", f"cannot tell where the batch is in '{value.name}' (a reshape or transpose moves it): "
                           "its bias relevance cannot be summed per sample")
    return ("outer", outer)
