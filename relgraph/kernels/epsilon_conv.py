"""The fused ε step of a convolution: rx = x ⊙ convT(r ⊘ d, W).

For z = x ⋆ W + b, LRP-ε gives rx = x ⊙ convT(s, W) with s = r ⊘ d (d as in ``tiles.stabilize``).
The transposed convolution runs as an implicit GEMM per group, rows = input pixels (N·H·W), columns =
the group's input channels (C/g), reduction over (k, r, s) in (K/g)·R·S: for pixel (n, c, h, w) it sums
s[n, k, oh, ow]·W[k, c, r, s] over the taps with oh = (h + p_t − r·d_h)/s_h integral and inside P
(ow likewise). That is a gather: every output element is written by one program, no atomics. The
division by d happens as the gathered r tile is loaded, the product with x in the epilogue. Pixels no
window reaches (ragged edges of a strided convolution) get relevance 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import RelgraphError

from .conv import GEOMETRY_PARAMS, conv_shape, grid_2d, transposed_weight_tile, window_tile
from .epsilon_matmul import MODES
from .gemm import PRECISIONS
from .launch import KernelSpec, check, dummy, launch, operand_dtype, outputs
from .tiles import dot_operand, stabilize


@triton.jit
def _epsilon_conv2d_kernel(x, w, r, den, rx, s_out,
                           N, C, H, W, K, P, Q, R, S, groups, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                           epsilon,
                           MODE: tl.constexpr, WANT_S: tl.constexpr, DOT_PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    g = tl.program_id(2)
    C_G = C // groups
    taps = (K // groups) * R * S
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, taps, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        offs, valid = window_tile(rm, kk, g, N, C, H, W, K, P, Q, R, S, groups, stride_h, stride_w,
                                  pad_t, pad_l, dil_h, dil_w)
        s = tl.load(r + offs, mask=valid, other=0.0) / stabilize(tl.load(den + offs, mask=valid, other=1.0),
                                                                  epsilon, MODE)
        wt = transposed_weight_tile(w, kk, rc, g, C, K, R, S, groups)
        acc = tl.dot(dot_operand(s, wt), wt, acc, input_precision=DOT_PRECISION)
    n = rm // (H * W)
    offs = (n[:, None] * C + g * C_G + rc[None, :]) * (H * W) + (rm % (H * W))[:, None]
    mask = (rm[:, None] < N * H * W) & (rc[None, :] < C_G)
    xt = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(rx + offs, xt * acc, mask=mask)
    if WANT_S:
        # The gather reads each s from several windows and may never read one whose window lies in the
        # padding, so s is written separately: the first column of programs splits the group's
        # N·(K/g)·P·Q outputs into strided chunks.
        if tl.program_id(1) == 0:
            per_sample = (K // groups) * P * Q
            for e0 in range(pid_m * BLOCK_M, N * per_sample, tl.num_programs(0) * BLOCK_M):
                e = e0 + tl.arange(0, BLOCK_M)
                at = (e // per_sample) * (K * P * Q) + g * per_sample + e % per_sample
                inside = e < N * per_sample
                d = stabilize(tl.load(den + at, mask=inside, other=1.0), epsilon, MODE)
                tl.store(s_out + at, tl.load(r + at, mask=inside, other=0.0) / d, mask=inside)


EPSILON_CONV2D = KernelSpec(
    op="epsilon_conv2d", fn=_epsilon_conv2d_kernel,
    params={"x": "*op", "w": "*op", "r": "*fp32", "den": "*fp32", "rx": "*fp32", "s_out": "*fp32",
            **GEOMETRY_PARAMS, "epsilon": "fp32"},
    flags={"mode": ("MODE", MODES, "den"), "want_s": ("WANT_S", (False, True), False),
           "precision": ("DOT_PRECISION", PRECISIONS, "ieee")},
    key=("N", "C", "H", "W", "K", "R", "S", "groups", "stride_h", "stride_w"),
    standard=(dict(mode="stab", want_s=True),),
)


def relevance_shape(op: str, x, w, r, stride, pads, dilation, groups):
    """The conv geometry, checking that r [N, K, P, Q] is the forward output of x under it."""
    shape = conv_shape(op, x, w, stride, pads, dilation, groups)
    expected = (shape.N, shape.K, shape.P, shape.Q)
    if tuple(r.shape) != expected:
        raise RelgraphError(f"{op}: r has shape {list(r.shape)}, but this convolution of x {list(x.shape)} "
                            f"gives {list(expected)}")
    return shape


def epsilon_conv2d(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, den: torch.Tensor, *, stride=(1, 1),
                   pads=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1, mode: str = "den", epsilon: float = 0.0,
                   want_s: bool = False, precision: str = "ieee", out=None):
    """rx = x ⊙ convT(r ⊘ d, W) for x [N, C, H, W], W [K, C/g, R, S], r and den [N, K, P, Q] (fp32).

    d as in :func:`relgraph.kernels.epsilon_linear`; the geometry as in :func:`relgraph.kernels.conv2d` (the transposed
    convolution lands on x's shape, which implies ONNX's output_padding). Returns rx (x's shape, fp32),
    or (rx, s) with s = r ⊘ d when ``want_s``. ``out``: preallocated rx, or (rx, s).
    """
    dtype = operand_dtype("epsilon_conv2d", x, w)
    shape = relevance_shape("epsilon_conv2d", x, w, r, stride, pads, dilation, groups)
    check("epsilon_conv2d", "x", x, x.shape, dtype)
    check("epsilon_conv2d", "w", w, w.shape, dtype, x.device)
    check("epsilon_conv2d", "r", r, r.shape, device=x.device)
    check("epsilon_conv2d", "den", den, r.shape, device=x.device)
    names, shapes = (("rx", "s"), (x.shape, r.shape)) if want_s else (("rx",), (x.shape,))
    results = outputs("epsilon_conv2d", out, names, shapes, x.device)
    s = results[1] if want_s else dummy(x.device)
    grid = grid_2d(shape.N * shape.H * shape.W, shape.C // groups, groups)
    launch(EPSILON_CONV2D, grid, (x, w, r, den, results[0], s, *shape.args(), float(epsilon)),
           mode=mode, want_s=want_s, precision=precision)
    return results if want_s else results[0]
