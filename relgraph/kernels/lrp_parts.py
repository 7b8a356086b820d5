"""γ and αβ, each in one forward and one push-back kernel that read x and W once.

With x⁺ = max(x, 0), x⁻ = min(x, 0) and W⁺, W⁻ likewise, both rules need only the split forward

    z_pos = x⁺W⁺ᵀ + x⁻W⁻ᵀ,      z_neg = x⁺W⁻ᵀ + x⁻W⁺ᵀ

(two accumulators, one pass over x and W), and a push-back of two shares s_a, s_b (``tiles.parts_shares``,
formed while the r, z_pos, z_neg tiles load):

    rx = x⁺ ⊙ (s_a·W⁺ + s_b·W⁻) + x⁻ ⊙ (s_b·W⁺ + s_a·W⁻)

again two accumulators, the signs of W split in registers. With ``want_s`` the push-back also writes
s_a and s_b, which a layer's bias share ⟨b⁺, s_a⟩ + ⟨b⁻, s_b⟩ reads. This is the ONNX definition
``relgraph.rules.functions.parts_relevance`` as tiles (zennit's γ and αβ). ``x_nonneg`` (x comes out of a ReLU) drops
every x⁻ term: half the products. The conv2d versions run the same math through the implicit GEMMs of
``conv`` and ``epsilon_conv``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import RelgraphError

from .conv import (GEOMETRY_PARAMS, conv_shape, grid_2d, output_offsets, output_tile, patch_tile,
                   transposed_weight_tile, weight_tile, window_tile)
from .epsilon_conv import relevance_shape
from .gemm import PRECISIONS
from .launch import KernelSpec, check, dummy, launch, operand_dtype, outputs
from .tiles import dot_operand, grouped_tile, parts_shares

RULES = ("gamma", "alpha-beta")


@triton.jit
def split_dot(a, b, acc_pos, acc_neg, X_NONNEG: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc_pos += a⁺b⁺ + a⁻b⁻, acc_neg += a⁺b⁻ + a⁻b⁺ (a ≥ 0 when X_NONNEG)."""
    b_pos = tl.maximum(b, 0.0).to(b.dtype)
    b_neg = tl.minimum(b, 0.0).to(b.dtype)
    if X_NONNEG:
        acc_pos = tl.dot(a, b_pos, acc_pos, input_precision=DOT_PRECISION)
        acc_neg = tl.dot(a, b_neg, acc_neg, input_precision=DOT_PRECISION)
    else:
        a_pos = tl.maximum(a, 0.0).to(a.dtype)
        a_neg = tl.minimum(a, 0.0).to(a.dtype)
        acc_pos = tl.dot(a_pos, b_pos, acc_pos, input_precision=DOT_PRECISION)
        acc_pos = tl.dot(a_neg, b_neg, acc_pos, input_precision=DOT_PRECISION)
        acc_neg = tl.dot(a_pos, b_neg, acc_neg, input_precision=DOT_PRECISION)
        acc_neg = tl.dot(a_neg, b_pos, acc_neg, input_precision=DOT_PRECISION)
    return acc_pos, acc_neg


@triton.jit
def push_back(s_a, s_b, wt, acc_a, acc_b, X_NONNEG: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc_a += s_a·W⁺ + s_b·W⁻ (what x⁺ receives), acc_b += s_b·W⁺ + s_a·W⁻ (what x⁻ receives)."""
    w_pos = tl.maximum(wt, 0.0).to(wt.dtype)
    w_neg = tl.minimum(wt, 0.0).to(wt.dtype)
    s_a = dot_operand(s_a, wt)
    s_b = dot_operand(s_b, wt)
    acc_a = tl.dot(s_a, w_pos, acc_a, input_precision=DOT_PRECISION)
    acc_a = tl.dot(s_b, w_neg, acc_a, input_precision=DOT_PRECISION)
    if not X_NONNEG:
        acc_b = tl.dot(s_b, w_pos, acc_b, input_precision=DOT_PRECISION)
        acc_b = tl.dot(s_a, w_neg, acc_b, input_precision=DOT_PRECISION)
    return acc_a, acc_b


@triton.jit
def input_relevance(xt, acc_a, acc_b, X_NONNEG: tl.constexpr):
    """rx = x⁺ ⊙ acc_a + x⁻ ⊙ acc_b (x itself when it is known non-negative, as the graph rules do)."""
    if X_NONNEG:
        rx = xt * acc_a
    else:
        rx = tl.maximum(xt, 0.0) * acc_a + tl.minimum(xt, 0.0) * acc_b
    return rx


@triton.jit
def bias_parts(b_pos, b_neg, channel, channel_ok, HAS_BIAS: tl.constexpr):
    """(b⁺, b⁻) of the output channels ``channel`` (0 without a bias)."""
    if HAS_BIAS:
        bp = tl.load(b_pos + channel, mask=channel_ok, other=0.0)
        bn = tl.load(b_neg + channel, mask=channel_ok, other=0.0)
    else:
        bp = tl.zeros(channel.shape, dtype=tl.float32)
        bn = tl.zeros(channel.shape, dtype=tl.float32)
    return bp, bn


@triton.jit
def masked_shares(r, z_pos, z_neg, offs, mask, bp, bn, gamma, alpha, beta, epsilon, RULE: tl.constexpr):
    """(s_a, s_b) of a tile, the bias parts ``bp``, ``bn`` broadcast against it; 0 outside ``mask`` (a 0/0
    there must not reach the dot)."""
    rt = tl.load(r + offs, mask=mask, other=0.0)
    zp = tl.load(z_pos + offs, mask=mask, other=0.0)
    zn = tl.load(z_neg + offs, mask=mask, other=0.0)
    s_a, s_b = parts_shares(rt, zp, zn, bp, bn, gamma, alpha, beta, epsilon, RULE)
    return tl.where(mask, s_a, 0.0), tl.where(mask, s_b, 0.0)


# ------------------------------------------------------------------------------------------- dense


@triton.jit
def _lrp_parts_linear_kernel(x, w, z_pos, z_neg, M, N, K,
                             X_NONNEG: tl.constexpr, DOT_PRECISION: tl.constexpr, GROUP_M: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc_pos = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_neg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(w + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & (rk[:, None] < K), other=0.0)
        acc_pos, acc_neg = split_dot(a, b, acc_pos, acc_neg, X_NONNEG, DOT_PRECISION)
    offs = rm[:, None] * N + rn[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(z_pos + offs, acc_pos, mask=mask)
    tl.store(z_neg + offs, acc_neg, mask=mask)


@triton.jit
def _lrp_parts_linear_back_kernel(x, w, r, z_pos, z_neg, b_pos, b_neg, rx, sa_out, sb_out, M, N, K,
                                  gamma, alpha, beta, epsilon,
                                  RULE: tl.constexpr, X_NONNEG: tl.constexpr, HAS_BIAS: tl.constexpr,
                                  WANT_S: tl.constexpr, DOT_PRECISION: tl.constexpr, GROUP_M: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_k = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_K):
        rn = n0 + tl.arange(0, BLOCK_K)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        offs = rm[:, None] * N + rn[None, :]
        bp, bn = bias_parts(b_pos, b_neg, rn, rn < N, HAS_BIAS)
        s_a, s_b = masked_shares(r, z_pos, z_neg, offs, mask, bp[None, :], bn[None, :], gamma, alpha, beta, epsilon,
                                 RULE)
        if WANT_S:  # the first column of programs sweeps every (row, output) once
            tl.store(sa_out + offs, s_a, mask=mask & (pid_k == 0))
            tl.store(sb_out + offs, s_b, mask=mask & (pid_k == 0))
        wt = tl.load(w + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
        acc_a, acc_b = push_back(s_a, s_b, wt, acc_a, acc_b, X_NONNEG, DOT_PRECISION)
    offs = rm[:, None] * K + rk[None, :]
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    xt = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(rx + offs, input_relevance(xt, acc_a, acc_b, X_NONNEG), mask=mask)


# ------------------------------------------------------------------------------------------- conv2d


@triton.jit
def _lrp_parts_conv2d_kernel(x, w, z_pos, z_neg,
                             N, C, H, W, K, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                             X_NONNEG: tl.constexpr, DOT_PRECISION: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    g, K_G, rm, rn, channel = output_tile(K, groups, BLOCK_M, BLOCK_N)
    patch = (C // groups) * R * S
    acc_pos = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_neg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, patch, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        a = patch_tile(x, rm, kk, g, N, C, H, W, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w)
        b = weight_tile(w, channel, rn, kk, K_G, patch)
        acc_pos, acc_neg = split_dot(a, b, acc_pos, acc_neg, X_NONNEG, DOT_PRECISION)
    offs, mask = output_offsets(rm, rn, channel, N, K, K_G, P, Q)
    tl.store(z_pos + offs, acc_pos, mask=mask)
    tl.store(z_neg + offs, acc_neg, mask=mask)


@triton.jit
def _lrp_parts_conv2d_back_kernel(x, w, r, z_pos, z_neg, b_pos, b_neg, rx, sa_out, sb_out,
                                  N, C, H, W, K, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                                  gamma, alpha, beta, epsilon,
                                  RULE: tl.constexpr, X_NONNEG: tl.constexpr, HAS_BIAS: tl.constexpr,
                                  WANT_S: tl.constexpr, DOT_PRECISION: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    g = tl.program_id(2)
    C_G = C // groups
    K_G = K // groups
    taps = K_G * R * S
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, taps, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        offs, valid = window_tile(rm, kk, g, N, C, H, W, K, P, Q, R, S, groups, stride_h, stride_w,
                                  pad_t, pad_l, dil_h, dil_w)
        bp, bn = bias_parts(b_pos, b_neg, g * K_G + kk // (R * S), kk < taps, HAS_BIAS)
        s_a, s_b = masked_shares(r, z_pos, z_neg, offs, valid, bp[None, :], bn[None, :], gamma, alpha, beta, epsilon,
                                 RULE)
        wt = transposed_weight_tile(w, kk, rc, g, C, K, R, S, groups)
        acc_a, acc_b = push_back(s_a, s_b, wt, acc_a, acc_b, X_NONNEG, DOT_PRECISION)
    offs = ((rm // (H * W))[:, None] * C + g * C_G + rc[None, :]) * (H * W) + (rm % (H * W))[:, None]
    mask = (rm[:, None] < N * H * W) & (rc[None, :] < C_G)
    xt = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(rx + offs, input_relevance(xt, acc_a, acc_b, X_NONNEG), mask=mask)
    if WANT_S:
        # As in epsilon_conv2d: the gather never reads a share whose window lies wholly in the padding, so
        # the first column of programs writes the group's N·(K/g)·P·Q shares in a strided pass of its own,
        # in chunks of BLOCK_K: wider chunks push the fp32 and bf16 tiles into register spills.
        if tl.program_id(1) == 0:
            per_sample = K_G * P * Q
            for e0 in range(tl.program_id(0) * BLOCK_K, N * per_sample, tl.num_programs(0) * BLOCK_K):
                e = e0 + tl.arange(0, BLOCK_K)
                inside = e < N * per_sample
                at = (e // per_sample) * (K * P * Q) + g * per_sample + e % per_sample
                channel = g * K_G + (e % per_sample) // (P * Q)
                bp, bn = bias_parts(b_pos, b_neg, channel, inside, HAS_BIAS)
                s_a, s_b = masked_shares(r, z_pos, z_neg, at, inside, bp, bn, gamma, alpha, beta, epsilon, RULE)
                tl.store(sa_out + at, s_a, mask=inside)
                tl.store(sb_out + at, s_b, mask=inside)


_PRECISION = {"precision": ("DOT_PRECISION", PRECISIONS, "ieee")}
_BACK_FLAGS = {"rule": ("RULE", RULES, "gamma"), "x_nonneg": ("X_NONNEG", (False, True), False),
               "has_bias": ("HAS_BIAS", (False, True), True), "want_s": ("WANT_S", (False, True), False),
               **_PRECISION}
# a layer with a bias reads the shares for its bias share ⟨b⁺, s_a⟩ + ⟨b⁻, s_b⟩
_BACK_STANDARD = (dict(rule="gamma", x_nonneg=True, has_bias=True, want_s=True),
                  dict(rule="alpha-beta", x_nonneg=True, has_bias=True, want_s=True))
_SHARE_PARAMS = {"gamma": "fp32", "alpha": "fp32", "beta": "fp32", "epsilon": "fp32"}
_CONV_KEY = ("N", "C", "H", "W", "K", "R", "S", "groups", "stride_h", "stride_w")

LRP_PARTS_LINEAR = KernelSpec(
    op="lrp_parts_linear", fn=_lrp_parts_linear_kernel,
    params={"x": "*op", "w": "*op", "z_pos": "*fp32", "z_neg": "*fp32", "M": "i32", "N": "i32", "K": "i32"},
    flags={"x_nonneg": ("X_NONNEG", (False, True), False), **_PRECISION},
    key=("M", "N", "K"), standard=(dict(x_nonneg=True),), fixed={"GROUP_M": 8},
)
LRP_PARTS_LINEAR_BACK = KernelSpec(
    op="lrp_parts_linear_back", fn=_lrp_parts_linear_back_kernel,
    params={"x": "*op", "w": "*op", "r": "*fp32", "z_pos": "*fp32", "z_neg": "*fp32", "b_pos": "*fp32",
            "b_neg": "*fp32", "rx": "*fp32", "sa_out": "*fp32", "sb_out": "*fp32", "M": "i32", "N": "i32",
            "K": "i32", **_SHARE_PARAMS},
    flags=_BACK_FLAGS, key=("M", "N", "K"), standard=_BACK_STANDARD, fixed={"GROUP_M": 8},
)
LRP_PARTS_CONV2D = KernelSpec(
    op="lrp_parts_conv2d", fn=_lrp_parts_conv2d_kernel,
    params={"x": "*op", "w": "*op", "z_pos": "*fp32", "z_neg": "*fp32", **GEOMETRY_PARAMS},
    flags={"x_nonneg": ("X_NONNEG", (False, True), False), **_PRECISION},
    key=_CONV_KEY, standard=(dict(x_nonneg=False),),
)
LRP_PARTS_CONV2D_BACK = KernelSpec(
    op="lrp_parts_conv2d_back", fn=_lrp_parts_conv2d_back_kernel,
    params={"x": "*op", "w": "*op", "r": "*fp32", "z_pos": "*fp32", "z_neg": "*fp32", "b_pos": "*fp32",
            "b_neg": "*fp32", "rx": "*fp32", "sa_out": "*fp32", "sb_out": "*fp32", **GEOMETRY_PARAMS,
            **_SHARE_PARAMS},
    flags=_BACK_FLAGS, key=_CONV_KEY, standard=_BACK_STANDARD,
)


def _bias_parts(op, b_pos, b_neg, channels, device):
    """Both bias parts or neither (a layer without bias)."""
    if (b_pos is None) != (b_neg is None):
        raise RelgraphError(f"{op}: pass both b_pos and b_neg, or neither")
    if b_pos is None:
        return dummy(device), dummy(device), False
    check(op, "b_pos", b_pos, (channels,), device=device)
    check(op, "b_neg", b_neg, (channels,), device=device)
    return b_pos, b_neg, True


def _share_outputs(op, out, want_s, rx_shape, s_shape, device):
    """(the op's outputs, s_a, s_b): (rx,) and stand-ins, or (rx, s_a, s_b) and the two share tensors."""
    if not want_s:
        (rx,) = outputs(op, out, ("rx",), (rx_shape,), device)
        return (rx,), dummy(device), dummy(device)
    results = outputs(op, out, ("rx", "s_a", "s_b"), (rx_shape, s_shape, s_shape), device)
    return results, results[1], results[2]


def lrp_parts_linear(x: torch.Tensor, w: torch.Tensor, *, x_nonneg: bool = False, precision: str = "ieee",
                     out=None):
    """(z_pos, z_neg) [M, N] fp32 for x [M, K], W [N, K]: z_pos = x⁺W⁺ᵀ + x⁻W⁻ᵀ, z_neg = x⁺W⁻ᵀ + x⁻W⁺ᵀ,
    in one pass. ``x_nonneg``: x ≥ 0 is known (then z_pos = xW⁺ᵀ, z_neg = xW⁻ᵀ). ``out``: (z_pos, z_neg)."""
    dtype = operand_dtype("lrp_parts_linear", x, w)
    M, K = x.shape
    N = w.shape[0]
    check("lrp_parts_linear", "x", x, (M, K), dtype)
    check("lrp_parts_linear", "w", w, (N, K), dtype, x.device)
    z_pos, z_neg = outputs("lrp_parts_linear", out, ("z_pos", "z_neg"), ((M, N), (M, N)), x.device)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    launch(LRP_PARTS_LINEAR, grid, (x, w, z_pos, z_neg, M, N, K), x_nonneg=x_nonneg, precision=precision)
    return z_pos, z_neg


def lrp_parts_linear_back(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, z_pos: torch.Tensor,
                          z_neg: torch.Tensor, b_pos: torch.Tensor | None, b_neg: torch.Tensor | None, *,
                          rule: str, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
                          epsilon: float = 1e-6, x_nonneg: bool = False, want_s: bool = False,
                          precision: str = "ieee", out=None):
    """The γ or αβ relevance rx [M, K] fp32 of x [M, K] for the layer z = x·Wᵀ + b (W [N, K]), from the
    incoming relevance r [M, N], the split forward (z_pos, z_neg) of :func:`lrp_parts_linear` and the bias
    parts b⁺, b⁻ [N] (None for a layer without bias). See ``tiles.parts_shares`` for s_a, s_b; the
    stabilizer is stab(z) = z + ε·sign(z), sign(0) = +1. ``rule``: "gamma" or "alpha-beta".

    Returns rx, or (rx, s_a, s_b) [M, K], [M, N], [M, N] when ``want_s`` (the bias share is
    ⟨b⁺, s_a⟩ + ⟨b⁻, s_b⟩). ``out``: preallocated rx, or (rx, s_a, s_b).
    """
    op = "lrp_parts_linear_back"
    dtype = operand_dtype(op, x, w)
    M, K = x.shape
    N = w.shape[0]
    check(op, "x", x, (M, K), dtype)
    check(op, "w", w, (N, K), dtype, x.device)
    for name, t in (("r", r), ("z_pos", z_pos), ("z_neg", z_neg)):
        check(op, name, t, (M, N), device=x.device)
    b_pos, b_neg, has_bias = _bias_parts(op, b_pos, b_neg, N, x.device)
    results, s_a, s_b = _share_outputs(op, out, want_s, (M, K), (M, N), x.device)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_N"]),)  # noqa: E731
    launch(LRP_PARTS_LINEAR_BACK, grid, (x, w, r, z_pos, z_neg, b_pos, b_neg, results[0], s_a, s_b, M, N, K,
                                         float(gamma), float(alpha), float(beta), float(epsilon)),
           rule=rule, x_nonneg=x_nonneg, has_bias=has_bias, want_s=want_s, precision=precision)
    return results if want_s else results[0]


def lrp_parts_conv2d(x: torch.Tensor, w: torch.Tensor, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                     groups: int = 1, x_nonneg: bool = False, precision: str = "ieee", out=None):
    """:func:`lrp_parts_linear` for a convolution (geometry as :func:`relgraph.kernels.conv2d`): (z_pos, z_neg)
    [N, K, P, Q] fp32."""
    op = "lrp_parts_conv2d"
    dtype = operand_dtype(op, x, w)
    shape = conv_shape(op, x, w, stride, pads, dilation, groups)
    check(op, "x", x, x.shape, dtype)
    check(op, "w", w, w.shape, dtype, x.device)
    out_shape = (shape.N, shape.K, shape.P, shape.Q)
    z_pos, z_neg = outputs(op, out, ("z_pos", "z_neg"), (out_shape, out_shape), x.device)
    grid = grid_2d(shape.N * shape.P * shape.Q, shape.K // groups, groups)
    launch(LRP_PARTS_CONV2D, grid, (x, w, z_pos, z_neg, *shape.args()), x_nonneg=x_nonneg, precision=precision)
    return z_pos, z_neg


def lrp_parts_conv2d_back(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, z_pos: torch.Tensor,
                          z_neg: torch.Tensor, b_pos: torch.Tensor | None, b_neg: torch.Tensor | None, *,
                          rule: str, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
                          epsilon: float = 1e-6, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                          groups: int = 1, x_nonneg: bool = False, want_s: bool = False, precision: str = "ieee",
                          out=None):
    """:func:`lrp_parts_linear_back` for a convolution: rx (x's shape, fp32) from r, z_pos, z_neg
    [N, K, P, Q] and b⁺, b⁻ [K], pushed back through the transposed convolution (a gather, as in
    :func:`relgraph.kernels.epsilon_conv2d`); with ``want_s`` also the shares s_a, s_b [N, K, P, Q]."""
    op = "lrp_parts_conv2d_back"
    dtype = operand_dtype(op, x, w)
    shape = relevance_shape(op, x, w, r, stride, pads, dilation, groups)
    check(op, "x", x, x.shape, dtype)
    check(op, "w", w, w.shape, dtype, x.device)
    for name, t in (("r", r), ("z_pos", z_pos), ("z_neg", z_neg)):
        check(op, name, t, r.shape, device=x.device)
    b_pos, b_neg, has_bias = _bias_parts(op, b_pos, b_neg, shape.K, x.device)
    results, s_a, s_b = _share_outputs(op, out, want_s, x.shape, r.shape, x.device)
    grid = grid_2d(shape.N * shape.H * shape.W, shape.C // groups, groups)
    launch(LRP_PARTS_CONV2D_BACK, grid, (x, w, r, z_pos, z_neg, b_pos, b_neg, results[0], s_a, s_b,
                                         *shape.args(), float(gamma), float(alpha), float(beta), float(epsilon)),
           rule=rule, x_nonneg=x_nonneg, has_bias=has_bias, want_s=want_s, precision=precision)
    return results if want_s else results[0]
