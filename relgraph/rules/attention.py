"""Rules for attention: the Softmax inside a model and the MatMul of two activations (Q·Kᵀ, A·V).

Softmax s = softmax(x) along one axis (the attention weights):

- ``gradient``: R_x = s ⊙ (R − Σ s ⊙ R), the Jacobian-vector product (sums along the softmax axis).
- ``taylor``:   AttnLRP's rule (Achtibat et al. 2024, Prop. 3.1): the first-order Taylor expansion of each s_i at x
  with the bias absorbed, R_x = x ⊙ (R − s ⊙ Σ R). A logit of −∞ (a masked score) has s = 0 and gets 0. The rule
  does not conserve: Σ R − Σ R_x = Σ R − Σ x ⊙ R + (Σ x ⊙ s)(Σ R) is what the softmax absorbs, and it is
  reported as the node's bias relevance, so that input + biases + absorbed = R_out closes layer by layer.
- ``detach``:   CP-LRP (Ali et al. 2022): the attention weights are held constant; no relevance flows into x.

MatMul of two activations z = A·B (batched over the leading axes):

- ``gradient``: the product rule, R_A = R·Bᵀ, R_B = Aᵀ·R.
- ``uniform``:  AttnLRP's rule for bilinear maps: the ε rule over each sum z_ij = Σ_k a_ik b_kj, then the uniform
  rule on each product a_ik b_kj, s = R ⊘ stab(z), R_A = ½ A ⊙ (s·Bᵀ), R_B = ½ B ⊙ (Aᵀ·s).
- ``detach``:   CP-LRP: the operand that comes out of a softmax (the attention weights) is held constant and the
  other takes the whole ε share, R_V = V ⊙ (Aᵀ·s) for A·V. With no softmax operand (Q·Kᵀ, which the
  softmax's ``detach`` leaves without relevance anyway) it is ``uniform``.

An operand the explained input does not reach (``is_fixed``) is held constant under every rule: it takes no
relevance and the other operand takes the whole share.
"""

from __future__ import annotations

import onnx_ir as ir

from ..graph import attr, dims, is_fixed, rank
from .arithmetic import SHAPE_ONLY, unbroadcast
from .linear import affine_kind
from .registry import BILINEAR, NONNEGATIVE, SOFTMAX, Env, defrule, defsign


def _axis(env: Env):
    return env.b.ints([attr(env.node, "axis", -1) % rank(env.x)])


def _sum_along(env: Env, v):
    return env.b.op("ReduceSum", v, _axis(env), keepdims=1)


@defrule("Softmax", SOFTMAX, "gradient")
def softmax_gradient(env: Env):
    b, s = env.b, env.y
    return [b.op("Mul", s, b.op("Sub", env.R, _sum_along(env, b.op("Mul", s, env.R))))]


@defrule("Softmax", SOFTMAX, "taylor")
def softmax_taylor(env: Env):
    """R_x = x ⊙ (R − s ⊙ ΣR), 0 where x = ±∞; in the Q formulation (Q = R/a) the same rule reads as the gradient."""
    if env.formulation == "q":
        return softmax_gradient(env)
    b, x, s = env.b, env.x, env.y
    share = b.op("Sub", env.R, b.op("Mul", s, _sum_along(env, env.R)))
    rx = b.op("Where", b.op("IsInf", x), b.scalar(0.0), b.op("Mul", x, share))
    n = rank(x)
    # the rest is the bias of the softmax's normalizer, a constant-one input the op implies: one entry more
    return [rx, b.op("Sub", b.sum_per_sample(env.R, n), b.sum_per_sample(rx, n))]


@defrule("Softmax", SOFTMAX, "detach")
def softmax_detach(env: Env):
    return [None]


def _transposed(b, v: ir.Value):
    r = rank(v)
    return b.op("Transpose", v, perm=list(range(r - 2)) + [r - 1, r - 2])


def _products(env: Env, s):
    """(s·Bᵀ, Aᵀ·s), each summed back to its operand's shape (batch axes broadcast by MatMul)."""
    b, (a, c) = env.b, env.node.inputs
    out = dims(env.y)
    ga = b.op("MatMul", s, _transposed(b, c))
    gc = b.op("MatMul", _transposed(b, a), s)
    return (unbroadcast(env, ga, a, out[:-1] + dims(a)[-1:]),
            unbroadcast(env, gc, c, out[:-2] + dims(c)[-2:]))


def _held(env: Env, held: list[bool], s, share: float):
    """R_v = share · v ⊙ (the transposed product) for each operand not held constant (s = R ⊘ stab(z), or Q)."""
    b = env.b
    out = []
    for v, g, keep in zip(env.node.inputs, _products(env, s), held):
        if keep:
            out.append(None)
            continue
        if env.formulation == "r":
            g = b.op("Mul", v, g)
        out.append(g if share == 1.0 else b.op("Mul", g, b.scalar(share)))
    return out


def _fixed(env: Env) -> list[bool]:
    return [is_fixed(v) for v in env.node.inputs]


@defrule("MatMul", affine_kind, "gradient", kinds=BILINEAR)
def bilinear_gradient(env: Env):
    return [None if keep else g for keep, g in zip(_fixed(env), _products(env, env.R))]


def _split(env: Env, held: list[bool]):
    """The ε rule of z = A·B with the operands in ``held`` constant: the others share s = R ⊘ stab(z) evenly."""
    s = env.R if env.formulation == "q" else env.b.op("Div", env.R, env.stabilized_output(env.epsilon))
    free = held.count(False)
    return _held(env, held, s, 1.0 / free if free else 1.0)


@defrule("MatMul", affine_kind, "uniform", kinds=BILINEAR)
def bilinear_uniform(env: Env):
    return _split(env, _fixed(env))


@defrule("MatMul", affine_kind, "detach", kinds=BILINEAR)
def bilinear_detach(env: Env):
    held = [f or from_softmax(v) for f, v in zip(_fixed(env), env.node.inputs)]
    return _split(env, held if not all(held) else _fixed(env))


def from_softmax(v: ir.Value) -> bool:
    """Whether v is a softmax's output, up to reshapes, casts and a NaN guard (``Where(IsNaN(s), 0, s)``)."""
    node = v.producer()
    while node is not None and (node.op_type in SHAPE_ONLY or node.op_type in ("Where", "Cast", "Dropout")):
        data = [u for u in node.inputs if u is not None and not is_fixed(u) and u.dtype is not None
                and u.dtype.is_floating_point()]
        if len(data) != 1:
            return False
        node = data[0].producer()
    return node is not None and node.op_type == "Softmax"


defsign("Softmax", NONNEGATIVE)
