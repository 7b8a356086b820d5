"""Rules for pooling and mean reductions.

Average pooling, global average pooling and ReduceMean are linear maps z = A·x without parameters:

- ``gradient``: R_x = Aᵀ·R.
- ``norm``:     R_x = x ⊙ Aᵀ·(R ⊘ stab(z)) with the fixed ``stabilizer`` (zennit's ``Norm`` rule, the LRP
  composites' default); ``epsilon`` / ``normalized`` use the user's ε instead, ``zero`` none.

Max pooling:

- ``gradient``: relevance goes to the winner of each window ("winner takes all" in the per-layer-type view
  of LRP), as one ``relgraph.MaxPoolRoute`` call (``functions.py``). Windows overlap in ResNet's k3 s2 p1
  stem, so its body routes with ``ScatterElements(reduction=add)`` over the pooling indices: MaxUnpool
  would overwrite instead of summing.
- ``radial`` (the per-layer-type view of LRP): zero is the reference point. In a window with a positive
  maximum each positive a_i gets the share a_i / Σ_{a_j>0} a_j and negatives get nothing; in an all-negative window
  the share is (1/a_i) / Σ_j (1/a_j). Overlapping windows sum their shares.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import attr, const_array, dims, rank, static_dims
from .functions import maxpool_route
from .linear import conv_pads, output_padding
from .registry import LINEAR, MAX, PRESERVES, Env, defrule, defsign

# ------------------------------------------------------------------------------------------- transposes


def _window_counts(in_dims, out_dims, kernel, strides, pads, dilations, include_pad):
    """How many elements each output of AveragePool divides by (ONNX semantics), as [1, 1, *out]."""
    n = len(kernel)
    per_axis = []
    for i in range(n):
        lo, hi = (-pads[i], in_dims[i] + pads[i + n]) if include_pad else (0, in_dims[i])
        starts = np.arange(out_dims[i]) * strides[i] - pads[i]
        taps = starts[:, None] + np.arange(kernel[i])[None, :] * dilations[i]
        per_axis.append(((taps >= lo) & (taps < hi)).sum(1))
    counts = per_axis[0]
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    return counts.reshape((1, 1) + tuple(out_dims)).astype(np.float32)


def pool_geometry(env: Env) -> dict:
    """Window geometry of a pooling node: dims, kernel, strides, dilations, explicit pads, and the
    transposed conv's pads/output_padding (ceil_mode surplus cropped through the end pads)."""
    node = env.node
    in_dims = static_dims(env.x, f"{node.op_type} input")
    out_dims = static_dims(env.y, f"{node.op_type} output")[2:]
    kernel = list(attr(node, "kernel_shape"))
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    pads = conv_pads(node, in_dims[2:], kernel, strides, dilations)
    op = output_padding(in_dims[2:], out_dims, kernel, strides, dilations, pads)
    return dict(in_dims=in_dims, out_dims=out_dims, kernel=kernel, strides=strides, dilations=dilations,
                pads=pads, t_pads=pads[:n] + [pads[n + i] + max(0, -o) for i, o in enumerate(op)],
                output_padding=[max(0, o) for o in op])


def window_sum_transpose(env: Env, g, geo: dict):
    """Σᵀ: spread each window's value back over its elements (a depthwise ConvTranspose with ones)."""
    channels = geo["in_dims"][1]
    ones = env.b.const(np.ones([channels, 1, *geo["kernel"]], np.float32))
    return env.b.op("ConvTranspose", g, ones, strides=geo["strides"], pads=geo["t_pads"],
                    dilations=geo["dilations"], group=channels, output_padding=geo["output_padding"])


def avgpool_transpose(env: Env, g):
    node, b = env.node, env.b
    geo = pool_geometry(env)
    counts = _window_counts(geo["in_dims"][2:], geo["out_dims"], geo["kernel"], geo["strides"], geo["pads"],
                            geo["dilations"], bool(attr(node, "count_include_pad", 0)))
    scaled = b.op("Div", g, b.const(counts)) if np.any(counts != counts.flat[0]) else \
        b.op("Mul", g, b.scalar(1.0 / counts.flat[0]))
    return window_sum_transpose(env, scaled, geo)


def reduce_axes(node: ir.Node, r: int) -> list[int]:
    """The axes a GlobalAveragePool or ReduceMean of a rank-``r`` input averages over: every axis after the
    channels; ReduceMean's ``axes`` (attribute, or a constant input), or all of them when it names none
    (none at all under ``noop_with_empty_axes``)."""
    if node.op_type == "GlobalAveragePool":
        return list(range(2, r))
    axes = attr(node, "axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_array(node.inputs[1]).tolist()
    if axes is None:
        return [] if attr(node, "noop_with_empty_axes", 0) else list(range(r))
    return sorted(a % r for a in axes)


def mean_transpose(env: Env, g):
    """Aᵀ·g for a mean over ``axes``: spread g back over the reduced axes, divided by their size."""
    b = env.b
    axes = reduce_axes(env.node, rank(env.x))
    in_dims = dims(env.x)
    if env.node.op_type == "ReduceMean" and not attr(env.node, "keepdims", 1):
        g = b.op("Unsqueeze", g, b.ints(axes))
    count = int(np.prod([in_dims[a] for a in axes]))
    return b.op("Expand", b.op("Mul", g, b.scalar(1.0 / count)), b.op("Shape", env.x))


TRANSPOSES = {"AveragePool": avgpool_transpose, "GlobalAveragePool": mean_transpose, "ReduceMean": mean_transpose}


def _check_mean(node) -> str | None:
    if node.op_type == "AveragePool":  # its windows' geometry is checked where it is read (static_dims)
        return None
    if node.op_type == "ReduceMean" and len(node.inputs) > 1 and node.inputs[1] is not None \
            and const_array(node.inputs[1]) is None:
        return "axes are not constant"
    shape = node.inputs[0].shape
    if shape is not None and any(not isinstance(shape[a], int) for a in reduce_axes(node, len(shape))):
        return "averages over a dynamic axis (the batch, or a height or width not fixed: --input-shape)"
    return None


@defrule(tuple(TRANSPOSES), LINEAR, "gradient", check=_check_mean)
def mean_gradient(env: Env):
    return env.to_first_input(TRANSPOSES[env.node.op_type](env, env.R))


@defrule(tuple(TRANSPOSES), LINEAR, "norm", "epsilon", "normalized", "zero", stabilized=True,
         multiplies_input=True)
def mean_epsilon(env: Env):
    b = env.b
    s = b.op("Div", env.R, env.stabilized_output(env.epsilon))
    return env.to_first_input(b.op("Mul", env.x, TRANSPOSES[env.node.op_type](env, s)))


# ------------------------------------------------------------------------------------------- max


def _check_max(node) -> str | None:
    if attr(node, "storage_order", 0):
        return "storage_order=1 is not supported"
    return None


def max_geometry(node, x) -> dict:
    """The MaxPool's window as the attributes of ``relgraph.MaxPoolRoute``: pads made explicit (auto_pad
    resolved on x's static size where it needs one), every default spelled out."""
    kernel = list(attr(node, "kernel_shape"))
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    auto = attr(node, "auto_pad", "NOTSET")
    in_dims = static_dims(x, "MaxPool input")[2:] if auto not in ("NOTSET", b"NOTSET", "VALID", b"VALID") else None
    return dict(kernel_shape=kernel, strides=strides, pads=conv_pads(node, in_dims, kernel, strides, dilations),
                dilations=dilations, ceil_mode=int(attr(node, "ceil_mode", 0)))


@defrule("MaxPool", MAX, "gradient", check=_check_max, keeps_zeros=True)
def maxpool_gradient(env: Env):
    """R_x[i] = Σ_{windows won by i} R, the winner being the first maximum of its window (the pooling
    index): one ``relgraph.MaxPoolRoute`` call."""
    return [maxpool_route(env, max_geometry(env.node, env.x))]


def _window_sum(env: Env):
    """(forward, transpose) of the window sum Σ_{i ∈ window} v_i with MaxPool's geometry (padding adds 0)."""
    geo = pool_geometry(env)
    ones = env.b.const(np.ones([geo["in_dims"][1], 1, *geo["kernel"]], np.float32))

    def forward(v):  # the end pads grow with ceil_mode so the sum yields as many windows as the pool
        return env.b.op("Conv", v, ones, pads=geo["t_pads"], strides=geo["strides"], dilations=geo["dilations"],
                        group=geo["in_dims"][1])

    return forward, lambda s: window_sum_transpose(env, s, geo)


@defrule("MaxPool", MAX, "radial", keeps_zeros=True)
def maxpool_radial(env: Env):
    """R_x = a⁺ ⊙ Σᵀ(R·[b>0] ⊘ Σa⁺) + [a<0]/a ⊙ Σᵀ(R·[b<0] ⊘ Σ_{a<0} 1/a), Σ the window sum."""
    b, x, y = env.b, env.x, env.y
    forward, transpose = _window_sum(env)
    zero = b.scalar(0.0)
    eps = env.params.stabilizer
    positive = b.positive(x)
    negative = b.op("Less", x, zero)
    inverse = b.op("Where", negative, b.op("Div", b.scalar(1.0), b.op("Where", negative, x, b.scalar(-1.0))), zero)
    up = b.op("Where", b.op("Greater", y, zero), env.R, zero)
    down = b.op("Where", b.op("Less", y, zero), env.R, zero)
    share_up = b.op("Mul", positive, transpose(b.op("Div", up, b.stabilize(forward(positive), eps))))
    share_down = b.op("Mul", inverse, transpose(b.op("Div", down, b.stabilize(forward(inverse), eps))))
    return [b.op("Add", share_up, share_down)]


defsign(("MaxPool", *TRANSPOSES), PRESERVES)
