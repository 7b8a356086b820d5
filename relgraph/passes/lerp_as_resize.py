"""Fold linear interpolation written out as gathers and a lerp to the linear Resize that computes it.

    y = a + (b − a) ⊙ w = (1 − w) ⊙ a + w ⊙ b,   a = x[l, …], b = x[r, …] along one axis k
      = x ×_k A,   A[i, l_i] += 1 − w_i,  A[i, r_i] += w_i   (A: [n_out, n_in])

torch's dynamo export writes a 1-d ``nn.Upsample(mode="linear")`` / ``F.interpolate(mode="linear")`` on
[N, C, L] this way: the input gathered at the left and right neighbour indices (GatherND between Transposes,
a Gather after :mod:`.gather_nd_as_gather`), mixed by constant weights per output position. Left alone, the
relevance pass explains the Sub, the Mul and the Add one by one, and the relevance depends on the spelling
(the Resize form explains the whole linear map at once, x ⊙ Aᵀ(R ⊘ stab(Ax)), see :mod:`..rules.resize`).

The expression is read by what it computes, not by its nodes: from an Add (the root of a chain of Add, Sub,
Neg and Mul by a constant), every value is a sum of terms wₜ ⊙ Gather(x, iₜ, axis=k), each weight a constant
that varies along the gathered axis only. So a + (b − a)·w, (1 − w)·a + w·b and w·b − (w − 1)·a all read as
the same A; an Add that is no lerp (an upsampling plus a skip connection) leaves the Adds inside it to be read
on their own. A is folded to the linear Resize (half_pixel, pytorch_half_pixel, align_corners or asymmetric
coordinates, scale n_out / n_in) whose own matrix, built by onnx's reference Resize as the rules build it,
equals A to float32 rounding of the exporter's weights.

Skipped, with the reason: terms that gather different tensors or along different axes, weights computed at run
time or varying along another axis than the gathered one, weights that do not form a convex combination
(outside [0, 1]: extrapolation, not interpolation), and an A that no linear Resize reproduces. Such an A stays
written out: as a MatMul by a constant it would be explained as a layer with weights (γ under
``epsilon-gamma-box``), not as the average it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import STANDARD, ReportingPass
from .match import Emitter
from ..graph import attr, const_array
from ..rules.resize import axis_matrix, settings_of

# torch's align_corners=False and =True, and the two other modes whose linear Resize is a convex map
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
MAX_DEPTH = 8
TOLERANCE = 1e-6  # float32 rounding of the exporter's weights against the float64 matrix


class NotLinear(Exception):
    """The expression is not a sum of constant-weighted gathers of one tensor."""


def _gather_leaf(v: ir.Value):
    """(x, axis, indices) when ``v`` gathers x along one axis with constant 1-d indices, directly or between a
    Transpose and its inverse (torch's dynamo form moves the axis first); else None."""
    node = v.producer()
    after = None
    if node is not None and node.op_type == "Transpose" and node.domain in STANDARD:
        after, node = list(attr(node, "perm", [])), node.inputs[0].producer()
    if node is None or node.op_type != "Gather" or node.domain not in STANDARD:
        return None
    indices, source = const_array(node.inputs[1]), node.inputs[0]
    if indices is None or indices.ndim != 1 or source.shape is None or const_array(source) is not None:
        return None  # a gather of a constant (a position embedding) is itself a constant
    axis = int(attr(node, "axis", 0)) % len(source.shape)
    before = source.producer()
    if after is not None:  # x → Transpose(Q) → Gather → Transpose(P), with Q[P[j]] = j
        if before is None or before.op_type != "Transpose" or before.domain not in STANDARD:
            return None
        perm = list(attr(before, "perm", []))
        if len(perm) != len(after) or any(perm[p] != j for j, p in enumerate(after)):
            return None
        source, axis = before.inputs[0], perm[axis]
    n = source.shape[axis]
    if not isinstance(n, int):
        return None
    return source, axis, np.asarray(indices, np.int64) % n


def linear_terms(v: ir.Value, seen: list, depth: int = 0) -> list:
    """``v`` as [(leaf, weight)]: v = Σ weight ⊙ leaf, each leaf a gather of :func:`_gather_leaf` and each weight
    a float64 constant array (broadcast as ONNX broadcasts). Raises NotLinear; ``seen`` collects the gathers
    met (those under a product of two activations too), so that a caller can tell a near miss from an
    expression that mixes no gathers. A lerp is a few steps deep: the walk stops at ``MAX_DEPTH``."""
    leaf = _gather_leaf(v)
    if leaf is not None:
        seen.append(leaf)
        return [(leaf, np.ones((), np.float64))]
    node = v.producer()
    if node is None or node.domain not in STANDARD or depth >= MAX_DEPTH:
        raise NotLinear
    depth += 1
    op, inputs = node.op_type, list(node.inputs)
    if op == "Neg":
        return [(leaf, -w) for leaf, w in linear_terms(inputs[0], seen, depth)]
    if op in ("Add", "Sub") and len(inputs) == 2:
        left, right = linear_terms(inputs[0], seen, depth), linear_terms(inputs[1], seen, depth)
        return left + ([(leaf, -w) for leaf, w in right] if op == "Sub" else right)
    if op == "Mul" and len(inputs) == 2:
        for signal, scale in (inputs, inputs[::-1]):
            k = const_array(scale)
            if k is not None and k.dtype.kind == "f" and const_array(signal) is None:
                return [(leaf, w * k.astype(np.float64)) for leaf, w in linear_terms(signal, seen, depth)]
        for factor in inputs:  # a product of two activations: not linear, but were gathers mixed?
            try:
                linear_terms(factor, seen, depth)
            except NotLinear:
                pass
    raise NotLinear


def interpolation_matrix(terms: list) -> tuple[ir.Value, int, np.ndarray] | str:
    """(x, axis, A) with y = x ×_axis A for the terms of :func:`linear_terms`, or why there is none."""
    sources = {(id(leaf[0]), leaf[1]) for leaf, _ in terms}
    if len(sources) != 1:
        return "its terms gather different tensors or along different axes"
    x, axis, first = terms[0][0]
    rank, n_in, n_out = len(x.shape), x.shape[axis], len(first)
    A = np.zeros((n_out, n_in))
    for (_, _, indices), w in terms:
        if len(indices) != n_out or w.ndim > rank:
            return "its terms gather different numbers of positions"
        w = w.reshape((1,) * (rank - w.ndim) + w.shape)
        if any(s != 1 for j, s in enumerate(w.shape) if j != axis) or w.shape[axis] not in (1, n_out):
            return "a weight varies along an axis other than the gathered one"
        np.add.at(A, (np.arange(n_out), indices), np.broadcast_to(w.reshape(-1), (n_out,)))
    if A.min() < -TOLERANCE or np.abs(A.sum(1) - 1).max() > TOLERANCE:
        return "its weights are no convex combination (outside [0, 1]): an extrapolation"
    return x, axis, A


def matching_resize(A: np.ndarray) -> tuple[str, float] | None:
    """(coordinate_transformation_mode, scale) of the linear Resize whose matrix is A, else None."""
    n_out, n_in = A.shape
    scale = float(np.float32(n_out / n_in))  # as the scales input stores it
    if int(np.floor(n_in * scale)) != n_out:
        return None
    for mode in COORDINATE_MODES:
        settings = settings_of({"mode": "linear", "coordinate_transformation_mode": mode})
        B, _ = axis_matrix(settings, n_in, scale, None, None)
        if B.shape == A.shape and np.abs(B - A).max() <= TOLERANCE:
            return mode, scale
    return None


class LerpAsResizePass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, opset = model.graph, model.opset_imports.get("", 17)
        modified, pending = False, []
        for node in reversed(list(graph)):  # the root of an expression before its parts
            if node.op_type != "Add" or node.domain not in STANDARD or node.graph is None:
                continue
            out = node.outputs[0]
            if out.shape is None or not (out.uses() or out.is_graph_output()):
                continue  # a part of a sum folded already
            seen: list = []
            try:
                terms = linear_terms(out, seen)
            except NotLinear:
                terms = None
            if len(seen) < 2:
                continue  # no mix of gathers (a residual sum, a picked token): nothing to report
            found = "it is no sum of gathers weighted by constants" if terms is None else interpolation_matrix(terms)
            if isinstance(found, tuple):
                x, axis, A = found
                resize = matching_resize(A)
                found = "no linear Resize has its interpolation matrix" if resize is None else None
                if opset < 11:
                    found = f"opset {opset} has no Resize with a coordinate transformation mode"
            if found:
                # a part of a larger sum is read from its root; the root is named once the loop is over
                if not any(u.node.op_type in ("Add", "Sub", "Mul", "Neg") for u in out.uses()):
                    pending.append((node, found))
                continue
            mode, scale = resize
            emit = Emitter(graph, node)
            scales = np.ones(len(x.shape), np.float32)
            scales[axis] = scale
            resized = emit("Resize", x, None, emit.constant(scales), mode="linear",
                           coordinate_transformation_mode=mode)
            emit.replace(out, resized)
            graph.remove(node, safe=True)
            modified = True
        for node, why in pending:  # a sum whose lerp was folded in the end (an upsampling plus a skip) is no near miss
            seen = []
            try:
                linear_terms(node.outputs[0], seen)
            except NotLinear:
                pass
            if len(seen) >= 2:
                self.skipped.append(f"Add '{node.name}' kept (a lerp of gathers?): {why}")
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
