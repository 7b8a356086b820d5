"""The fused ε step of a dense layer: rx = x ⊙ ((r ⊘ d)·W).

For a layer z = x·Wᵀ + b with incoming relevance r, LRP-ε gives the input's relevance
rx = x ⊙ (s·W) with s = r ⊘ d and d the stabilized denominator (see ``tiles.stabilize``). Unfused this
is three passes over [M, N] and one over [M, K]; here the division happens while the r tile is loaded,
the product with x in the epilogue, and s never leaves the chip unless ``want_s`` asks for it (the
bias share ⟨b, s⟩ needs it).

The GEMM's output is rx [M, K], its reduction runs over the layer's N outputs: in the block names of
``configs.json``, BLOCK_N tiles the input features K and BLOCK_K steps through the outputs N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .gemm import PRECISIONS
from .launch import KernelSpec, check, dummy, launch, operand_dtype, outputs
from .tiles import dot_operand, grouped_tile, stabilize

MODES = ("den", "stab", "shift")


@triton.jit
def _epsilon_linear_kernel(x, w, r, den, rx, s_out, M, N, K, epsilon,
                           MODE: tl.constexpr, WANT_S: tl.constexpr, DOT_PRECISION: tl.constexpr,
                           GROUP_M: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_k = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_K):
        rn = n0 + tl.arange(0, BLOCK_K)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        offs = rm[:, None] * N + rn[None, :]
        # Padding lanes read r = 0 over d = 1, so they add nothing to the sum.
        s = tl.load(r + offs, mask=mask, other=0.0) / stabilize(tl.load(den + offs, mask=mask, other=1.0),
                                                                  epsilon, MODE)
        if WANT_S:  # the first column of programs sweeps every (row, output) once
            tl.store(s_out + offs, s, mask=mask & (pid_k == 0))
        wt = tl.load(w + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
        acc = tl.dot(dot_operand(s, wt), wt, acc, input_precision=DOT_PRECISION)
    offs = rm[:, None] * K + rk[None, :]
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    xt = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(rx + offs, xt * acc, mask=mask)


EPSILON_LINEAR = KernelSpec(
    op="epsilon_linear", fn=_epsilon_linear_kernel,
    params={"x": "*op", "w": "*op", "r": "*fp32", "den": "*fp32", "rx": "*fp32", "s_out": "*fp32",
            "M": "i32", "N": "i32", "K": "i32", "epsilon": "fp32"},
    flags={"mode": ("MODE", MODES, "den"), "want_s": ("WANT_S", (False, True), False),
           "precision": ("DOT_PRECISION", PRECISIONS, "ieee")},
    key=("M", "N", "K"),
    standard=(dict(mode="stab", want_s=True),),
    fixed={"GROUP_M": 8},
)


def epsilon_linear(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, den: torch.Tensor, *, mode: str = "den",
                   epsilon: float = 0.0, want_s: bool = False, precision: str = "ieee", out=None):
    """rx = x ⊙ ((r ⊘ d)·W) for x [M, K], W [N, K], r and den [M, N] (fp32).

    d = den (mode "den"); d = den + ε·(den ≥ 0 ? 1 : −1) (mode "stab", den = z); d = den + ε (mode
    "shift", den = a ReLU output y ≥ 0). Returns rx [M, K] fp32, or (rx, s) with s = r ⊘ d [M, N] when
    ``want_s``. For fp16 operands s is rounded to fp16 for the product with W: keep |s| < 65504 (bf16
    has fp32's range). ``out``: preallocated rx, or (rx, s).
    """
    dtype = operand_dtype("epsilon_linear", x, w)
    M, K = x.shape
    N = w.shape[0]
    check("epsilon_linear", "x", x, (M, K), dtype)
    check("epsilon_linear", "w", w, (N, K), dtype, x.device)
    check("epsilon_linear", "r", r, (M, N), device=x.device)
    check("epsilon_linear", "den", den, (M, N), device=x.device)
    names, shapes = (("rx", "s"), ((M, K), (M, N))) if want_s else (("rx",), ((M, K),))
    results = outputs("epsilon_linear", out, names, shapes, x.device)
    s = results[1] if want_s else dummy(x.device)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_N"]),)  # noqa: E731
    launch(EPSILON_LINEAR, grid, (x, w, r, den, results[0], s, M, N, K, float(epsilon)),
           mode=mode, want_s=want_s, precision=precision)
    return results if want_s else results[0]
