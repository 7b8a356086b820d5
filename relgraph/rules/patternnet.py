"""PatternNet and PatternAttribution (Kindermans et al. 2018): the gradient with learned weights.

Both are the backward pass of the gradient in which every affine layer's weights are replaced on the
way back (Appendix A.2.3, A.3.3):

- ``pattern`` (PatternNet):                R_x = R ⋆ᵀ A        the signal, projected back along the pattern
- ``pattern-attribution`` (PatternAttribution): R_x = R ⋆ᵀ (W ⊙ A)  the signal's contribution to the output

A is the layer's fitted pattern (:mod:`relgraph.patterns`), in the weight's shape; for the two-component
estimator it is a₊, since a ReLU that did not fire blocks the propagation. PatternAttribution is deep
Taylor decomposition with the root point x₀ = x − a₊wᵀx: w ⊙ (x − x₀)/(wᵀx) · R = w ⊙ a₊ · R. Neither
gives the bias a share (the bias does not covary with the output, so it carries no signal).
"""

from __future__ import annotations

import numpy as np

from ..errors import RelgraphError
from .linear import AFFINE_OPS, LINEAR_MAPS, _place, affine_kind, layer_params
from .registry import Env, defrule

PATTERN_RULES = ("pattern", "pattern-attribution")


@defrule(AFFINE_OPS, affine_kind, *PATTERN_RULES)
def affine_pattern(env: Env):
    """R_x = R ⋆ᵀ A (``pattern``) or R ⋆ᵀ (W ⊙ A) (``pattern-attribution``)."""
    w, _ = layer_params(env)
    a = pattern_for(env, w)
    back = a if env.rule == "pattern" else w * a
    lin = LINEAR_MAPS[env.node.op_type](env)
    return _place(env, lin.transpose(env.R, back.astype(np.float32)))


def pattern_for(env: Env, w: np.ndarray) -> np.ndarray:
    """The node's pattern from ``env.params.patterns``; raises naming the layer when it cannot be used."""
    node = env.node
    where = f"rule '{env.rule}' for {node.op_type} '{node.name}'"
    patterns = env.params.patterns
    if patterns is None:
        raise RelgraphError(f"{where} needs fitted patterns: pass --patterns FILE (made by relgraph fit-patterns)")
    if node.op_type not in ("Gemm", "Conv"):
        raise RelgraphError(f"{where}: patterns exist for Gemm and Conv layers only")
    a = patterns.get(node.name)
    if a is None:
        raise RelgraphError(f"{where}: the patterns hold no pattern for this layer (fitted for another model?)")
    if a.shape != w.shape:
        raise RelgraphError(f"{where}: the pattern has shape {list(a.shape)}, the layer's weight {list(w.shape)}")
    return a
