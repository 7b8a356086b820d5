"""Rules for elementwise arithmetic: Add, Sub, Mul, Div, BatchNormalization.

Three kinds, decided per node:

- *scale* (an operand is a constant): z = a·x + c elementwise. The gradient is a·R. LRP: each term's
  share of z, R_x = a·x ⊙ R ⊘ stab(z), R_c = c ⊙ R ⊘ stab(z); the constant c is a bias (blame the bias).
  A Mul/Div by a constant alone gives R_x = R exactly.
- *sum* (Add/Sub of two activations, the residual connection): z = a ± b, a linear map without
  parameters: the gradient passes R to both; LRP splits R_a = a ⊙ R ⊘ stab(z), R_b = ±b ⊙ R ⊘ stab(z).

On both, ``norm`` (the LRP composites' default, zennit's ``Norm`` on its ``Sum`` module) stabilizes with the
fixed ``stabilizer``; ``epsilon`` / ``normalized`` with the user's ε; ``zero`` with none. An Add of two terms of z's shape (a residual
  connection) emits the split as one ``relgraph.EpsilonSum`` call, which a GPU lowering runs as one kernel.
  On the ONNX target, a branch that comes out of an ε layer feeding only the sum takes its share
  R ⊘ stab(z) unmultiplied (``Share``): that layer's own ε step then needs no sign test.
- *product* (Mul of two activations: SiLU x·σ(x), squeeze-excitation x·σ(fc(…))): the gradient uses
  the product rule; ``gate`` gives all relevance to the signal and none to the gate (the LSTM LRP
  convention of Arras et al. 2017). The gate is recognised by what it computes: in x·g(x), g an
  elementwise function of x through any chain of elementwise ops (a hard swish written as
  x·(Clip(x + 3, 0, 6)·1/6), GELU's x·½(1 + erf(x/√2)), x·σ(1.702·x)), x being the signal up to a
  scaling (GELU's (½x)·(1 + erf(…))). Otherwise the gate is the operand that comes out of a sigmoid-like
  op, or else the one that is broadcast; when none of these tells, the relevance is split in half.

Broadcasting is undone by summing over the broadcast axes (the adjoint of Expand).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import attr, const_array, dims, is_fixed, rank
from .functions import epsilon_sum
from .registry import LINEAR, PRESERVES, PRODUCT, SCALE, Env, Share, defrule, defsign

GATE_OPS = {"Sigmoid", "HardSigmoid", "Softmax", "Tanh", "Erf"}  # GELU: x · (1 + erf(x/√2))/2
SHAPE_ONLY = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose", "Identity"}


def arithmetic_kind(node: ir.Node) -> str:
    """An operand the explained input does not reach (a constant or a run-time constant, ``is_fixed``) makes
    the node a scale layer; otherwise a Mul or Div is a product and an Add or Sub a sum."""
    if node.op_type == "BatchNormalization":
        return SCALE
    if node.op_type == "Div" and is_fixed(node.inputs[1]):
        return SCALE
    if node.op_type != "Div" and any(map(is_fixed, node.inputs)):
        return SCALE
    return PRODUCT if node.op_type in ("Mul", "Div") else LINEAR


def _check_arithmetic(node: ir.Node) -> str | None:
    if node.op_type == "Div" and is_fixed(node.inputs[0]) and not is_fixed(node.inputs[1]):
        return "a constant divided by an activation (a reciprocal) is not supported"
    if node.op_type == "BatchNormalization":
        if any(const_array(v) is None for v in node.inputs[1:5]):
            return "parameters are not constant"
        if attr(node, "training_mode", 0):
            return "training mode"
    return None


def unbroadcast(env: Env, g, target: ir.Value, g_dims: list | None = None):
    """Sum g (of the output's shape, or ``g_dims``) over the axes along which ``target`` was broadcast."""
    b = env.b
    out_dims, tgt_dims = g_dims or dims(env.y), dims(target)
    lead = len(out_dims) - len(tgt_dims)
    axes = [i for i in range(len(out_dims))
            if i < lead or (tgt_dims[i - lead] == 1 and out_dims[i] != 1)]
    if not axes:
        return g
    g = b.op("ReduceSum", g, b.ints(axes), keepdims=1)
    return b.op("Reshape", g, b.op("Shape", target)) if lead else g


def _operands(env: Env):
    """(activation operand index, constant array) of a scale node, and the sign of x in z."""
    node = env.node
    idx = 0 if not is_fixed(node.inputs[0]) else 1
    return idx, const_array(node.inputs[1 - idx])


def _bn_affine(node: ir.Node):
    """BatchNormalization as y = a ⊙ x + c with per-channel a, c, shaped to broadcast over [N, C, …]."""
    gamma, beta, mean, var = (const_array(v).astype(np.float64) for v in node.inputs[1:5])
    a = gamma / np.sqrt(var + attr(node, "epsilon", 1e-5))
    c = beta - a * mean
    spatial = len(node.inputs[0].shape) - 2 if node.inputs[0].shape is not None else 2
    shape = (1, -1) + (1,) * spatial
    return a.reshape(shape).astype(np.float32), c.reshape(shape).astype(np.float32)


@defrule(("Add", "Sub", "BatchNormalization"), arithmetic_kind, "gradient", kinds=(LINEAR, SCALE),
         check=_check_arithmetic)
@defrule(("Mul", "Div"), arithmetic_kind, "gradient", kinds=(SCALE, PRODUCT), check=_check_arithmetic,
         keeps_zeros=True)
def arithmetic_gradient(env: Env):
    node, b, R = env.node, env.b, env.R
    op = node.op_type
    out = [None] * len(node.inputs)
    if op == "BatchNormalization":
        a, c = _bn_affine(node)
        out[0] = b.op("Mul", R, b.const(a))
        if env.formulation == "q":  # the shift is a bias: R_c = c ⊙ Q, at the bias B's position
            out[2] = b.sum_per_sample(b.op("Mul", R, b.const(c)), rank(env.y))
        return out
    x0, x1 = node.inputs[0], node.inputs[1]
    const0, const1 = is_fixed(x0), is_fixed(x1)
    if env.formulation == "q" and op in ("Add", "Sub") and (const0 or const1):
        c = 0 if const0 else 1
        share = b.op("Mul", R, node.inputs[c])
        if op == "Sub" and const1:
            share = b.op("Neg", share)
        out[c] = b.sum_per_sample(share, rank(env.y))
    if op in ("Add", "Sub"):
        if not const0:
            out[0] = unbroadcast(env, R, x0)
        if not const1:
            out[1] = unbroadcast(env, R if op == "Add" else b.op("Neg", R), x1)
    elif op == "Mul":
        if not const0:
            out[0] = unbroadcast(env, b.op("Mul", R, x1), x0)
        if not const1:
            out[1] = unbroadcast(env, b.op("Mul", R, x0), x1)
    elif op == "Div":  # y = x / c: ∂y/∂x = 1/c, ∂y/∂c = −x/c² = −y/c
        out[0] = unbroadcast(env, b.op("Div", R, x1), x0)
        if not const1:
            out[1] = unbroadcast(env, b.op("Neg", b.op("Div", b.op("Mul", R, env.y), x1)), x1)
    return out


@defrule(("Add", "Sub", "BatchNormalization"), arithmetic_kind, "norm", "epsilon", "normalized", "zero",
         kinds=(LINEAR, SCALE), stabilized=True, multiplies_input=True)
@defrule(("Mul", "Div"), arithmetic_kind, "norm", "epsilon", "normalized", "zero", kinds=SCALE, stabilized=True,
         keeps_zeros=True)
def arithmetic_epsilon(env: Env):
    node, b, R = env.node, env.b, env.R
    op = node.op_type
    eps = env.epsilon
    out = [None] * len(node.inputs)
    if op in ("Mul", "Div"):  # one term: its share of z is all of z
        idx, _ = _operands(env)
        out[idx] = unbroadcast(env, R, node.inputs[idx])
        return out
    if _residual_sum(env):
        den = env.stabilized_output(eps)
        if not any(map(env.absorbs, node.inputs)):
            return list(epsilon_sum(env, node.inputs[0], node.inputs[1], den))
        s = b.op("Div", R, den)  # a branch from an ε layer takes its share unmultiplied (see Share)
        return [Share(v, s) if env.absorbs(v) else b.op("Mul", v, s) for v in node.inputs]
    s = b.op("Div", R, env.stabilized_output(eps))
    if op == "BatchNormalization":
        a, c = _bn_affine(node)
        out[0] = b.op("Mul", b.op("Mul", env.x, b.const(a)), s)
        out[2] = b.sum_per_sample(b.op("Mul", s, b.const(c)), rank(env.y))  # the shift, at the bias B's position
        return out
    signs = (1.0, 1.0 if op == "Add" else -1.0)
    for i, v in enumerate(node.inputs):
        share = b.op("Mul", v, s)
        if signs[i] < 0:
            share = b.op("Neg", share)
        if is_fixed(v):  # a bias: report it, it flows nowhere
            known = const_array(v)
            if known is None or np.isinf(known).any():  # an attention mask of −∞ takes nothing where it masks
                share = b.op("Where", b.op("IsInf", v), b.scalar(0.0), share)
            out[i] = b.sum_per_sample(share, rank(env.y))  # a bias: one value per sample
        else:
            out[i] = unbroadcast(env, share, v)
    return out


def _residual_sum(env: Env) -> bool:
    """An Add of two activations that both have the output's static shape (nothing to unbroadcast). A Sub
    keeps the plain ops: its second share is negated."""
    node = env.node
    if node.op_type != "Add" or any(map(is_fixed, node.inputs)):
        return False
    out = dims(env.y)
    return None not in out[1:] and all(dims(v) == out for v in node.inputs)


# ops that map each element of their activation inputs to one element (constant operands aside)
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Clip", "Min",
               "Max", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish",
               "ThresholdedRelu", "Shrink", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Sin", "Cos",
               "Cast", "Identity"}


def _scalings(v: ir.Value) -> list[ir.Value]:
    """v and the values it is a constant multiple of: v = k·u through Mul/Div by constants."""
    chain = [v]
    node = v.producer()
    while node is not None and node.op_type in ("Mul", "Div") and _by_constant(node) \
            and (node.op_type == "Mul" or is_fixed(node.inputs[1])):
        chain.append(next(u for u in node.inputs if not is_fixed(u)))
        node = chain[-1].producer()
    return chain


def _function_of(v: ir.Value, roots: list[ir.Value], memo: dict) -> bool:
    """Whether v is an elementwise function of the roots alone: every path up from v through elementwise ops
    ends at one of them or at a constant."""
    if any(v is r for r in roots) or is_fixed(v):
        return True
    if id(v) not in memo:  # the graph is a DAG: memo only saves walking a shared ancestor twice
        node = v.producer()
        data = [] if node is None or node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx") \
            else [u for u in node.inputs if u is not None and not is_fixed(u)]
        memo[id(v)] = bool(data) and all(_function_of(u, roots, memo) for u in data)
    return memo[id(v)]


def _gates(a: ir.Value, c: ir.Value) -> tuple[bool, bool]:
    """Which operands of the product a·c are gates: an elementwise function of the other (up to a scaling of
    it), else one that comes out of a sigmoid-like op."""
    gate_a, gate_c = _function_of(a, _scalings(c), {}), _function_of(c, _scalings(a), {})
    if gate_a != gate_c:
        return gate_a, gate_c
    return _is_gate(a), _is_gate(c)


def _is_gate(v: ir.Value) -> bool:
    """Whether v comes out of a sigmoid-like op, through reshapes and affine maps by constants (GELU's gate
    is (1 + erf(x/√2))/2, the tanh form's 1 + tanh(…))."""
    node = v.producer()
    while node is not None and (node.op_type in SHAPE_ONLY or _by_constant(node)):
        node = next(u for u in node.inputs if u is not None and not is_fixed(u)).producer()
    return node is not None and node.op_type in GATE_OPS


def _by_constant(node: ir.Node) -> bool:
    return node.op_type in ("Add", "Sub", "Mul", "Div") and sum(not is_fixed(u) for u in node.inputs) == 1


# The kind is decided per node here too: the registry keeps one kind function per op type, and a fixed
# PRODUCT would make every Mul by a constant a "product" as well.
@defrule(("Mul", "Div"), arithmetic_kind, "gate", kinds=PRODUCT, keeps_zeros=True)
def product_gate(env: Env):
    """All relevance to the signal operand, none to the gate.

    A quotient a / c of two activations is a normalization (a layer or RMS norm written out): c is the gate,
    held constant, and a gets R. A product with no recognizable gate (SwiGLU's up ⊙ act(gate)) takes the
    uniform rule.
    """
    a, c = env.node.inputs
    if env.node.op_type == "Div":
        signal = 0
    else:
        gate_a, gate_c = _gates(a, c)
        if gate_a != gate_c:
            signal = 1 if gate_a else 0
        else:
            full_a, full_c = dims(a) == dims(env.y), dims(c) == dims(env.y)
            signal = 0 if full_a and not full_c else 1 if full_c and not full_a else None
    if signal is None:
        return product_uniform(env)
    out = [None, None]
    # R formulation: R_signal = R. Q formulation: Q_signal = R_signal / signal = Q ⊙ y / signal, which is
    # Q ⊙ gate for a product and Q / c for a quotient.
    if env.formulation == "r":
        R = env.R
    elif env.node.op_type == "Div":
        R = env.b.op("Div", env.R, c)
    else:
        R = env.b.op("Mul", env.R, env.node.inputs[1 - signal])
    out[signal] = unbroadcast(env, R, env.node.inputs[signal])
    return out


@defrule("Mul", arithmetic_kind, "uniform", kinds=PRODUCT, keeps_zeros=True)  # a quotient is a gate
def product_uniform(env: Env):
    """The uniform rule for z = a ⊙ c (AttnLRP, Achtibat et al. 2024): R_a = R_c = R / 2.

    In the Q formulation, Q_a = (R/2)/a = (Q/2) ⊙ c, and symmetrically.
    """
    a, c = env.node.inputs
    half = env.b.op("Mul", env.R, env.b.scalar(0.5))
    if env.formulation == "q":
        return [unbroadcast(env, env.b.op("Mul", half, c), a), unbroadcast(env, env.b.op("Mul", half, a), c)]
    return [unbroadcast(env, half, a), unbroadcast(env, half, c)]


defsign(("Add", "Mul"), PRESERVES)
