"""The kernel steps of a launch plan: each kernel op, launched through :mod:`relgraph.kernels` or, as a reference,
computed with torch ops.

Both forms take the step's inputs in the kernel's argument order and return its outputs:

- ``linear(x [..., K], W [N, K], b)``: y = act(x·Wᵀ + b), and z = x·Wᵀ + b when ``keep_z``;
- ``conv2d(x, W, b)``: y = act(x ⋆ W + b), and z when ``keep_z``;
- ``epsilon_linear(x [..., K], W [N, K], r [..., N], den)``: rx = x ⊙ ((r ⊘ d)·W), and s = r ⊘ d when
  ``want_s``, with d = den ("den"), den + ε·(den ≥ 0 ? 1 : −1) ("stab"), den + ε ("shift");
- ``epsilon_conv2d(x, W, r, den)``: rx = x ⊙ convT(r ⊘ d, W), the transpose landing on x's shape;
- ``lrp_parts_linear(x, W)`` / ``lrp_parts_conv2d``: the split forward z_pos = x⁺W⁺ + x⁻W⁻,
  z_neg = x⁺W⁻ + x⁻W⁺ (x⁺ = max(x, 0), x⁻ = min(x, 0), W⁺, W⁻ likewise);
- ``lrp_parts_linear_back(x, W, r, z_pos, z_neg, b⁺, b⁻)`` / ``lrp_parts_conv2d_back``: the γ or αβ
  relevance rx = x⁺ ⊙ (s_a·W⁺ + s_b·W⁻) + x⁻ ⊙ (s_b·W⁺ + s_a·W⁻), and the shares s_a, s_b (:func:`parts_shares`)
  when ``want_s``;
- ``maxpool2d_back(x, r)``: max pooling's route, each window's r to its first maximum (padding −∞);
- ``epsilon_sum(a, b, r, den)``: ra = a ⊙ r ⊘ d, rb = b ⊙ r ⊘ d, d as in the ε steps.

Leading axes beyond the matrix (a MatMul over a sequence) are flattened into the kernel's rows.
"""

from __future__ import annotations

import torch

from ..errors import RelgraphError
from .torch_ops import conv_transpose, convolution, explicit_pads, max_pool, stabilize

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def conv_geometry(attrs: dict, x: torch.Tensor, w: torch.Tensor) -> dict:
    """The kernels' geometry arguments; ``auto_pad`` is resolved on the actual input size."""
    kernel = list(w.shape[2:])
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = explicit_pads(attrs.get("auto_pad"), attrs.get("pads"), list(x.shape[2:]), kernel, strides, dilations)
    return dict(stride=tuple(strides), pads=tuple(pads), dilation=tuple(dilations), groups=attrs.get("group", 1))


def stabilized(den: torch.Tensor, mode: str, epsilon: float) -> torch.Tensor:
    """The ε kernels' d: den + ε·sign(den) ("stab"), den + ε ("shift"), den ("den")."""
    if mode == "stab":
        return stabilize(den, epsilon)
    if mode == "shift":
        return den + epsilon
    return den


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()


class TorchKernels:
    """What each kernel computes, in torch (fp32): the reference a Triton launch must match."""

    def linear(self, x, w, bias, *, relu, keep_z, **_):
        z = torch.nn.functional.linear(x.float(), w.float(), bias)
        y = torch.relu(z) if relu else z
        return (y, z) if keep_z else (y,)

    def conv2d(self, x, w, bias, *, relu, keep_z, stride, pads, dilation, groups, **_):
        z = convolution(x.float(), w.float(), bias, list(stride), list(pads), list(dilation), groups)
        y = torch.relu(z) if relu else z
        return (y, z) if keep_z else (y,)

    def epsilon_linear(self, x, w, r, den, *, mode, epsilon, want_s, **_):
        s = r / stabilized(den, mode, epsilon)
        rx = x.float() * (s @ w.float())
        return (rx, s) if want_s else (rx,)

    def epsilon_conv2d(self, x, w, r, den, *, mode, epsilon, want_s, stride, pads, dilation, groups, **_):
        s = r / stabilized(den, mode, epsilon)
        rx = x.float() * _transposed(s, w.float(), x, stride, pads, dilation, groups)
        return (rx, s) if want_s else (rx,)

    def lrp_parts_linear(self, x, w, *, x_nonneg, **_):
        return _split_forward(x, w, x_nonneg, lambda a, b: a @ b.t())

    def lrp_parts_conv2d(self, x, w, *, x_nonneg, stride, pads, dilation, groups, **_):
        return _split_forward(x, w, x_nonneg,
                              lambda a, b: convolution(a, b, None, list(stride), list(pads), list(dilation), groups))

    def lrp_parts_linear_back(self, x, w, r, z_pos, z_neg, b_pos, b_neg, *, x_nonneg, want_s, **params):
        out = _push_back(x, w, r, z_pos, z_neg, b_pos, b_neg, x_nonneg, params, -1, lambda s, b: s @ b)
        return out if want_s else out[:1]

    def lrp_parts_conv2d_back(self, x, w, r, z_pos, z_neg, b_pos, b_neg, *, x_nonneg, want_s, stride, pads,
                              dilation, groups, **params):
        def back(s, b):
            return _transposed(s, b, x, stride, pads, dilation, groups)
        out = _push_back(x, w, r, z_pos, z_neg, b_pos, b_neg, x_nonneg, params, 1, back)
        return out if want_s else out[:1]

    def maxpool2d_back(self, x, r, *, kernel, stride, pads, dilation, ceil_mode):
        """The gradient of max pooling: autograd routes r to torch's pooling indices (first maximum)."""
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            y = max_pool([x], dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pads),
                                   dilations=list(dilation), ceil_mode=int(ceil_mode), indices=0))
            (rx,) = torch.autograd.grad(y, x, r)
        return (rx,)

    def epsilon_sum(self, a, b, r, den, *, mode, epsilon):
        s = r / stabilized(den, mode, epsilon)
        return a * s, b * s


def _transposed(s, w, x, stride, pads, dilation, groups):
    """convT(s, W) landing on x's shape: output_padding = the rows the forward pass left unread."""
    natural = [(p - 1) * st - pb - pe + d * (k - 1) + 1 for p, st, pb, pe, d, k in
               zip(s.shape[2:], stride, pads[:2], pads[2:], dilation, w.shape[2:])]
    extra = [h - n for h, n in zip(x.shape[2:], natural)]
    return conv_transpose(s, w, list(stride), list(pads), list(dilation), groups, extra)


def _split_forward(x, w, x_nonneg, forward):
    x, w = x.float(), w.float()
    xp, wp, wn = (x if x_nonneg else torch.relu(x)), torch.relu(w), torch.clamp(w, max=0)
    z_pos, z_neg = forward(xp, wp), forward(xp, wn)
    if not x_nonneg:
        xn = torch.clamp(x, max=0)
        z_pos, z_neg = z_pos + forward(xn, wn), z_neg + forward(xn, wp)
    return z_pos, z_neg


def parts_shares(r, z_pos, z_neg, b_pos, b_neg, *, rule, epsilon, gamma=0.25, alpha=2.0, beta=1.0,
                 channel_axis=-1):
    """The two shares (s_a, s_b) of a γ or αβ layer, from its incoming relevance r and its split forward
    z_pos = x⁺W⁺ + x⁻W⁻, z_neg = x⁺W⁻ + x⁻W⁺ (bias parts b⁺, b⁻ per output channel, or None):

        γ:  z = z_pos + z_neg + b,  z₁ = (1+γ)z_pos + z_neg + b + γb⁺,  z₂ = z_pos + (1+γ)z_neg + b + γb⁻,
            s₁ = [z > 0]·r ⊘ stab(z₁),  s₂ = [z < 0]·r ⊘ stab(z₂),
            s_a = (1+γ)s₁ + s₂,  s_b = s₁ + (1+γ)s₂
        αβ: s_a = α·r ⊘ stab(z_pos + b⁺), s_b = −β·r ⊘ stab(z_neg + b⁻)
    """
    axis = channel_axis % r.dim()
    shape = [-1 if a == axis else 1 for a in range(r.dim())]
    bp = 0.0 if b_pos is None else b_pos.reshape(shape)
    bn = 0.0 if b_neg is None else b_neg.reshape(shape)
    if rule == "gamma":
        b = bp + bn
        z = z_pos + z_neg + b
        s1 = torch.where(z > 0, r / stabilize((1 + gamma) * z_pos + z_neg + b + gamma * bp, epsilon), 0.0)
        s2 = torch.where(z < 0, r / stabilize(z_pos + (1 + gamma) * z_neg + b + gamma * bn, epsilon), 0.0)
        return (1 + gamma) * s1 + s2, s1 + (1 + gamma) * s2
    return alpha * r / stabilize(z_pos + bp, epsilon), -beta * r / stabilize(z_neg + bn, epsilon)


def _push_back(x, w, r, z_pos, z_neg, b_pos, b_neg, x_nonneg, params, channel_axis, back):
    """(rx, s_a, s_b) of a γ or αβ layer."""
    s_a, s_b = parts_shares(r, z_pos, z_neg, b_pos, b_neg, channel_axis=channel_axis, **params)
    x, w = x.float(), w.float()
    wp, wn = torch.relu(w), torch.clamp(w, max=0)
    rx = (x if x_nonneg else torch.relu(x)) * (back(s_a, wp) + back(s_b, wn))
    if not x_nonneg:
        rx = rx + torch.clamp(x, max=0) * (back(s_b, wp) + back(s_a, wn))
    return rx, s_a, s_b


class TritonKernels:
    """The Triton launches of :mod:`relgraph.kernels` (CUDA, or the CPU under ``TRITON_INTERPRET=1``): each op is
    the kernels' launcher of that name, called with the arguments :func:`run_kernel` passes to
    :class:`TorchKernels`, its outputs as a tuple. A new kernel op needs no entry in this class."""

    def __init__(self):
        try:
            from .. import kernels  # optional: triton
        except ImportError as exc:
            raise RelgraphError(f"the triton backend needs triton and the kernels package: {exc}") from None
        self.kernels = kernels

    def __getattr__(self, op: str):
        if op.startswith("_") or op == "kernels":  # not a kernel op (and no recursion before __init__ is done)
            raise AttributeError(op)
        launch = getattr(self.kernels, op)

        def run(*args, **kwargs) -> tuple:
            out = launch(*args, **kwargs)  # one tensor, or a tuple when the op writes optional outputs
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

        return run


def run_kernel(impl, step, inputs: list) -> tuple:
    """One kernel step: operands cast to the step's dtype and made contiguous, leading axes flattened."""
    dtype = TORCH_DTYPES[step.dtype]
    if step.op in ("linear", "conv2d"):  # has_bias is implied by the bias argument
        flags = dict(relu=step.flags.get("relu", False), keep_z=step.flags.get("keep_z", False))
    else:
        flags = dict(mode=step.flags.get("mode", "den"), want_s=step.flags.get("want_s", False))
    if step.op == "linear":
        x, w, bias = inputs
        lead = x.shape[:-1]
        outs = impl.linear(_rows(x).to(dtype), w.to(dtype).contiguous(), _fp32(bias), **flags)
        return tuple(o.reshape(*lead, w.shape[0]) for o in outs)
    if step.op == "conv2d":
        x, w, bias = inputs
        geometry = conv_geometry(step.attrs, x, w)
        return impl.conv2d(x.to(dtype).contiguous(), w.to(dtype).contiguous(), _fp32(bias), **flags, **geometry)
    if step.op == "epsilon_linear":
        x, w, r, den = inputs
        rx_s = impl.epsilon_linear(_rows(x).to(dtype), w.to(dtype).contiguous(), _rows(r.float()),
                                   _rows(den.float()), epsilon=step.attrs["epsilon"], **flags)
        return (rx_s[0].reshape(x.shape),) + tuple(s.reshape(r.shape) for s in rx_s[1:])
    if step.op == "epsilon_conv2d":
        x, w, r, den = inputs
        geometry = conv_geometry(step.attrs, x, w)
        return impl.epsilon_conv2d(x.to(dtype).contiguous(), w.to(dtype).contiguous(), r.float().contiguous(),
                                   den.float().contiguous(), epsilon=step.attrs["epsilon"], **flags, **geometry)
    if step.op in ("lrp_parts_linear", "lrp_parts_conv2d"):
        x, w = inputs
        geometry = conv_geometry(step.attrs, x, w) if step.op == "lrp_parts_conv2d" else {}
        return getattr(impl, step.op)(x.to(dtype).contiguous(), w.to(dtype).contiguous(),
                                      x_nonneg=step.flags["x_nonneg"], **geometry)
    if step.op in ("lrp_parts_linear_back", "lrp_parts_conv2d_back"):
        x, w, r, z_pos, z_neg, b_pos, b_neg = inputs
        geometry = conv_geometry(step.attrs, x, w) if step.op == "lrp_parts_conv2d_back" else {}
        params = {k: step.attrs[k] for k in ("gamma", "alpha", "beta", "epsilon") if k in step.attrs}
        return getattr(impl, step.op)(x.to(dtype).contiguous(), w.to(dtype).contiguous(), r.float().contiguous(),
                                      z_pos, z_neg, _fp32(b_pos), _fp32(b_neg), rule=step.flags["rule"],
                                      x_nonneg=step.flags["x_nonneg"], want_s=step.flags.get("want_s", False),
                                      **params, **geometry)
    if step.op == "maxpool2d_back":  # no matmul operands: fp32 whatever the plan's dtype
        x, r = inputs
        a = step.attrs
        return impl.maxpool2d_back(_fp32(x), _fp32(r), kernel=tuple(a["kernel_shape"]), stride=tuple(a["strides"]),
                                   pads=tuple(a["pads"]), dilation=tuple(a["dilations"]),
                                   ceil_mode=bool(a["ceil_mode"]))
    if step.op == "epsilon_sum":
        a, b, r, den = (_fp32(t) for t in inputs)
        return impl.epsilon_sum(a, b, r, den, mode=step.flags["mode"], epsilon=step.attrs["epsilon"])
    raise RelgraphError(f"unknown kernel op '{step.op}' in the launch plan")


def _fp32(t):
    return None if t is None else t.float().contiguous()
