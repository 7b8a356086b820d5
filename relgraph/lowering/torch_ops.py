"""The ONNX ops a launch plan runs as torch ops: one small function per op type, kept in one table.

Every function takes the step's inputs (torch tensors, ``None`` for an absent optional input) and its
attributes (plain Python values, as stored in ``plan.json``) and returns one tensor or a tuple, one per
output. Semantics follow the ONNX operator specification (opset 17–20), so that a plan reproduces
onnxruntime on the explainer it was lowered from: asymmetric pads, ``auto_pad``, ``ceil_mode``, pooling
indices flattened over (N, C, H, W), negative slice steps, ``allowzero``. Shape operands (Reshape's
shape, Slice's starts…) are read back with ``tolist()``; the lowering folds most of them into constants.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..rules.resize import resize_matrices

TORCH_OPS: dict = {}

# attribute values the table does not implement: op type → attrs → the reason, or None
CHECKS: dict = {
    "MaxPool": lambda attrs: "storage_order=1" if attrs.get("storage_order", 0) else None,
    "ConvTranspose": lambda attrs: "output_shape (give pads)" if "output_shape" in attrs else None,
    "BatchNormalization": lambda attrs: "training_mode=1" if attrs.get("training_mode", 0) else None,
}

# ONNX TensorProto element types → torch dtypes (what Cast and ConstantOfShape need)
ONNX_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
               9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def op(*names):
    def register(fn):
        for name in names:
            TORCH_OPS[name] = fn
        return fn
    return register


def as_tensor(value, device=None) -> torch.Tensor:
    """A tensor attribute (numpy array) or a Python scalar/list as a torch tensor."""
    if isinstance(value, np.ndarray):  # copied: attribute arrays are read-only views of the plan
        return torch.from_numpy(np.array(value, copy=True)).to(device)
    return torch.tensor(value, device=device)


def ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ------------------------------------------------------------------------------------------- elementwise

_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Equal": torch.eq,
           "Greater": torch.gt, "Less": torch.lt, "GreaterOrEqual": torch.ge, "LessOrEqual": torch.le,
           "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor}
_UNARY = {"Neg": torch.neg, "Abs": torch.abs, "Sign": torch.sign, "Sqrt": torch.sqrt, "Exp": torch.exp,
          "Log": torch.log, "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
          "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Not": torch.logical_not,
          "Erf": torch.erf, "Softplus": F.softplus, "Softsign": F.softsign}

for _name, _fn in _BINARY.items():
    TORCH_OPS[_name] = lambda inputs, attrs, fn=_fn: fn(inputs[0], inputs[1])
for _name, _fn in _UNARY.items():
    TORCH_OPS[_name] = lambda inputs, attrs, fn=_fn: fn(inputs[0])


@op("Div")
def div(inputs, attrs):
    a, b = inputs
    # ONNX integer division truncates toward zero
    return torch.div(a, b, rounding_mode="trunc") if not a.is_floating_point() else a / b


def _variadic(fn, mean=False):
    def run(inputs, attrs):
        out = inputs[0]
        for v in inputs[1:]:
            out = fn(out, v)
        return out / len(inputs) if mean else out
    return run


TORCH_OPS.update(Min=_variadic(torch.minimum), Max=_variadic(torch.maximum), Sum=_variadic(torch.add),
                 Mean=_variadic(torch.add, mean=True))


@op("Where")
def where(inputs, attrs):
    return torch.where(inputs[0], inputs[1], inputs[2])


@op("IsInf")
def is_inf(inputs, attrs):
    x = inputs[0]
    positive, negative = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    return (torch.isposinf(x) & bool(positive)) | (torch.isneginf(x) & bool(negative))


@op("IsNaN")
def is_nan(inputs, attrs):
    return torch.isnan(inputs[0])


@op("Identity")
def identity(inputs, attrs):
    return inputs[0]


@op("LeakyRelu")
def leaky_relu(inputs, attrs):
    return F.leaky_relu(inputs[0], attrs.get("alpha", 0.01))


@op("Elu")
def elu(inputs, attrs):
    return F.elu(inputs[0], attrs.get("alpha", 1.0))


@op("Selu")
def selu(inputs, attrs):
    x = inputs[0]
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@op("Celu")
def celu(inputs, attrs):
    return F.celu(inputs[0], attrs.get("alpha", 1.0))


@op("ThresholdedRelu")
def thresholded_relu(inputs, attrs):
    x = inputs[0]
    return torch.where(x > attrs.get("alpha", 1.0), x, torch.zeros_like(x))


@op("Shrink")
def shrink(inputs, attrs):
    x, lambd, bias = inputs[0], attrs.get("lambd", 0.5), attrs.get("bias", 0.0)
    return torch.where(x > lambd, x - bias, torch.where(x < -lambd, x + bias, torch.zeros_like(x)))


@op("HardSigmoid")
def hard_sigmoid(inputs, attrs):
    return torch.clamp(attrs.get("alpha", 0.2) * inputs[0] + attrs.get("beta", 0.5), 0, 1)


@op("HardSwish")
def hard_swish(inputs, attrs):
    return inputs[0] * torch.clamp(inputs[0] / 6 + 0.5, 0, 1)


@op("Clip")
def clip(inputs, attrs):
    x, low, high = (inputs + [None, None])[:3]
    if low is not None:
        x = torch.maximum(x, low.to(x.dtype))
    if high is not None:
        x = torch.minimum(x, high.to(x.dtype))
    return x


@op("Cast")
def cast(inputs, attrs):
    return inputs[0].to(ONNX_DTYPES[attrs["to"]])


@op("BatchNormalization")
def batch_norm(inputs, attrs):
    """Inference form: y = (x − mean) / √(var + ε) · scale + B, per channel (axis 1)."""
    x, scale, bias, mean, var = inputs[:5]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    inv = torch.rsqrt(var + attrs.get("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * (inv * scale).reshape(shape) + bias.reshape(shape)


@op("LayerNormalization")
def layer_norm(inputs, attrs):
    """y = (x − μ) / √(σ² + ε) · Scale + B over the axes from ``axis`` (default −1) to the last; Scale and B
    broadcast to x, so they may vary along the leading axes too (a group norm's γ per channel)."""
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = _axis(attrs.get("axis", -1), x.dim())
    shape, epsilon = x.shape[axis:], attrs.get("epsilon", 1e-5)
    if all(p is None or p.dim() <= len(shape) for p in (scale, bias)):
        return F.layer_norm(x, shape, scale.expand(shape), None if bias is None else bias.expand(shape), epsilon)
    y = F.layer_norm(x, shape, eps=epsilon) * scale
    return y if bias is None else y + bias


# ------------------------------------------------------------------------------------------- reductions


def _reduce_axes(inputs, attrs, rank):
    axes = attrs.get("axes")
    if axes is None and len(inputs) > 1 and inputs[1] is not None:
        axes = ints(inputs[1])
    if not axes:
        return None if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return [_axis(a, rank) for a in axes]


def _reduction(fn):
    def run(inputs, attrs):
        x = inputs[0]
        axes = _reduce_axes(inputs, attrs, x.dim())
        if axes is None:
            return x
        keep = bool(attrs.get("keepdims", 1))
        return fn(x, axes, keep)
    return run


TORCH_OPS.update(
    ReduceSum=_reduction(lambda x, axes, keep: torch.sum(x, dim=axes, keepdim=keep)),
    ReduceMean=_reduction(lambda x, axes, keep: torch.mean(x, dim=axes, keepdim=keep)),
    ReduceMax=_reduction(lambda x, axes, keep: torch.amax(x, dim=axes, keepdim=keep)),
    ReduceMin=_reduction(lambda x, axes, keep: torch.amin(x, dim=axes, keepdim=keep)),
)


def _arg(largest: bool):
    def run(inputs, attrs):
        x = inputs[0]
        axis = _axis(attrs.get("axis", 0), x.dim())
        keep = bool(attrs.get("keepdims", 1))
        if attrs.get("select_last_index", 0):  # the last of equal extremes: search the flipped axis
            flipped = x.flip(axis)
            idx = (flipped.argmax if largest else flipped.argmin)(axis, keepdim=keep)
            return x.shape[axis] - 1 - idx
        return (x.argmax if largest else x.argmin)(axis, keepdim=keep)
    return run


TORCH_OPS.update(ArgMax=_arg(True), ArgMin=_arg(False))


TORCH_OPS.update(Softmax=lambda inputs, attrs: torch.softmax(inputs[0], attrs.get("axis", -1)),
                 LogSoftmax=lambda inputs, attrs: torch.log_softmax(inputs[0], attrs.get("axis", -1)))


# ------------------------------------------------------------------------------------------- structure


@op("Shape")
def shape(inputs, attrs):
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64, device=inputs[0].device)


@op("Size")
def size(inputs, attrs):
    return torch.tensor(inputs[0].numel(), dtype=torch.int64, device=inputs[0].device)


@op("Range")
def range_(inputs, attrs):
    """start, start + delta, … up to limit (excluded), of the inputs' type: position ids over a dynamic sequence."""
    start, limit, delta = (v.reshape(()) for v in inputs)
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@op("Reshape")
def reshape(inputs, attrs):
    x, target = inputs[0], ints(inputs[1])
    if not attrs.get("allowzero", 0):  # 0 copies the input's dimension
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


@op("Flatten")
def flatten(inputs, attrs):
    x = inputs[0]
    axis = _axis(attrs.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Transpose")
def transpose(inputs, attrs):
    x = inputs[0]
    return x.permute(attrs.get("perm", list(range(x.dim()))[::-1]))


@op("Squeeze")
def squeeze(inputs, attrs):
    x = inputs[0]
    axes = ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else attrs.get("axes")
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(_axis(a, x.dim()) for a in axes))


@op("Unsqueeze")
def unsqueeze(inputs, attrs):
    x = inputs[0]
    axes = ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else attrs["axes"]
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Concat")
def concat(inputs, attrs):
    return torch.cat([v for v in inputs if v is not None], dim=attrs["axis"])


@op("Split")
def split(inputs, attrs):
    x = inputs[0]
    axis = _axis(attrs.get("axis", 0), x.dim())
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = ints(inputs[1])
    else:
        count = attrs["num_outputs"]
        chunk = -(-x.shape[axis] // count)  # the last part is the smaller one
        sizes = [chunk] * (count - 1) + [x.shape[axis] - chunk * (count - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


@op("Slice")
def slice_(inputs, attrs):
    """ONNX Slice: starts/ends clamped per axis, negative steps allowed (torch slicing has none)."""
    x, starts, ends = inputs[0], ints(inputs[1]), ints(inputs[2])
    axes = ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.dim())
        n = x.shape[axis]
        start, end = start + n if start < 0 else start, end + n if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), n), min(max(end, 0), n)
        else:
            start, end = min(max(start, -1), n - 1), min(max(end, -1), n - 1)
        index = torch.arange(start, end, step, device=x.device)
        x = x.index_select(axis, index) if step != 1 else x.narrow(axis, start, max(end - start, 0))
    return x


@op("Gather")
def gather(inputs, attrs):
    x, idx = inputs[0], inputs[1].long()
    axis = _axis(attrs.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


@op("GatherND")
def gather_nd(inputs, attrs):
    """out[b…, i…] = x[b…, idx[b…, i…, :]] with b the first ``batch_dims`` axes (ONNX GatherND)."""
    x, idx = inputs[0], inputs[1].long()
    b = attrs.get("batch_dims", 0)
    batch, k = x.shape[:b], idx.shape[-1]
    idx = torch.where(idx < 0, idx + torch.tensor(x.shape[b:b + k], device=idx.device), idx)
    flat_x = x.reshape(-1, *x.shape[b:])                                    # [B, d…]
    flat_idx = idx.reshape(flat_x.shape[0], -1, k)                           # [B, M, k]
    rows = torch.arange(flat_x.shape[0], device=x.device)[:, None].expand(flat_idx.shape[:2])
    picked = flat_x[(rows, *flat_idx.unbind(-1))]                            # [B, M, d_rest…]
    return picked.reshape(*batch, *idx.shape[b:-1], *x.shape[b + k:])


@op("GatherElements")
def gather_elements(inputs, attrs):
    x, idx = inputs[0], inputs[1].long()
    axis = _axis(attrs.get("axis", 0), x.dim())
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


@op("ScatterElements")
def scatter_elements(inputs, attrs):
    """data with updates written (or reduced) at idx along ``axis``; ``add`` sums duplicates, which is
    what routing max-pooling relevance through overlapping windows needs."""
    data, idx, updates = inputs[0], inputs[1].long(), inputs[2]
    axis = _axis(attrs.get("axis", 0), data.dim())
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    reduction = attrs.get("reduction", "none")
    if reduction == "none":
        return data.scatter(axis, idx, updates)
    if reduction == "add":
        return data.scatter_add(axis, idx, updates)
    name = {"mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return data.scatter_reduce(axis, idx, updates, name, include_self=True)


@op("Expand")
def expand(inputs, attrs):
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(inputs[1]))))


@op("Tile")
def tile(inputs, attrs):
    return inputs[0].repeat(ints(inputs[1]))


@op("Resize")
def resize(inputs, attrs):
    """Resize as the compiler reads it (:mod:`relgraph.rules.resize`): one constant matrix per resized axis,
    built by onnx's reference evaluator on an identity basis, applied along that axis (exact for every mode)."""
    x = inputs[0]
    roi, scales, sizes = [None if v is None or v.numel() == 0 else v.cpu().numpy() for v in (inputs + [None] * 3)[1:4]]
    for axis, A in resize_matrices(attrs, list(x.shape), roi, scales, sizes).items():
        matrix = torch.from_numpy(A).to(x.dtype).to(x.device)
        x = torch.movedim(torch.movedim(x, axis, -1) @ matrix.T, -1, axis)
    return x


@op("ConstantOfShape")
def constant_of_shape(inputs, attrs):
    value = attrs.get("value")
    fill = as_tensor(value).reshape(()) if value is not None else torch.tensor(0.0)
    return torch.full(ints(inputs[0]), fill.item(), dtype=fill.dtype, device=inputs[0].device)


@op("Constant")
def constant(inputs, attrs):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            v = attrs[key]
            return as_tensor(v) if isinstance(v, np.ndarray) else \
                torch.tensor(v, dtype=torch.float32 if "float" in key else torch.int64)
    raise ValueError(f"Constant without a supported value attribute: {sorted(attrs)}")


@op("OneHot")
def one_hot(inputs, attrs):
    idx, depth, values = inputs
    depth = int(depth.reshape(-1)[0])
    idx = torch.where(idx < 0, idx + depth, idx).long()
    hot = F.one_hot(idx, depth)  # the new axis is last; ONNX puts it at ``axis``
    hot = hot.movedim(-1, _axis(attrs.get("axis", -1), idx.dim() + 1))
    return torch.where(hot.bool(), values[1], values[0])


@op("Pad")
def pad(inputs, attrs):
    x, pads = inputs[0], ints(inputs[1])
    value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    axes = ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(x.dim()))
    n = len(axes)
    full = [0] * (2 * x.dim())
    for i, a in enumerate(axes):
        a = _axis(a, x.dim())
        full[a], full[a + x.dim()] = pads[i], pads[i + n]
    mode = attrs.get("mode", "constant")
    # F.pad lists (begin, end) pairs from the last axis backwards
    torch_pads = [p for a in reversed(range(x.dim())) for p in (full[a], full[a + x.dim()])]
    if mode == "constant":
        return F.pad(x, torch_pads, value=0.0 if value is None else float(value.reshape(-1)[0]))
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])


# ------------------------------------------------------------------------------------------- linear maps


@op("MatMul")
def matmul(inputs, attrs):
    return torch.matmul(inputs[0], inputs[1])


@op("Gemm")
def gemm(inputs, attrs):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + attrs.get("beta", 1.0) * c


def explicit_pads(auto_pad, pads, in_dims, kernel, strides, dilations) -> list[int]:
    """ONNX pads [begin…, end…] for any ``auto_pad`` (SAME_* pads so that out = ⌈in / stride⌉)."""
    n = len(kernel)
    if auto_pad in (None, "NOTSET"):
        return list(pads) if pads else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for h, k, s, d in zip(in_dims, kernel, strides, dilations):
        total = max(0, (-(-h // s) - 1) * s + d * (k - 1) + 1 - h)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def window(attrs, x, kernel) -> tuple[list, list, list]:
    """(strides, dilations, pads) of a convolution or pooling node on input ``x``."""
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    pads = explicit_pads(attrs.get("auto_pad"), attrs.get("pads"), x.shape[2:], kernel, strides, dilations)
    return strides, dilations, pads


def torch_pads(pads) -> list[int]:
    """ONNX [b1, b2, …, e1, e2, …] → F.pad's (b_last, e_last, …, b1, e1)."""
    n = len(pads) // 2
    return [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def convolution(x, w, bias, strides, pads, dilations, group):
    """Conv with ONNX pads (asymmetric ones are applied first: torch pads both sides equally)."""
    n = w.dim() - 2
    if pads[:n] == pads[n:]:
        return _CONV[n](x, w, bias, strides, pads[:n], dilations, group)
    return _CONV[n](F.pad(x, torch_pads(pads)), w, bias, strides, 0, dilations, group)


@op("Conv")
def conv(inputs, attrs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    strides, dilations, pads = window(attrs, x, list(w.shape[2:]))
    return convolution(x, w, bias, strides, pads, dilations, attrs.get("group", 1))


def conv_transpose(s, w, strides, pads, dilations, group, output_padding, bias=None):
    """ConvTranspose: the full transposed convolution, then ONNX's pads cropped and output_padding added
    at the end (torch limits output_padding to less than the stride; a negative one crops)."""
    n = w.dim() - 2
    full = _CONV_T[n](s, w, None, strides, 0, 0, group, dilations)
    # F.pad with negative amounts crops: begin by −pad, end by −pad + output_padding
    edges = [(-pads[i], -pads[i + n] + output_padding[i]) for i in range(n)]
    out = F.pad(full, [p for i in reversed(range(n)) for p in edges[i]])
    return out if bias is None else out + bias.reshape((1, -1) + (1,) * n)


@op("ConvTranspose")
def conv_transpose_op(inputs, attrs):
    s, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    n = w.dim() - 2
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    output_padding = list(attrs.get("output_padding", [0] * n))
    auto = attrs.get("auto_pad")
    if auto in ("SAME_UPPER", "SAME_LOWER"):  # output = input · stride; the excess is split as the spec says
        kernel = w.shape[2:]
        total = [(h - 1) * st + op_ + ((k - 1) * d + 1) - h * st
                 for h, st, op_, k, d in zip(s.shape[2:], strides, output_padding, kernel, dilations)]
        first = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = first + [t - f for t, f in zip(total, first)]
    else:
        pads = list(attrs.get("pads", [0] * (2 * n))) if auto != "VALID" else [0] * (2 * n)
    return conv_transpose(s, w, strides, pads, dilations, attrs.get("group", 1), output_padding, bias)


# ------------------------------------------------------------------------------------------- pooling


def _pool_geometry(attrs, x):
    """(kernel, strides, dilations, pads) with ceil_mode turned into extra end padding.

    ONNX (as onnxruntime) takes out = ⌈(in + pads − span) / stride⌉ + 1 under ceil_mode, minus one
    when the last window would start past the input and its begin padding.
    """
    kernel = list(attrs["kernel_shape"])
    strides, dilations, pads = window(attrs, x, kernel)
    n = len(kernel)
    extra = [0] * n
    if attrs.get("ceil_mode", 0):
        for i, (h, k, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations)):
            span = d * (k - 1) + 1
            out = -(-(h + pads[i] + pads[i + n] - span) // s) + 1
            if (out - 1) * s >= h + pads[i]:
                out -= 1
            extra[i] = max(0, (out - 1) * s + span - (h + pads[i] + pads[i + n]))
    return kernel, strides, dilations, pads[:n] + [e + x for e, x in zip(pads[n:], extra)], pads


@op("MaxPool")
def max_pool(inputs, attrs):
    """Max pooling; the second output holds the winners' indices flattened over (N, C, spatial…). The
    lowering sets ``indices = 0`` (not an ONNX attribute) where no step reads them: the values alone."""
    x = inputs[0]
    kernel, strides, dilations, pads, _ = _pool_geometry(attrs, x)
    n = len(kernel)
    padded = F.pad(x, torch_pads(pads), value=-math.inf) if any(pads) else x
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    if not attrs.get("indices", 1):
        return pool(padded, kernel, strides, 0, dilations)
    y, idx = pool(padded, kernel, strides, 0, dilations, return_indices=True)
    # idx is flat within each padded plane: back to coordinates of the unpadded input, then flat over all
    coords, flat = [], idx
    for size in reversed(padded.shape[2:]):
        coords.append(flat % size)
        flat = flat // size
    coords = coords[::-1]
    plane = torch.zeros_like(idx)
    for axis, c in enumerate(coords):
        plane = plane * x.shape[2 + axis] + (c - pads[axis])
    channel = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *[1] * n)
    return y, channel * math.prod(x.shape[2:]) + plane


@op("AveragePool")
def average_pool(inputs, attrs):
    """Σ over the window / the number of counted cells: padding counts when count_include_pad, cells a
    ceil_mode window hangs past the padded input never do (as onnxruntime)."""
    x = inputs[0]
    kernel, strides, dilations, pads, given = _pool_geometry(attrs, x)
    channels = x.shape[1]
    ones = torch.ones((channels, 1, *kernel), dtype=x.dtype, device=x.device)
    total = convolution(x, ones, None, strides, pads, dilations, channels)
    mask = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    if attrs.get("count_include_pad", 0):
        mask = F.pad(mask, torch_pads(given), value=1.0)
        extra = [p - g for p, g in zip(pads, given)]
        count = convolution(mask, ones[:1], None, strides, extra, dilations, 1)
    else:
        count = convolution(mask, ones[:1], None, strides, pads, dilations, 1)
    return total / count


@op("GlobalAveragePool")
def global_average_pool(inputs, attrs):
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(inputs, attrs):
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# ------------------------------------------------------------------------------------------- stabilizer


def stabilize(z, epsilon: float):
    """stab(z) = z + ε·sign(z) with sign(0) = +1."""
    return z + torch.where(z >= 0, epsilon, -epsilon).to(z.dtype)
