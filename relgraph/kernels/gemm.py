"""Dense layer forward: y = act(x·Wᵀ + b), bias and activation in the epilogue.

``keep_z`` also stores the pre-activation z, the denominator the ε rule divides by.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import KernelSpec, check, dummy, launch, operand_dtype, outputs
from .tiles import grouped_tile

PRECISIONS = ("ieee", "tf32", "tf32x3")


@triton.jit
def epilogue(acc, bias, channel, channel_ok, y, z, offs, mask,
             HAS_BIAS: tl.constexpr, RELU: tl.constexpr, KEEP_Z: tl.constexpr):
    """The forward layers' epilogue: z = acc + b (b per output channel), stored when KEEP_Z (what the
    relevance pass reads), then y = max(z, 0) under RELU, else z."""
    if HAS_BIAS:
        acc += tl.load(bias + channel, mask=channel_ok, other=0.0)[None, :]
    if KEEP_Z:
        tl.store(z + offs, acc, mask=mask)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(y + offs, acc, mask=mask)


@triton.jit
def _linear_kernel(x, w, bias, y, z, M, N, K,
                   HAS_BIAS: tl.constexpr, RELU: tl.constexpr, KEEP_Z: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, GROUP_M: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(w + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & (rk[:, None] < K), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    offs = rm[:, None] * N + rn[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    epilogue(acc, bias, rn, rn < N, y, z, offs, mask, HAS_BIAS, RELU, KEEP_Z)


LINEAR = KernelSpec(
    op="linear", fn=_linear_kernel,
    params={"x": "*op", "w": "*op", "bias": "*fp32", "y": "*fp32", "z": "*fp32", "M": "i32", "N": "i32", "K": "i32"},
    flags={"has_bias": ("HAS_BIAS", (False, True), True), "relu": ("RELU", (False, True), False),
           "keep_z": ("KEEP_Z", (False, True), False), "precision": ("DOT_PRECISION", PRECISIONS, "ieee")},
    key=("M", "N", "K"),
    standard=(dict(has_bias=True, relu=True, keep_z=True),),
    fixed={"GROUP_M": 8},
)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, relu: bool = False,
           keep_z: bool = False, precision: str = "ieee", out=None):
    """y = act(x·Wᵀ + b) for x [M, K], W [N, K], b [N] (fp32); act = ReLU when ``relu``.

    Returns y [M, N] fp32, or (y, z) with the pre-activation z = x·Wᵀ + b when ``keep_z``.
    ``precision``: ``tl.dot``'s input precision for fp32 operands ("ieee" matches float64 closely,
    "tf32" is the fast tensor-core path). ``out``: preallocated y, or (y, z).
    """
    dtype = operand_dtype("linear", x, w)
    M, K = x.shape
    N = w.shape[0]
    check("linear", "x", x, (M, K), dtype)
    check("linear", "w", w, (N, K), dtype, x.device)
    if bias is not None:
        check("linear", "bias", bias, (N,), device=x.device)
    names = ("y", "z") if keep_z else ("y",)
    results = outputs("linear", out, names, ((M, N),) * len(names), x.device)
    z = results[1] if keep_z else dummy(x.device)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    launch(LINEAR, grid, (x, w, dummy(x.device) if bias is None else bias, results[0], z, M, N, K),
           has_bias=bias is not None, relu=relu, keep_z=keep_z, precision=precision)
    return results if keep_z else results[0]
