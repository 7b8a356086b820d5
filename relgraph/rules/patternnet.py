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
import onnx_ir as ir

from ..graph import const_array
from .linear import AFFINE_OPS, LINEAR_MAPS, _place, affine_kind, layer_params
from .registry import AFFINE, Env, defrule

PATTERN_RULES = ("pattern", "pattern-attribution")


def pattern_problem(node: ir.Node, params) -> str | None:
    """Why the layer's fitted pattern (``params.patterns``) cannot be used, or None."""
    if params.patterns is None:
        return "needs fitted patterns: pass --patterns FILE (made by relgraph fit-patterns)"
    if node.op_type not in ("Gemm", "Conv"):
        return "patterns exist for Gemm and Conv layers only"
    a, w = params.patterns.get(node.name), const_array(node.inputs[1])
    if a is None:
        return "the patterns hold no pattern for this layer (fitted for another model?)"
    if a.shape != w.shape:
        return f"the pattern has shape {list(a.shape)}, the layer's weight {list(w.shape)}"
    return None


@defrule(AFFINE_OPS, affine_kind, *PATTERN_RULES, kinds=AFFINE, requires=pattern_problem)
def affine_pattern(env: Env):
    """R_x = R ⋆ᵀ A (``pattern``) or R ⋆ᵀ (W ⊙ A) (``pattern-attribution``), A the layer's fitted pattern."""
    w, _ = layer_params(env)
    a = env.params.patterns[env.node.name]
    back = a if env.rule == "pattern" else w * a
    lin = LINEAR_MAPS[env.node.op_type](env)
    return _place(env, lin.transpose(env.R, back.astype(np.float32)))
