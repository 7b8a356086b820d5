"""Rules for ops that move values without arithmetic: each passes relevance back through its adjoint.

A reshape, transpose, slice or concatenation is a 0/1 matrix P with at most one 1 per row, so the
gradient Pᵀ·R and every LRP rule (x ⊙ Pᵀ(R ⊘ Px)) coincide: relevance is moved, never changed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import attr, const_array, dims, is_fixed, rank, static_dims
from .arithmetic import unbroadcast
from .registry import PRESERVES, STRUCTURAL, Env, defrule, defsign


@defrule(("Flatten", "Reshape", "Squeeze", "Unsqueeze"), STRUCTURAL, "gradient", keeps_zeros=True)
def reshape_adjoint(env: Env):
    """R_x = reshape(R, shape(x))."""
    return env.to_first_input(env.b.op("Reshape", env.R, env.b.op("Shape", env.x)))


@defrule("Transpose", STRUCTURAL, "gradient", keeps_zeros=True)
def transpose_adjoint(env: Env):
    perm = attr(env.node, "perm", None) or list(reversed(range(rank(env.x))))
    inverse = list(np.argsort(perm))
    return [env.b.op("Transpose", env.R, perm=[int(p) for p in inverse])]


def _concat_sizes(node: ir.Node) -> list:
    axis = attr(node, "axis") % rank(node.outputs[0])
    return [dims(v)[axis] for v in node.inputs]


def _check_concat(node: ir.Node) -> str | None:
    sizes = _concat_sizes(node)
    if None in sizes:
        return f"the inputs' sizes along the axis are not static ({sizes}): --input-shape fixes them"
    return None


@defrule("Concat", STRUCTURAL, "gradient", keeps_zeros=True, check=_check_concat)
def concat_adjoint(env: Env):
    """Split R along the concatenation axis into the inputs' sizes. A constant part (a ViT's CLS token, a
    register token) keeps its share: a bias."""
    node, b = env.node, env.b
    axis = attr(node, "axis") % rank(env.y)
    sizes = _concat_sizes(node)
    parts = b.op("Split", env.R, b.ints(sizes), axis=axis, outputs=len(sizes))
    parts = parts if isinstance(parts, tuple) else (parts,)

    def share(v, p):
        if v is None or (is_fixed(v) and not env.conserving):
            return None
        return b.sum_per_sample(p, rank(env.y)) if is_fixed(v) else p  # a constant part is a bias, per sample

    return [share(v, p) for v, p in zip(node.inputs, parts)]


@defrule("Split", STRUCTURAL, "gradient", keeps_zeros=True)
def split_adjoint(env: Env):
    """Concatenate the outputs' relevance (zeros for outputs that carry none)."""
    b = env.b
    axis = attr(env.node, "axis", 0) % rank(env.x)
    parts = [R if R is not None else b.zeros_like(y) for R, y in zip(env.Rs, env.node.outputs)]
    return env.to_first_input(b.op("Concat", *parts, axis=axis))


INT_MAX = 2**31 - 1  # tf2onnx writes INT32_MAX ends for "to the end", torch INT64_MAX


def _slice_params(node, in_dims):
    """Normalized (axis, start, end, step) per sliced axis of a Slice on a static input; ends past the extent
    (INT32_MAX, INT64_MAX) clamp to it. The batch axis (−1 in ``in_dims``) is left out: :func:`_check_slice`
    lets through only slices that keep all of it."""
    out = []
    for a, s, e, st in _slice_arguments(node, len(in_dims)):
        if a == 0 and in_dims[0] < 0:
            continue
        s, e, _ = slice(s, e, st).indices(in_dims[a])
        out.append((a, s, e, st))
    return out


def _slice_arguments(node, rank_: int):
    """(axis, start, end, step) as the node gives them, axes made non-negative."""
    arrays = [const_array(v) if v is not None else None for v in node.inputs[1:]]
    starts, ends = arrays[0].tolist(), arrays[1].tolist()
    axes = arrays[2].tolist() if len(arrays) > 2 and arrays[2] is not None else list(range(len(starts)))
    steps = arrays[3].tolist() if len(arrays) > 3 and arrays[3] is not None else [1] * len(starts)
    return [(a % rank_, s, e, st) for s, e, a, st in zip(starts, ends, axes, steps)]


def _check_slice(node) -> str | None:
    if any(v is not None and const_array(v) is None for v in node.inputs[1:]):
        return "starts/ends/axes/steps are not constant"
    steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if steps is not None and np.any(steps != 1):
        return "steps other than 1 are not supported"
    x = node.inputs[0]
    if x.shape is not None and len(x.shape) > 0 and not isinstance(x.shape[0], int):
        for a, s, e, _ in _slice_arguments(node, len(x.shape)):
            # a slice of the batch axis must keep all of it, [0 (or before), INT_MAX): Keras's Cropping2D
            # through tf2onnx slices every axis
            if a == 0 and not ((s == 0 or s <= -INT_MAX) and e >= INT_MAX):
                return "it slices part of the batch axis"
    return None


@defrule("Slice", STRUCTURAL, "gradient", keeps_zeros=True, check=_check_slice)
def slice_adjoint(env: Env):
    """Pad R with zeros back to the input's extent."""
    in_dims = static_dims(env.x, "Slice input")
    r = len(in_dims)
    pads = [0] * (2 * r)
    for a, s, e, _ in _slice_params(env.node, in_dims):
        pads[a], pads[a + r] = s, in_dims[a] - max(e, s)
    return env.to_first_input(env.b.op("Pad", env.R, env.b.ints(pads)))


def _check_pad(node) -> str | None:
    mode = attr(node, "mode", "constant")
    if mode not in ("constant", b"constant"):
        return f"mode '{mode}' is not supported (constant only)"
    if len(node.inputs) > 1 and const_array(node.inputs[1]) is None:
        return "pads are not constant"
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        return "axes input is not supported"
    return None


@defrule("Pad", STRUCTURAL, "gradient", keeps_zeros=True, check=_check_pad)
def pad_adjoint(env: Env):
    """Crop R back to the unpadded region (the padding constant carries no relevance)."""
    node, b = env.node, env.b
    pads = const_array(node.inputs[1]).tolist() if len(node.inputs) > 1 else list(attr(node, "pads"))
    r = len(pads) // 2
    in_dims = static_dims(env.x, "Pad input")
    axes = [a for a in range(r) if pads[a] or pads[a + r]]
    starts = [pads[a] for a in axes]
    ends = [pads[a] + in_dims[a] for a in axes]
    return env.to_first_input(b.op("Slice", env.R, b.ints(starts), b.ints(ends), b.ints(axes)))


def _check_gather(node) -> str | None:
    if const_array(node.inputs[1]) is None:
        return "the indices are computed at run time"
    data = dims(node.inputs[0])
    axis = attr(node, "axis", 0) % max(len(data), 1)
    if data[axis] is None:
        return "it gathers along a dynamic axis (the batch axis?)"
    if np.ndim(const_array(node.inputs[1])) > 1 and None in data[axis + 1:]:
        return "the data has dynamic dimensions after the gathered axis"
    return None


@defrule("Gather", STRUCTURAL, "gradient", keeps_zeros=True, check=_check_gather)
def gather_adjoint(env: Env):
    """Gather with constant indices i (the CLS token, the last position, a slice of heads) picks rows: its
    adjoint sums R into the picked rows, R_x[…, j, …] = Σ_{k: i_k = j} R[…, k, …]. Written as a product with
    the one-hot matrix M [K, D] (M[k, i_k] = 1) along the gathered axis, so repeated indices add up."""
    b, node = env.b, env.node
    data = dims(env.x)
    axis = attr(node, "axis", 0) % len(data)
    index = const_array(node.inputs[1])
    if np.ndim(index) == 0:  # one row (a CLS token, q/k/v of a packed projection): pad R back around it
        i = int(index) % data[axis]
        pads = [0] * (2 * len(data))
        pads[axis], pads[axis + len(data)] = i, data[axis] - i - 1
        return env.to_first_input(b.op("Pad", b.op("Unsqueeze", env.R, b.ints([axis])), b.ints(pads)))
    picked = index.astype(np.int64).reshape(-1) % data[axis]
    onehot = np.zeros((picked.size, data[axis]), np.float32)
    onehot[np.arange(picked.size), picked] = 1.0
    # R: data[:axis] + indices' shape + data[axis + 1:] → data[:axis] + [K] + data[axis + 1:], axis moved last
    # (1-d indices: R has that shape already, and its later axes may be dynamic, the batch behind a Transpose)
    R = env.R if np.ndim(index) == 1 else b.op("Reshape", env.R, b.ints([0] * axis + [picked.size] + data[axis + 1:]))
    last = len(data) - 1
    perm = [a for a in range(len(data)) if a != axis] + [axis]
    moved = b.op("MatMul", b.op("Transpose", R, perm=perm), b.const(onehot))
    return env.to_first_input(b.op("Transpose", moved, perm=[int(p) for p in np.argsort(perm)]) if axis != last
                              else moved)


@defrule("Expand", STRUCTURAL, "gradient", keeps_zeros=True)
def expand_adjoint(env: Env):
    """y = x broadcast to a shape: R_x sums R over the broadcast axes."""
    return env.to_first_input(unbroadcast(env, env.R, env.x))


@defrule("Where", STRUCTURAL, "gradient", keeps_zeros=True)
def where_adjoint(env: Env):
    """y = where(c, a, b), c a mask the explained input does not reach (boolean values carry no relevance):
    R_a = R where c, R_b = R elsewhere. A constant branch (a −∞ fill of masked attention scores, the zero of
    the NaN guard after a softmax) takes the relevance of the positions it fills: a bias."""
    b, node = env.b, env.node
    cond, zero = node.inputs[0], b.scalar(0.0)
    out = [None, None, None]
    for i, picked in ((1, (env.R, zero)), (2, (zero, env.R))):
        share = b.op("Where", cond, *picked)
        if not is_fixed(node.inputs[i]):
            out[i] = unbroadcast(env, share, node.inputs[i])
        elif env.conserving:  # a constant operand is a bias
            out[i] = b.sum_per_sample(share, rank(env.y))
    return out


def _check_tile(node) -> str | None:
    repeats = const_array(node.inputs[1])
    if repeats is None:
        return "repeats are computed at run time"
    x = node.inputs[0]
    if x.shape is not None and len(x.shape) > 0 and not isinstance(x.shape[0], int) and int(repeats[0]) != 1:
        return "it repeats the batch axis"
    return None


@defrule("Tile", STRUCTURAL, "gradient", keeps_zeros=True, check=_check_tile)
def tile_adjoint(env: Env):
    """y = tile(x, r): y[i₁, i₂, …] = x[i₁ mod d₁, i₂ mod d₂, …], r_k copies along each axis k. R_x sums the copies:
    R reshaped to [r₁, d₁, r₂, d₂, …] (an axis k with r_k = 1 stays d_k), then summed over the r axes."""
    b = env.b
    in_dims = static_dims(env.x, "Tile input")
    repeats = [int(r) for r in const_array(env.node.inputs[1])]
    split, copies = [], []
    for d, r in zip(in_dims, repeats):
        if r != 1:
            copies.append(len(split))
            split.append(r)
        split.append(d)
    if not copies:
        return env.to_first_input(env.R)
    return env.to_first_input(b.op("ReduceSum", b.op("Reshape", env.R, b.ints(split)), b.ints(copies), keepdims=0))


defsign(("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Pad", "Gather",
         "Expand", "Where", "Tile", "Identity"), PRESERVES)
