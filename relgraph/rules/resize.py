"""Rules for Resize: a linear map that acts on each axis alone.

Resize in every mode (nearest, linear, cubic; any coordinate transformation, antialias, a crop-and-resize
ROI) is separable: y = x ×₁ A₁ ×₂ A₂ ⋯, with A_k the [out_k, in_k] matrix of the 1-d resize along axis k.
Each A_k is built at compile time by running the node's own resize, with its attributes, on an identity
basis along that axis in float64 (onnx's reference evaluator, the specification's numpy code): column i of
A_k is the image of e_i, exactly. The Upsample op of opsets 7–9 and the Resize of opset 10 reach the rules as
Resize, written by onnx's version converter (``relgraph.compiler`` keeps their coordinate mapping).

- ``gradient``: R_x = R ×₁ A₁ᵀ ×₂ A₂ᵀ ⋯, the adjoint: one MatMul with a constant matrix per resized axis.
- ``norm`` / ``epsilon`` / ``normalized`` / ``zero`` (linear and cubic modes): R_x = x ⊙ Aᵀ(R ⊘ stab(z)), z = Ax
  the node's output, as for average pooling. Linear interpolation is a non-negative average, so each input
  gets its share of every output it enters; cubic weights have negative lobes, and shares of either sign.
- Nearest picks one input per output: A is 0/1 with one 1 per row, a structural op, and x ⊙ Aᵀ(R ⊘ Ax) = Aᵀ·R
  for every rule. Its relevance is the adjoint under all of them: copies sum, and it conserves exactly, as
  the same upsampling spelled Reshape → Expand → Reshape does.

Refused in one line: scales or sizes computed at run time (other than the batch entry of sizes, which
torch writes as the input's own Shape), a resize of the batch axis, ``keep_aspect_ratio_policy`` other than
``stretch`` with sizes, and an affine resize (crop-and-resize with a non-zero extrapolation value outside the ROI).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from ..errors import RelgraphError
from ..graph import attr, const_array, static_dims
from .registry import LINEAR, PRESERVES, STRUCTURAL, Env, defrule, defsign

# the attributes that define the 1-d resize along one axis (``axes`` and ``keep_aspect_ratio_policy`` are
# resolved into per-axis scales and sizes before)
AXIS_ATTRIBUTES = ("mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                   "extrapolation_value", "nearest_mode", "antialias")
REFERENCE_OPSET = 19  # the newest Resize; its defaults are those of opsets 11–18


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def resize_kind(node: ir.Node) -> str:
    """Nearest resizing moves values (structural); linear and cubic ones mix them (linear)."""
    return STRUCTURAL if _text(attr(node, "mode", "nearest")) == "nearest" else LINEAR


@functools.lru_cache(maxsize=512)
def axis_matrix(settings: tuple, n_in: int, scale: float | None, size: int | None,
                roi: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) of the 1-d resize y = A·x + b of a length-``n_in`` axis, in float64: the resize run on the rows
    of [I; 0]. ``settings``: the node's attributes of ``AXIS_ATTRIBUTES`` as (name, value) pairs; ``scale`` or
    ``size``: the axis's; ``roi``: (start, end) for ``tf_crop_and_resize``. b is non-zero only where a crop
    extrapolates a non-zero value."""
    basis = np.vstack([np.eye(n_in), np.zeros((1, n_in))])
    inits = {"x": basis, "roi": None if roi is None else np.array([0.0, roi[0], 1.0, roi[1]]),
             "scales": None if scale is None else np.array([1.0, scale], np.float32),
             "sizes": None if size is None else np.array([n_in + 1, size], np.int64)}
    names = [k if v is not None else "" for k, v in inits.items()]
    while names[-1] == "":
        names.pop()
    node = onnx.helper.make_node("Resize", names, ["y"], **dict(settings))
    graph = onnx.helper.make_graph(
        [node], "axis", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items() if v is not None])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", REFERENCE_OPSET)])
    y = ReferenceEvaluator(model).run(None, {})[0]
    offset = y[n_in]
    return np.ascontiguousarray((y[:n_in] - offset).T), offset


def settings_of(attributes: dict) -> tuple:
    """The hashable per-axis settings from a name → value dict of the node's attributes."""
    return tuple(sorted((k, _text(v)) for k, v in attributes.items() if k in AXIS_ATTRIBUTES))


def per_axis_arguments(attributes: dict, rank: int, roi, scales, sizes):
    """Full-rank (scales, sizes, roi pairs) from the node's inputs and its ``axes`` attribute (opset 18)."""
    axes = attributes.get("axes")
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    full_scales = full_sizes = None
    if scales is not None and np.size(scales):
        full_scales = [None] * rank
        for a, s in zip(axes, np.asarray(scales).reshape(-1).tolist()):
            full_scales[a] = float(s)
    elif sizes is not None and np.size(sizes):
        full_sizes = [None] * rank
        for a, s in zip(axes, np.asarray(sizes).reshape(-1).tolist()):
            full_sizes[a] = s
    pairs = [None] * rank
    if _text(attributes.get("coordinate_transformation_mode")) == "tf_crop_and_resize" and roi is not None \
            and np.size(roi):
        flat = np.asarray(roi, np.float64).reshape(-1).tolist()
        for i, a in enumerate(axes):
            pairs[a] = (flat[i], flat[i + len(axes)])
    return full_scales, full_sizes, pairs


def resize_matrices(attributes: dict, in_dims: list, roi, scales, sizes) -> dict[int, np.ndarray]:
    """axis → A_k (float64, [out_k, in_k]) for every axis the resize changes; axes of unknown size (−1 or
    None: the batch) must be left alone. Raises RelgraphError for what the rules cannot take."""
    rank = len(in_dims)
    full_scales, full_sizes, pairs = per_axis_arguments(attributes, rank, roi, scales, sizes)
    if full_scales is None and full_sizes is None:
        raise RelgraphError("neither scales nor sizes are given")
    policy = _text(attributes.get("keep_aspect_ratio_policy", "stretch"))
    if full_sizes is not None and policy != "stretch":
        raise RelgraphError(f"keep_aspect_ratio_policy '{policy}' is not supported (stretch only)")
    settings = settings_of(attributes)
    out = {}
    for k, n in enumerate(in_dims):
        scale = None if full_scales is None else full_scales[k]
        size = None if full_sizes is None else full_sizes[k]
        # the reference's own test for an axis left alone
        if (scale is None or scale == 1.0) and (size is None or size == n) and pairs[k] in (None, (0.0, 1.0)):
            continue
        if n is None or n < 0:
            raise RelgraphError(f"it resizes axis {k}, whose size is not static (the batch axis?)")
        try:
            A, b = axis_matrix(settings, int(n), scale, None if size is None else int(size), pairs[k])
        except Exception as exc:  # the specification's evaluator refuses the attributes
            raise RelgraphError(f"onnx's reference Resize refuses it: {str(exc).splitlines()[0]}") from None
        if np.any(b != 0):
            raise RelgraphError("it extrapolates a non-zero value outside the crop (an affine map, not a linear "
                                "one)")
        if A.shape[0] != n or not np.array_equal(A, np.eye(n)):
            out[k] = A
    return out


# ------------------------------------------------------------------------------------------- the node


def _shape_entries(v: ir.Value | None, depth: int = 0):
    """A 1-d int64 value as a list of entries: ints, or (value, axis) for a dimension of ``value`` that is not
    static; None where the value is no constant and no Shape/Slice/Gather/Concat/Cast/Unsqueeze of one.
    torch's export of ``F.interpolate(size=…)`` computes sizes as Concat(Shape(x)[:2], [h, w])."""
    if v is None or depth > 8:
        return None
    array = const_array(v)
    if array is not None:
        return [int(e) for e in np.asarray(array).reshape(-1)]
    node = v.producer()
    if node is None:
        return None
    op = node.op_type
    if op == "Shape":
        data = node.inputs[0]
        if data.shape is None:
            return None
        entries = [d if isinstance(d, int) else (data, i) for i, d in enumerate(data.shape)]
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return entries[start:end]
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        return _shape_entries(node.inputs[0], depth + 1)
    if op == "Concat":
        parts = [_shape_entries(p, depth + 1) for p in node.inputs]
        return None if any(p is None for p in parts) else sum(parts, [])
    if op in ("Slice", "Gather"):
        entries = _shape_entries(node.inputs[0], depth + 1)
        args = [const_array(a) for a in node.inputs[1:]]
        if entries is None or any(a is None for a in args):
            return None
        if op == "Gather":
            return [entries[int(i)] for i in np.asarray(args[0]).reshape(-1)]
        start, end = int(args[0].reshape(-1)[0]), int(args[1].reshape(-1)[0])
        step = int(args[3].reshape(-1)[0]) if len(args) > 3 else 1
        return entries[slice(start, end, step)]
    return None


def node_arguments(node: ir.Node):
    """(roi, scales, sizes) of a Resize node as arrays (or None); a sizes entry that is the batch of the
    node's own input (through its Shape) is −1. Raises RelgraphError where they are computed at run time."""
    x = node.inputs[0]
    args = list(node.inputs[1:]) + [None] * (4 - len(node.inputs))
    roi, scales, sizes = args[:3]
    out = []
    for name, v in (("roi", roi), ("scales", scales)):
        array = None if v is None else const_array(v)
        if v is not None and array is None:
            raise RelgraphError(f"its {name} are computed at run time")
        out.append(array)
    if sizes is None:
        return out[0], out[1], None
    entries = _shape_entries(sizes)
    if entries is None:
        raise RelgraphError("its sizes are computed at run time")
    resolved = []
    for e in entries:
        if isinstance(e, tuple):
            data, axis = e
            same_batch = axis == 0 and x.shape is not None and len(x.shape) > 0 and data.shape[0] == x.shape[0]
            if not same_batch:
                raise RelgraphError(f"its sizes depend on a dimension of '{data.name}' that is not static")
            e = -1
        resolved.append(e)
    return out[0], out[1], np.array(resolved, np.int64)


def node_matrices(node: ir.Node) -> dict[int, np.ndarray]:
    """axis → A_k for the node (see :func:`resize_matrices`), checked against the output's static sizes."""
    attributes = {name: a.value for name, a in node.attributes.items()}
    roi, scales, sizes = node_arguments(node)
    in_dims = static_dims(node.inputs[0], "Resize input")
    matrices = resize_matrices(attributes, in_dims, roi, scales, sizes)
    out_dims = node.outputs[0].shape
    for k, A in matrices.items():
        if out_dims is not None and isinstance(out_dims[k], int) and out_dims[k] != A.shape[0]:
            raise RelgraphError(f"axis {k} resizes to {A.shape[0]} by onnx's reference, to {out_dims[k]} by shape "
                                f"inference")
    return matrices


def _check_resize(node: ir.Node) -> str | None:
    try:
        node_matrices(node)
    except RelgraphError as exc:
        return str(exc)
    return None


def resize_transpose(env: Env, g):
    """Aᵀ·g: each resized axis's matrix transposed, applied along that axis (the last one by g·A, the one before
    it by Aᵀ·g, others with the axis reshaped next to the last)."""
    b = env.b
    matrices = node_matrices(env.node)
    current = static_dims(env.y, "Resize output")
    rank = len(current)
    for k in sorted(matrices, reverse=True):
        A = matrices[k].astype(np.float32)
        if k == rank - 1:
            g = b.op("MatMul", g, b.const(A))
        elif k == rank - 2:
            g = b.op("MatMul", b.const(np.ascontiguousarray(A.T)), g)
        else:  # [N, P, out_k, Q] → [N, P, in_k, Q]; 0 keeps the batch
            inner = [0, int(np.prod(current[1:k])), current[k], int(np.prod(current[k + 1:]))]
            moved = b.op("MatMul", b.const(np.ascontiguousarray(A.T)), b.op("Reshape", g, b.ints(inner)))
            current = current[:k] + [A.shape[1]] + current[k + 1:]
            g = b.op("Reshape", moved, b.ints([0] + current[1:]))
        current[k] = A.shape[1]
    return g


@defrule("Resize", resize_kind, "gradient", kinds=STRUCTURAL, check=_check_resize, keeps_zeros=True)
@defrule("Resize", resize_kind, "gradient", kinds=LINEAR, check=_check_resize)
def resize_adjoint(env: Env):
    """R_x = Aᵀ·R (the gradient; for nearest resizing every rule's result)."""
    return env.to_first_input(resize_transpose(env, env.R))


@defrule("Resize", resize_kind, "norm", "epsilon", "normalized", "zero", kinds=LINEAR, stabilized=True,
         multiplies_input=True)
def resize_epsilon(env: Env):
    """R_x = x ⊙ Aᵀ(R ⊘ stab(z)), z = A·x the node's output."""
    b = env.b
    s = b.op("Div", env.R, env.stabilized_output(env.epsilon))
    return env.to_first_input(b.op("Mul", env.x, resize_transpose(env, s)))


# nearest and linear interpolation weights are ≥ 0; cubic ones have negative lobes
defsign("Resize", lambda node: PRESERVES if _text(attr(node, "mode", "nearest")) != "cubic" else None)
