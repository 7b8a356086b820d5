"""2-d convolution forward as an implicit GEMM, with the epilogue of ``linear``.

Per group g, the convolution is a GEMM: rows are the output pixels (M = N·P·Q), columns the group's
output channels (K/g), and the reduction runs over a patch, (C/g)·R·S values gathered from x on the fly
(no im2col buffer). Taps that fall into the padding read 0.

The gathers here are shared with the transposed (relevance) convolutions of ``epsilon_conv`` and
``lrp_parts``: :func:`patch_tile` reads input patches, :func:`window_tile` the outputs whose windows
cover an input pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..errors import RelgraphError

from .gemm import PRECISIONS, epilogue
from .launch import KernelSpec, check, dummy, launch, operand_dtype, outputs

GEOMETRY_PARAMS = {"N": "i32", "C": "i32", "H": "i32", "W": "i32", "K": "i32", "P": "i32", "Q": "i32",
                   "R": "i32", "S": "i32", "groups": "i32", "stride_h": "i32", "stride_w": "i32",
                   "pad_t": "i32", "pad_l": "i32", "dil_h": "i32", "dil_w": "i32"}


@dataclass(frozen=True)
class ConvShape:
    """Sizes and geometry of one convolution x [N, C, H, W] ⋆ W [K, C/g, R, S] → [N, K, P, Q]."""

    N: int
    C: int
    H: int
    W: int
    K: int
    P: int
    Q: int
    R: int
    S: int
    groups: int
    stride: tuple
    pads: tuple
    dilation: tuple

    def args(self) -> tuple:
        """The geometry arguments in the order of ``GEOMETRY_PARAMS``."""
        return (self.N, self.C, self.H, self.W, self.K, self.P, self.Q, self.R, self.S, self.groups,
                *self.stride, self.pads[0], self.pads[1], *self.dilation)


def _pair(op: str, name: str, value, n: int = 2) -> tuple:
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise RelgraphError(f"{op}: {name} needs {n} values, got {list(value)}")
    return value


def conv_shape(op: str, x: torch.Tensor, w: torch.Tensor, stride, pads, dilation, groups) -> ConvShape:
    """Validate a convolution's geometry; P = ⌊(H + p_t + p_b − d_h·(R − 1) − 1)/s_h⌋ + 1, Q likewise."""
    if x.dim() != 4 or w.dim() != 4:
        raise RelgraphError(f"{op}: x and w must be 4-d (NCHW, KCRS), got {list(x.shape)} and {list(w.shape)}")
    stride, dilation = _pair(op, "stride", stride), _pair(op, "dilation", dilation)
    pads = _pair(op, "pads (top, left, bottom, right)", pads, 4)
    N, C, H, W = x.shape
    K, C_g, R, S = w.shape
    if groups < 1 or C % groups or K % groups or C_g != C // groups:
        raise RelgraphError(f"{op}: groups={groups} does not fit {C} input channels, weights {list(w.shape)}")
    if min(stride) < 1 or min(dilation) < 1 or min(pads) < 0:
        raise RelgraphError(f"{op}: stride and dilation must be ≥ 1 and pads ≥ 0")
    P = (H + pads[0] + pads[2] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    Q = (W + pads[1] + pads[3] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    if P < 1 or Q < 1:
        raise RelgraphError(f"{op}: the kernel {R}×{S} does not fit the padded {H}×{W} input")
    return ConvShape(N, C, H, W, K, P, Q, R, S, int(groups), stride, pads, dilation)


@triton.jit
def patch_tile(x, rm, kk, g, N, C, H, W, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w):
    """x's patch values [rows rm = output pixels (n, p, q), columns kk = (c, r, s) within group g]."""
    C_G = C // groups
    n = rm // (P * Q)
    p = (rm // Q) % P
    q = rm % Q
    c = kk // (R * S)
    kr = (kk // S) % R
    ks = kk % S
    h = p[:, None] * stride_h - pad_t + kr[None, :] * dil_h
    v = q[:, None] * stride_w - pad_l + ks[None, :] * dil_w
    inside = (rm[:, None] < N * P * Q) & (kk[None, :] < C_G * R * S) & (h >= 0) & (h < H) & (v >= 0) & (v < W)
    offs = ((n[:, None] * C + g * C_G + c[None, :]) * H + h) * W + v
    return tl.load(x + offs, mask=inside, other=0.0)


@triton.jit
def output_tile(K, groups, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's tile of the implicit GEMM: group g (program axis 2), rows rm = output pixels (n, p, q),
    columns rn = output channels within the group, and their absolute channels."""
    g = tl.program_id(2)
    K_G = K // groups
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return g, K_G, rm, rn, g * K_G + rn


@triton.jit
def output_offsets(rm, rn, channel, N, K, K_G, P, Q):
    """Offsets of the tile (rows rm, channels) into an [N, K, P, Q] output, and which of them exist."""
    offs = ((rm // (P * Q))[:, None] * K + channel[None, :]) * (P * Q) + (rm % (P * Q))[:, None]
    return offs, (rm[:, None] < N * P * Q) & (rn[None, :] < K_G)


@triton.jit
def weight_tile(w, channel, rn, kk, K_G, patch):
    """W's tile [taps kk = (c, r, s) of the group's patch × output channels] for the implicit GEMM."""
    return tl.load(w + channel[None, :] * patch + kk[:, None], mask=(rn[None, :] < K_G) & (kk[:, None] < patch),
                   other=0.0)


@triton.jit
def window_tile(rm, kk, g, N, C, H, W, K, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w):
    """Offsets into an [N, K, P, Q] tensor and their validity for the transposed convolution: row rm is an
    input pixel (n, h, w), column kk = (k, r, s) within group g; the output (oh, ow) with
    oh·s_h = h + p_t − r·d_h (and likewise ow) is the one whose window puts tap (r, s) on the pixel,
    valid when that division is exact and lands inside P × Q."""
    K_G = K // groups
    n = rm // (H * W)
    h = (rm // W) % H
    v = rm % W
    k = kk // (R * S)
    kr = (kk // S) % R
    ks = kk % S
    th = h[:, None] + pad_t - kr[None, :] * dil_h
    tv = v[:, None] + pad_l - ks[None, :] * dil_w
    # th ≥ 0 is tested before the division is trusted: integer division truncates toward zero.
    oh = th // stride_h
    ow = tv // stride_w
    valid = (rm[:, None] < N * H * W) & (kk[None, :] < K_G * R * S) & (th >= 0) & (tv >= 0) \
        & (th % stride_h == 0) & (tv % stride_w == 0) & (oh < P) & (ow < Q)
    offs = ((n[:, None] * K + g * K_G + k[None, :]) * P + oh) * Q + ow
    return offs, valid


@triton.jit
def transposed_weight_tile(w, kk, rc, g, C, K, R, S, groups):
    """W[g·K/g + k, c, r, s] as a [kk = (k, r, s), rc = c within the group] tile."""
    C_G = C // groups
    K_G = K // groups
    k = kk // (R * S)
    rs = kk % (R * S)
    offs = ((g * K_G + k[:, None]) * C_G + rc[None, :]) * (R * S) + rs[:, None]
    return tl.load(w + offs, mask=(kk[:, None] < K_G * R * S) & (rc[None, :] < C_G), other=0.0)


@triton.jit
def _conv2d_kernel(x, w, bias, y, z,
                   N, C, H, W, K, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                   HAS_BIAS: tl.constexpr, RELU: tl.constexpr, KEEP_Z: tl.constexpr,
                   DOT_PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    g, K_G, rm, rn, channel = output_tile(K, groups, BLOCK_M, BLOCK_N)
    patch = (C // groups) * R * S
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, patch, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        a = patch_tile(x, rm, kk, g, N, C, H, W, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w)
        b = weight_tile(w, channel, rn, kk, K_G, patch)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    offs, mask = output_offsets(rm, rn, channel, N, K, K_G, P, Q)
    epilogue(acc, bias, channel, rn < K_G, y, z, offs, mask, HAS_BIAS, RELU, KEEP_Z)


CONV2D = KernelSpec(
    op="conv2d", fn=_conv2d_kernel,
    params={"x": "*op", "w": "*op", "bias": "*fp32", "y": "*fp32", "z": "*fp32", **GEOMETRY_PARAMS},
    flags={"has_bias": ("HAS_BIAS", (False, True), True), "relu": ("RELU", (False, True), False),
           "keep_z": ("KEEP_Z", (False, True), False), "precision": ("DOT_PRECISION", PRECISIONS, "ieee")},
    key=("N", "C", "H", "W", "K", "R", "S", "groups", "stride_h", "stride_w"),
    standard=(dict(has_bias=True, relu=True, keep_z=True),),
)


def grid_2d(rows: int, cols: int, groups: int):
    """Row tiles × column tiles × groups."""
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(cols, meta["BLOCK_N"]), groups)


def conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, stride=(1, 1),
           pads=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1, relu: bool = False, keep_z: bool = False,
           precision: str = "ieee", out=None):
    """y = act(x ⋆ W + b) for x [N, C, H, W], W [K, C/g, R, S], b [K] (fp32).

    ``pads`` = (top, left, bottom, right), ONNX's begin…, end… order. Returns y [N, K, P, Q] fp32, or
    (y, z) with the pre-activation z when ``keep_z``. ``out``: preallocated y, or (y, z).
    """
    dtype = operand_dtype("conv2d", x, w)
    shape = conv_shape("conv2d", x, w, stride, pads, dilation, groups)
    check("conv2d", "x", x, x.shape, dtype)
    check("conv2d", "w", w, w.shape, dtype, x.device)
    if bias is not None:
        check("conv2d", "bias", bias, (shape.K,), device=x.device)
    names = ("y", "z") if keep_z else ("y",)
    results = outputs("conv2d", out, names, ((shape.N, shape.K, shape.P, shape.Q),) * len(names), x.device)
    z = results[1] if keep_z else dummy(x.device)
    grid = grid_2d(shape.N * shape.P * shape.Q, shape.K // groups, groups)
    launch(CONV2D, grid, (x, w, dummy(x.device) if bias is None else bias, results[0], z, *shape.args()),
           has_bias=bias is not None, relu=relu, keep_z=keep_z, precision=precision)
    return results if keep_z else results[0]
