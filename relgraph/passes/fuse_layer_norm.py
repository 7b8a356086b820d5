"""Fold a LayerNorm written out op by op to the LayerNormalization op.

    y = γ ⊙ (x − μ) / √(var + ε) + β,   μ = mean(x),   var = mean((x − μ)²)  or  mean(x²) − μ²

over the same static axes becomes LayerNormalization(x, γ, β, axis, ε): over the trailing axes (from ``axis``
to the last) as it is, over others with those axes moved last by a Transpose and back by another.

Spellings: torch's legacy export below opset 17 (ReduceMean, Sub, Pow 2, ReduceMean, Add ε, Sqrt, Div, Mul γ,
Add β; without γ and β for ``elementwise_affine=False``); tf2onnx's Keras 2 LayerNormalization through
``tf.nn.batch_normalization`` (ReduceMean, Sub, Mul(d, d) for SquaredDifference, ReduceMean, Add ε, Sqrt,
Reciprocal for Rsqrt, Mul γ, x·inv + (β − μ·inv)); Keras 3 (−μ·inv + β with Neg, and the variance as
mean(x²) − μ²); hand-written ``(x - u) / torch.sqrt(s + eps)`` modules in timm and elsewhere.

The match is by what the ops compute, not by their order: from each ReduceMean μ = mean(x) (keepdims), every
elementwise op downstream whose other operands are x, constants or values already read (Add, Sub, Mul, Div,
Neg, Sqrt, Reciprocal, Pow by ±½, 1, 2) is written as a polynomial in x, μ, the variance v (a ReduceMean of
k·(x − μ)² over the same axes) or the second moment q = mean(x²), and r = 1/σ, with constant coefficients:
√(c·v + e) = √c·r⁻¹ with ε = e/c, and the same for c·(q − μ²) + e. A value of the form γ·x·r − γ·μ·r + β is
the LayerNorm; the last one whose computation is used nowhere else is replaced. Scalings anywhere (a mean
written as ReduceSum·1/n, :mod:`.reduce_sum_as_mean`), γ before or after the division, β added at any point
all fold the same way.

Left alone, the written-out form is refused (a Div of two activations under its own rule, a ReduceMean of a
product), or explained op by op with a relevance that depends on the spelling; the op has the exact gradient
and the LN rule (σ fixed) of :mod:`relgraph.rules.normalization`.

Skipped (``skipped`` names the mean): a variance of the centered value that is found but over axes that are
not static, an output that is not of the LayerNorm form, or an intermediate value used
outside the normalization. The graph is then unchanged.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from .base import ReportingPass
from .match import STANDARD, Emitter, reduction_axes
from ..graph import attr, const_array, dims

# a monomial is the tuple of exponents of (x, μ, v, q, r); a polynomial maps monomials to constant coefficients
ONE, X, MU, V, Q = (0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (0, 1, 0, 0, 0), (0, 0, 1, 0, 0), (0, 0, 0, 1, 0)
XR, MUR = (1, 0, 0, 0, 1), (0, 1, 0, 0, 1)
SQUARE = {(2, 0, 0, 0, 0): 1.0, (1, 1, 0, 0, 0): -2.0, (0, 2, 0, 0, 0): 1.0}  # (x − μ)²
MOMENTS = {Q: 1.0, (0, 2, 0, 0, 0): -1.0}                                      # mean(x²) − μ²
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal", "Pow", "ReduceMean")


def _add(a: dict, b: dict, sign: float = 1.0) -> dict:
    out = dict(a)
    for m, c in b.items():
        out[m] = out[m] + sign * c if m in out else sign * c
    return {m: c for m, c in out.items() if np.any(c != 0)}


def _mul(a: dict, b: dict) -> dict:
    out: dict = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            out = _add(out, {tuple(i + j for i, j in zip(ma, mb)): ca * cb})
    return out


def _inverse(a: dict) -> dict | None:
    if len(a) != 1:
        return None
    (m, c), = a.items()
    return None if np.any(c == 0) else {tuple(-i for i in m): 1.0 / c}


def _multiple(a: dict, form: dict) -> float | None:
    """k when a = k·form with a scalar k (one-element coefficients), else None."""
    if set(a) != set(form) or any(np.size(c) != 1 for c in a.values()):
        return None
    first = next(iter(form))
    k = float(np.reshape(a[first], ())) / form[first]
    return k if all(math.isclose(float(np.reshape(a[m], ())), k * f, rel_tol=1e-6) for m, f in form.items()) \
        else None


class _Match:
    """One attempt from a mean μ = mean(x): the polynomial of each value read, and the ε found."""

    def __init__(self, mean: ir.Node, axes: list[int]):
        self.mean, self.x, self.axes = mean, mean.inputs[0], axes
        self.reps: dict[int, dict] = {id(mean.outputs[0]): {MU: np.float64(1.0)}}
        self.seeds: list[ir.Node] = [mean]  # the means read before the walk: μ, and q where there is one
        self.epsilon: float | None = None
        self.variance = False  # a variance of x over the axes was read: this is a normalization

    def operand(self, v: ir.Value | None) -> dict | None:
        if v is None:
            return None
        if id(v) in self.reps:
            return self.reps[id(v)]
        if v is self.x:
            return {X: np.float64(1.0)}
        c = const_array(v)
        if c is None or c.dtype.kind != "f" or c.ndim > len(self.x.shape):
            return None
        return {ONE: c.astype(np.float64)} if np.any(c != 0) else {}

    def sqrt(self, a: dict) -> dict | None:
        """√(c·var + e) = √c · r⁻¹, with ε = e/c (var = v, or q − μ²)."""
        e = a.get(ONE, np.float64(0.0))
        rest = {m: c for m, c in a.items() if m != ONE}
        k = _multiple(rest, {V: 1.0}) if V in rest else _multiple(rest, MOMENTS)
        if k is None or k <= 0 or np.size(e) != 1 or float(np.reshape(e, ())) < 0:
            return None
        epsilon = float(np.reshape(e, ())) / k
        self.variance = True
        if self.epsilon is not None and not math.isclose(epsilon, self.epsilon, rel_tol=1e-6):
            return None
        self.epsilon = epsilon
        return {(0, 0, 0, 0, -1): np.float64(math.sqrt(k))}

    def evaluate(self, node: ir.Node) -> dict | None:
        """The polynomial of ``node``'s output, or None when it is not one of the forms read."""
        op = node.op_type
        if op == "ReduceMean":
            if _mean_axes(node) != self.axes:
                return None
            a = self.operand(node.inputs[0])
            k = None if a is None else _multiple(a, SQUARE)
            if k is None:
                return None
            self.variance = True
            return {V: np.float64(k)}
        if op == "Pow" and len(node.inputs) == 2:
            return self.power(self.operand(node.inputs[0]), _scalar(node.inputs[1]))
        ins = [self.operand(v) for v in node.inputs]
        if any(a is None for a in ins):
            return None
        if op in ("Add", "Sub") and len(ins) == 2:
            return _add(ins[0], ins[1], 1.0 if op == "Add" else -1.0)
        if op == "Mul" and len(ins) == 2:
            return _mul(ins[0], ins[1])
        if op == "Div" and len(ins) == 2:
            inverse = _inverse(ins[1])
            return None if inverse is None else _mul(ins[0], inverse)
        if op == "Neg":
            return _add({}, ins[0], -1.0)
        if op == "Reciprocal":
            return _inverse(ins[0])
        if op == "Sqrt":
            return self.sqrt(ins[0])
        return None

    def power(self, a: dict | None, p: float | None) -> dict | None:
        """a^p for the exponents a LayerNorm is written with: 1, 2, ½, −½, −1."""
        if a is None or p not in (1, 2, 0.5, -0.5, -1):
            return None
        if p == 1:
            return a
        if p == 2:
            return _mul(a, a)
        root = a if p == -1 else self.sqrt(a)
        return root if p == 0.5 or root is None else _inverse(root)

    def moments(self) -> None:
        """Seed q = mean(x²): a ReduceMean over the same axes of x·x or x^2 (Keras 3's variance)."""
        for use in self.x.uses():
            square = use.node
            if square.domain not in STANDARD or len(square.outputs) != 1 or not (
                    square.op_type == "Mul" and list(square.inputs) == [self.x, self.x]
                    or square.op_type == "Pow" and square.inputs[0] is self.x
                    and _scalar(square.inputs[1]) == 2.0):
                continue
            for u in square.outputs[0].uses():
                if u.node.op_type == "ReduceMean" and u.node.domain in STANDARD and \
                        _mean_axes(u.node) == self.axes:
                    self.reps[id(u.node.outputs[0])] = {Q: np.float64(1.0)}
                    self.seeds.append(u.node)


def _scalar(v: ir.Value | None) -> float | None:
    c = const_array(v)
    return None if c is None or c.size != 1 else float(c.reshape(()))


def _mean_axes(node: ir.Node) -> list[int] | None:
    """The sorted non-negative axes of a ReduceMean with keepdims=1 over given axes, else None."""
    if node.inputs[0] is None or not attr(node, "keepdims", 1):
        return None
    return reduction_axes(node) or None


def _is_layer_norm(rep: dict) -> bool:
    """rep = γ·x·r − γ·μ·r (+ β)."""
    if XR not in rep or MUR not in rep or set(rep) - {XR, MUR, ONE}:
        return False
    try:
        gamma, minus = np.broadcast_arrays(rep[XR], -rep[MUR])
    except ValueError:  # coefficients of shapes that do not broadcast: not one γ
        return False
    return np.allclose(gamma, minus, rtol=1e-6, atol=0)


class FuseLayerNormPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        order = None
        for node in list(graph):
            if node.op_type != "ReduceMean" or node.domain not in STANDARD or node.graph is None:
                continue
            axes = _mean_axes(node)
            if axes is None or 0 in axes:
                continue
            order = order or {id(n): i for i, n in enumerate(graph)}  # the walk visits nodes in graph order
            why = self._fuse(graph, node, axes, order)
            if why:
                self.skipped.append(f"LayerNorm written out from the mean '{node.name}' kept: {why}")
            elif why is not None:
                modified, order = True, None
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)

    def _fuse(self, graph: ir.Graph, mean: ir.Node, axes: list[int], order: dict) -> str | None:
        """"" when fused, a reason when a normalization was found but left alone, None when there is none."""
        match = _Match(mean, axes)
        match.moments()
        region = list(match.seeds)
        heap = [(order[id(u.node)], id(u.node), u.node) for seed in region for u in seed.outputs[0].uses()
                if id(u.node) in order]
        heapq.heapify(heap)
        seen = set()
        while heap:
            _, key, node = heapq.heappop(heap)
            if key in seen:
                continue
            seen.add(key)
            if node.op_type not in ELEMENTWISE or node.domain not in STANDARD or len(node.outputs) != 1:
                continue
            rep = match.evaluate(node)
            if rep is None:
                continue
            out = node.outputs[0]
            match.reps[id(out)] = rep
            region.append(node)
            heap.extend((order[id(u.node)], id(u.node), u.node) for u in out.uses() if id(u.node) in order)
            heapq.heapify(heap)
        if not match.variance or match.epsilon is None:
            return None
        shape = dims(match.x)
        if any(shape[a] is None for a in axes):
            return "the normalized axes are not static"
        candidates = [n for n in region if _is_layer_norm(match.reps[id(n.outputs[0])])]
        if not candidates:
            return "no value computes γ·(x − μ)/√(var + ε) + β"
        why = ""
        for node in reversed(candidates):
            why = _closed(node, region)
            if not why:
                return _emit(graph, node.outputs[0], match.x, axes, match.reps[id(node.outputs[0])],
                             match.epsilon)
        return why


def _closed(node: ir.Node, region: list) -> str:
    """"" when every value computed on the way to ``node``'s output is used only on that way, else why not."""
    inside = {id(n) for n in region}
    cone, stack = {}, [node]
    while stack:
        n = stack.pop()
        if id(n) in cone:
            continue
        cone[id(n)] = n
        stack.extend(v.producer() for v in n.inputs
                     if v is not None and v.producer() is not None and id(v.producer()) in inside)
    for n in cone.values():
        for o in n.outputs:
            if o is node.outputs[0]:
                continue
            if o.is_graph_output():
                return f"'{o.name}' is a graph output"
            if any(id(u.node) not in cone for u in o.uses()):
                return f"'{o.name}' is also used outside the normalization"
    return ""


def _parameter(c, shape: list, perm: list[int], k: int, dtype) -> np.ndarray | None:
    """γ or β for LayerNormalization of x transposed by ``perm``: of the normalized shape when it varies along
    those axes only, else as broadcast to x's rank (None when it does not broadcast to x without growing it)."""
    c = np.asarray(c, np.float64)
    c = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    for i, (n, d) in enumerate(zip(c.shape, shape)):
        if n != 1 and (i == 0 or n != d):
            return None
    c, shape = c.transpose(perm), [shape[p] for p in perm]
    if all(n == 1 for n in c.shape[:k]):
        return np.ascontiguousarray(np.broadcast_to(c.reshape(c.shape[k:]), shape[k:])).astype(dtype)
    return np.ascontiguousarray(c.reshape(c.shape[1:])).astype(dtype)


def _emit(graph: ir.Graph, y: ir.Value, x: ir.Value, axes: list[int], rep: dict, epsilon: float) -> str:
    """LayerNormalization normalizes the trailing axes; a norm over others (tf2onnx moves a Keras norm over
    channels to axis 1 of NCHW) is written Transpose → LayerNormalization → Transpose, axes moved last."""
    shape = dims(x)
    k = len(shape) - len(axes)
    perm = [i for i in range(len(shape)) if i not in axes] + axes
    dtype = x.type.dtype.numpy() if x.type is not None else np.float32
    gamma = _parameter(rep[XR], shape, perm, k, dtype)
    beta = _parameter(rep[ONE], shape, perm, k, dtype) if ONE in rep else None
    if gamma is None or (ONE in rep and beta is None):
        return "γ or β does not broadcast to x without growing it or varying along the batch"
    emit = Emitter(graph, y.producer())
    moved = perm != sorted(perm)
    if moved:
        x = emit("Transpose", x, perm=perm)
        x.shape = ir.Shape([x.shape[p] for p in perm])
    inputs = [x, emit.constant(gamma)] + ([emit.constant(beta)] if beta is not None else [])
    out = emit("LayerNormalization", *inputs, axis=k, epsilon=epsilon)
    if moved:
        out = emit("Transpose", out, perm=[perm.index(i) for i in range(len(perm))])
    emit.replace(y, out)
    return ""
