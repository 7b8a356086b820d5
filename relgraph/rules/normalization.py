"""Normalization layers: y = γ ⊙ (x − μ) / σ + β, with μ the mean and σ = √(var + ε_N) of one group of
elements (n of them), then an affine map. All of them arrive here as LayerNormalization: the group is the
trailing axes from ``axis``, one per position of the leading axes, and γ, β broadcast to x (ONNX allows
any unidirectional broadcast), so that the affine map may vary along the leading axes too.

Canonicalization brings the other normalizations to this op (:mod:`relgraph.passes.fold_group_norm`):
InstanceNormalization is LayerNormalization from axis 2 with γ, β of shape [C, 1, …]; GroupNormalization
(and torch's Reshape → InstanceNormalization → Reshape → Mul γ → Add β) a LayerNormalization from axis 2 of
x viewed as [N, G, C/G, S] with γ, β of shape [G, C/G, 1]; a LayerNorm written out op by op is folded by
:mod:`relgraph.passes.fuse_layer_norm`. So one statistics helper and one rule per family serve all of them.

- ``gradient``: R_x = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) / σ with g = γ ⊙ R and x̂ = (x − μ)/σ (the means over
  the group): the exact Jacobian, μ and σ included.
- ``epsilon`` / ``normalized`` / ``zero`` / ``norm``: the LN rule of Ali et al. (2022, "XAI for
  Transformers"), σ held fixed. y = A x + β is then an affine map, A = diag(γ/σ)(I − 𝟙𝟙ᵀ/n) on each group,
  and the ε rule applies as to any other: s = R ⊘ stab(y), R_x = x ⊙ Aᵀ s = x ⊙ (u − mean(u)) with
  u = γ ⊙ s / σ, and β, a bias, gets β ⊙ s. Σ R_x = Σ (y − β) ⊙ s: the rule conserves like ε on a linear
  layer.
"""

from __future__ import annotations

import numpy as np

from ..graph import attr, const_array, dims, rank
from .registry import SCALE, Env, defrule


def _check(node) -> str | None:
    if any(v is not None and const_array(v) is None for v in node.inputs[1:]):
        return "scale or bias is not constant"
    if any(o.uses() for o in node.outputs[1:]):
        return "the mean and inverse standard deviation outputs are used"
    if None in _normalized_dims(node):
        return "the normalized axes are not static"
    return None


def _normalized_dims(node) -> list:
    x = node.inputs[0]
    return dims(x)[attr(node, "axis", -1) % len(x.shape):]


def _statistics(env: Env):
    """(the mean over the group as a function, x − μ, σ), as graph values: the group is the trailing axes
    from ``axis``, n = the number of elements in it, σ = √(mean((x − μ)²) + ε_N)."""
    b, x = env.b, env.x
    r = rank(x)
    axes = b.ints(list(range(attr(env.node, "axis", -1) % r, r)))
    inv_n = b.scalar(1.0 / float(np.prod(_normalized_dims(env.node))))

    def mean(v):
        return b.op("Mul", b.op("ReduceSum", v, axes, keepdims=1), inv_n)

    centered = b.op("Sub", x, mean(x))
    variance = mean(b.op("Mul", centered, centered))
    sigma = b.op("Sqrt", b.op("Add", variance, b.scalar(attr(env.node, "epsilon", 1e-5))))
    return mean, centered, sigma


@defrule("LayerNormalization", SCALE, "gradient", check=_check)
def layer_norm_gradient(env: Env):
    b = env.b
    mean, centered, sigma = _statistics(env)
    normalized = b.op("Div", centered, sigma)
    g = b.op("Mul", env.R, env.node.inputs[1])
    inner = b.op("Sub", b.op("Sub", g, mean(g)), b.op("Mul", normalized, mean(b.op("Mul", g, normalized))))
    return env.to_first_input(b.op("Div", inner, sigma))


@defrule("LayerNormalization", SCALE, "norm", "epsilon", "normalized", "zero", stabilized=True,
         multiplies_input=True)
def layer_norm_epsilon(env: Env):
    b, node = env.b, env.node
    mean, _, sigma = _statistics(env)
    s = b.op("Div", env.R, env.stabilized_output(env.epsilon))
    u = b.op("Div", b.op("Mul", s, node.inputs[1]), sigma)
    out = env.to_first_input(b.op("Mul", env.x, b.op("Sub", u, mean(u))))
    if len(node.inputs) > 2 and node.inputs[2] is not None:  # β: a bias
        out[2] = b.sum_per_sample(b.op("Mul", s, node.inputs[2]), rank(env.y))
    return out
