"""The ε rule of a residual sum in one pass.

For z = a + b (two activations of one shape, no broadcasting) LRP-ε (zennit's ``Norm`` on a sum) splits
the incoming relevance r in proportion to the terms:

    ra = a ⊙ r ⊘ d,      rb = b ⊙ r ⊘ d,      d = den, stab(den) or den + ε (``tiles.stabilize``)

Unfused that is a stabilizer (one to three passes), a division and two products; here one pass reads a,
b, r and den and writes ra and rb.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .epsilon_matmul import MODES
from .launch import KernelSpec, check, launch, outputs
from .tiles import stabilize


@triton.jit
def _epsilon_sum_kernel(a, b, r, den, ra, rb, n, epsilon, MODE: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = e < n
    s = tl.load(r + e, mask=inside, other=0.0) / stabilize(tl.load(den + e, mask=inside, other=1.0), epsilon, MODE)
    tl.store(ra + e, tl.load(a + e, mask=inside, other=0.0) * s, mask=inside)
    tl.store(rb + e, tl.load(b + e, mask=inside, other=0.0) * s, mask=inside)


EPSILON_SUM = KernelSpec(
    op="epsilon_sum", fn=_epsilon_sum_kernel,
    params={"a": "*fp32", "b": "*fp32", "r": "*fp32", "den": "*fp32", "ra": "*fp32", "rb": "*fp32", "n": "i32",
            "epsilon": "fp32"},
    flags={"mode": ("MODE", MODES, "den")}, key=("n",),
    # a residual sum is followed by a ReLU (shift, ResNet) or not (stab, pre-activation blocks)
    standard=(dict(mode="shift"), dict(mode="stab")),
)


def epsilon_sum(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor, den: torch.Tensor, *, mode: str = "den",
                epsilon: float = 0.0, out=None):
    """(ra, rb) = (a ⊙ r ⊘ d, b ⊙ r ⊘ d) for a, b, r, den of one shape (fp32); d as in
    :func:`relgraph.kernels.epsilon_linear` ("den", "stab" on den = z = a + b, "shift" on den = relu(z)).
    ``out``: preallocated (ra, rb)."""
    op = "epsilon_sum"
    shape = tuple(a.shape)
    check(op, "a", a, shape)
    for name, t in (("b", b), ("r", r), ("den", den)):
        check(op, name, t, shape, device=a.device)
    ra, rb = outputs(op, out, ("ra", "rb"), (shape, shape), a.device)
    n = a.numel()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
    launch(EPSILON_SUM, grid, (a, b, r, den, ra, rb, n, float(epsilon)), mode=mode)
    return ra, rb
