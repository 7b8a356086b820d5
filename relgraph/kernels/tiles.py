"""Device helpers shared by the kernel families: tile ordering, the stabilizer, the γ/αβ shares."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Program id → (row tile, column tile), GROUP_M row tiles at a time, so that programs running
    together share their operand tiles in L2 (Triton tutorial 03)."""
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size = min(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % size, (pid % width) // size


@triton.jit
def dot_operand(s, like):
    """A share s = r ⊘ d as an operand of the dot with ``like`` (the weight tile), in its dtype.

    fp16 tops out at 65504. A share at a near-zero denominator (a window wholly in the padding of a layer with
    a non-positive bias: z⁺ = 0, d = ε) would round to ±inf, and inf × 0 = NaN would poison every input its
    tile reaches; saturating keeps it finite. Such a share reaches no input, or its fp16 product is out of
    range whatever is done. fp32 and bf16 (fp32's exponent range) convert as they are.
    """
    if like.dtype == tl.float16:
        s = tl.minimum(tl.maximum(s, -65504.0), 65504.0)
    return s.to(like.dtype)


@triton.jit
def stabilize(den, epsilon, MODE: tl.constexpr):
    """The denominator d of an ε step: den ("den"), den + ε·sign(den) with sign(0) = +1 ("stab", den = z)
    or den + ε ("shift", den = a ReLU output ≥ 0, where the two agree)."""
    d = den
    if MODE == "stab":
        d = den + tl.where(den >= 0, epsilon, -epsilon)
    if MODE == "shift":
        d = den + epsilon
    return d


@triton.jit
def parts_shares(r, z_pos, z_neg, b_pos, b_neg, gamma, alpha, beta, epsilon, RULE: tl.constexpr):
    """The two shares (s_a, s_b) that the push-back rx = x⁺ ⊙ (s_a·W⁺ + s_b·W⁻) + x⁻ ⊙ (s_b·W⁺ + s_a·W⁻)
    needs, from the split forward z_pos = x⁺W⁺ + x⁻W⁻, z_neg = x⁺W⁻ + x⁻W⁺ and the bias parts.

    γ:  z = z_pos + z_neg + b (the layer's output), z₁ = (1+γ)z_pos + z_neg + b + γb⁺,
        z₂ = z_pos + (1+γ)z_neg + b + γb⁻, s₁ = [z>0]·r ⊘ stab(z₁), s₂ = [z<0]·r ⊘ stab(z₂),
        s_a = (1+γ)s₁ + s₂, s_b = s₁ + (1+γ)s₂.
    αβ: s_a = α·r ⊘ stab(z_pos + b⁺), s_b = −β·r ⊘ stab(z_neg + b⁻).
    """
    if RULE == "gamma":
        b = b_pos + b_neg
        z = z_pos + z_neg + b
        z1 = (1 + gamma) * z_pos + z_neg + b + gamma * b_pos
        z2 = z_pos + (1 + gamma) * z_neg + b + gamma * b_neg
        s1 = tl.where(z > 0, r / stabilize(z1, epsilon, "stab"), 0.0)
        s2 = tl.where(z < 0, r / stabilize(z2, epsilon, "stab"), 0.0)
        s_a = (1 + gamma) * s1 + s2
        s_b = s1 + (1 + gamma) * s2
    else:
        s_a = alpha * r / stabilize(z_pos + b_pos, epsilon, "stab")
        s_b = -beta * r / stabilize(z_neg + b_neg, epsilon, "stab")
    return s_a, s_b
