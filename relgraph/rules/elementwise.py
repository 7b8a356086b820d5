"""Rules for elementwise nonlinearities y = f(x): rectifiers (Relu, LeakyRelu, PRelu with a constant slope per
channel, Clip, Max/Min with a constant: per channel, a one-element one being a Clip by canonicalization, the
activation first; ThresholdedRelu, Shrink), smooth ones (Elu, Selu, Celu, Softplus, Softsign, Sigmoid, Tanh,
Erf, Pow by a constant, and Sqrt and Reciprocal, the pieces of a normalizer written out), the hard ones
(HardSigmoid, HardSwish), and Neg, y = −x (an activation here: ``pass`` gives it R_x = R, as the ε rule gives
a scaling by a constant, (−x)·R ⊘ (−x)). Mish, x·tanh(softplus(x)), is a gate (``decompose_gates``).

The derivatives, with torch's value at a kink (x = 0, or x = ±λ, taken from the side of x ≤ 0 or |x| ≤ λ):

    Selu(x; α, γ)            = γx (x > 0), γα(eˣ − 1) (x ≤ 0)       f′ = γ, γαeˣ = y + γα
    Celu(x; α)               = x (x > 0), α(e^(x/α) − 1) (x ≤ 0)     f′ = 1, e^(x/α) = y/α + 1
    Softsign(x)              = x / (1 + |x|)                         f′ = 1/(1 + |x|)²
    ThresholdedRelu(x; α)    = x (x > α), 0 otherwise                f′ = 1 (x > α), 0 otherwise
    Shrink(x; λ, b)          = x − b (x > λ), x + b (x < −λ), 0      f′ = 1 (|x| > λ), 0 otherwise
                               (torch's hardshrink: b = 0; softshrink: b = λ)

- ``gradient``:        R_x = f′(x) ⊙ R (the chain rule; torch's derivative conventions at the kinks).
- ``pass`` / ``ignore``: R_x = R. LRP's treatment of activations: relevance is not changed by them
  (the "ignore" rule of the per-layer-type view of LRP for nonlinearities).
- ``slope``:           R_x = (f(x)/x) ⊙ R (per-layer-type view): the ``ignore`` rule rephrased for Q = R/a; equal to
  the gradient for ReLU. Where x = 0 the limit f′(0) is used.
- ``repeat``:          R_x = f(R) (per-layer-type view): the activation applied to the relevance itself; the only
  rule here that is not linear in R.
- ``rescale``:         R_x = (Δy/Δx) ⊙ R with Δ the difference to the baseline's forward pass (the
  per-layer-type view's "compare to baseline"; DeepLIFT's rescale rule, Shrikumar et al. 2017); f′(x) ⊙ R where |Δx| < 1e-10,
  as captum.
- ``deconvnet``:       R_x = relu(R) at rectifiers (Zeiler & Fergus 2014); the gradient elsewhere.
- ``guided-backprop``: R_x = relu(f′(x) ⊙ R) at rectifiers (Springenberg et al. 2015); the gradient
  elsewhere.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import attr, const_array
from .registry import ACTIVATION, NONNEGATIVE, Env, defrule, defsign

RECTIFIERS = ("Relu", "LeakyRelu", "PRelu")


def derivative_mask(env: Env, R=None):
    """f′(x) ⊙ R for each supported activation (R defaults to the incoming relevance)."""
    b, x, y, node = env.b, env.x, env.y, env.node
    R = env.R if R is None else R
    op = node.op_type
    zero, one = b.scalar(0.0), b.scalar(1.0)
    if op == "Relu":
        return b.op("Where", b.op("Greater", x, zero), R, zero)
    if op == "LeakyRelu":
        slope = attr(node, "alpha", 0.01)
        return b.op("Where", b.op("Greater", x, zero), R, b.op("Mul", R, b.scalar(slope)))
    if op == "PRelu":  # the slope a (a constant, per channel) below 0
        return b.op("Where", b.op("Greater", x, zero), R, b.op("Mul", R, node.inputs[1]))
    if op == "Elu":  # α·eˣ = y + α below 0
        below = b.op("Mul", R, b.op("Add", y, b.scalar(attr(node, "alpha", 1.0))))
        return b.op("Where", b.op("Greater", x, zero), R, below)
    if op == "Selu":
        gamma = attr(node, "gamma", 1.05070102214813232421875)
        alpha = attr(node, "alpha", 1.67326319217681884765625)
        below = b.op("Mul", R, b.op("Add", y, b.scalar(alpha * gamma)))
        return b.op("Where", b.op("Greater", x, zero), b.op("Mul", R, b.scalar(gamma)), below)
    if op == "Celu":
        below = b.op("Mul", R, b.op("Add", b.op("Div", y, b.scalar(attr(node, "alpha", 1.0))), one))
        return b.op("Where", b.op("Greater", x, zero), R, below)
    if op == "Softsign":  # from x: 1 − |y| loses digits where |x| is large
        d = b.op("Add", b.op("Abs", x), one)
        return b.op("Div", R, b.op("Mul", d, d))
    if op == "ThresholdedRelu":
        return b.op("Where", b.op("Greater", x, b.scalar(attr(node, "alpha", 1.0))), R, zero)
    if op == "Shrink":
        return b.op("Where", b.op("Greater", b.op("Abs", x), b.scalar(attr(node, "lambd", 0.5))), R, zero)
    if op == "Softplus":  # log(1 + eˣ)′ = σ(x)
        return b.op("Mul", R, b.op("Sigmoid", x))
    if op == "Neg":
        return b.op("Neg", R)
    if op in ("Max", "Min"):  # 1 where x is the one taken (ties, of measure zero, to the constant)
        taken = b.op("Greater" if op == "Max" else "Less", x, node.inputs[1])
        return b.op("Where", taken, R, zero)
    if op == "Clip":
        lo, hi = _clip_bounds(node)
        inside = None
        if lo is not None:
            inside = b.op("GreaterOrEqual", x, b.scalar(lo))
        if hi is not None:
            upper = b.op("LessOrEqual", x, b.scalar(hi))
            inside = upper if inside is None else b.op("And", inside, upper)
        return R if inside is None else b.op("Where", inside, R, zero)
    if op == "Sigmoid":  # σ′ = σ(1 − σ)
        return b.op("Mul", R, b.op("Mul", y, b.op("Sub", one, y)))
    if op == "Tanh":  # tanh′ = 1 − tanh²
        return b.op("Mul", R, b.op("Sub", one, b.op("Mul", y, y)))
    if op == "HardSigmoid":  # α inside 0 < αx + β < 1
        alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
        t = b.op("Add", b.op("Mul", x, b.scalar(alpha)), b.scalar(beta))
        inside = b.op("And", b.op("Greater", t, zero), b.op("Less", t, one))
        return b.op("Where", inside, b.op("Mul", R, b.scalar(alpha)), zero)
    if op == "Pow":  # (x^p)′ = p·x^(p−1), p a constant (GELU's tanh form has x³)
        p = const_array(node.inputs[1]).astype(np.float32)
        return b.op("Mul", R, b.op("Mul", b.op("Pow", x, b.const(p - 1)), b.const(p)))
    if op == "Erf":  # erf′ = 2/√π · exp(−x²)
        bell = b.op("Exp", b.op("Neg", b.op("Mul", x, x)))
        return b.op("Mul", R, b.op("Mul", bell, b.scalar(2.0 / np.sqrt(np.pi))))
    if op == "Sqrt":  # ½/√x
        return b.op("Div", b.op("Mul", R, b.scalar(0.5)), y)
    if op == "Reciprocal":  # −1/x² = −y²
        return b.op("Neg", b.op("Mul", R, b.op("Mul", y, y)))
    if op == "HardSwish":  # x·relu6(x+3)/6: 0 below −3, x/3 + 1/2 up to 3, 1 above (torch's convention)
        slope = b.op("Add", b.op("Mul", x, b.scalar(1.0 / 3.0)), b.scalar(0.5))
        d = b.op("Where", b.op("Less", x, b.scalar(-3.0)), zero,
                 b.op("Where", b.op("LessOrEqual", x, b.scalar(3.0)), slope, one))
        return b.op("Mul", R, d)
    raise AssertionError(op)


def _clip_bounds(node):
    if len(node.inputs) > 1:  # opset ≥ 11: bounds are inputs
        lo = const_array(node.inputs[1]) if node.inputs[1] is not None else None
        hi = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))
    return attr(node, "min", None), attr(node, "max", None)


def _check_clip(node) -> str | None:
    for v in node.inputs[1:]:
        if v is not None and const_array(v) is None:
            return "bounds are not constant"
    return None


ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "ThresholdedRelu",
               "Shrink", "Neg", "Clip", "Max", "Min", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Erf", "Pow",
               "Sqrt", "Reciprocal")
ZERO_KEEPING = ("Relu", "LeakyRelu", "Tanh", "HardSwish")  # f(0) = 0


def _check_operands(node) -> str | None:
    if node.op_type == "Clip":
        return _check_clip(node)
    if node.op_type == "Pow" and const_array(node.inputs[1]) is None:
        return "the exponent is not constant"
    if node.op_type == "PRelu" and const_array(node.inputs[1]) is None:
        return "the slope is not constant"
    if node.op_type in ("Max", "Min") and (len(node.inputs) != 2 or const_array(node.inputs[1]) is None):
        return "only of one activation and a constant"
    return None


@defrule(ACTIVATIONS, ACTIVATION, "gradient", check=_check_operands)
def activation_gradient(env: Env):
    return env.to_first_input(derivative_mask(env))


@defrule(ZERO_KEEPING, ACTIVATION, "pass", "ignore", keeps_zeros=True)
@defrule(tuple(op for op in ACTIVATIONS if op not in ZERO_KEEPING), ACTIVATION, "pass", "ignore")
def activation_pass(env: Env):
    return env.to_first_input(env.R)


@defrule(ACTIVATIONS, ACTIVATION, "deconvnet")
def activation_deconvnet(env: Env):
    if env.node.op_type in RECTIFIERS:
        return env.to_first_input(env.b.op("Relu", env.R))
    return activation_gradient(env)


@defrule(ACTIVATIONS, ACTIVATION, "guided-backprop")
def activation_guided(env: Env):
    rx = derivative_mask(env)
    if env.node.op_type in RECTIFIERS:
        rx = env.b.op("Relu", rx)
    return env.to_first_input(rx)


@defrule(ACTIVATIONS, ACTIVATION, "slope")
def activation_slope(env: Env):
    b, x = env.b, env.x
    zero = b.scalar(0.0)
    nonzero = b.op("Not", b.op("Equal", x, zero))
    safe_x = b.op("Where", nonzero, x, b.scalar(1.0))
    ratio = b.op("Where", nonzero, b.op("Div", env.y, safe_x), derivative_mask(env, b.scalar(1.0)))
    return env.to_first_input(b.op("Mul", ratio, env.R))


@defrule(ACTIVATIONS, ACTIVATION, "repeat")
def activation_repeat(env: Env):
    """The forward op, attributes and constant operands included, applied to R."""
    node = env.node
    attributes = {name: a.value for name, a in node.attributes.items()}
    return env.to_first_input(env.b.op(node.op_type, env.R, *node.inputs[1:], **attributes))


@defrule(ACTIVATIONS, ACTIVATION, "rescale")
def activation_rescale(env: Env):
    b, x = env.b, env.x
    x_bar, y_bar = env.baseline(x), env.baseline(env.y)
    if x_bar is None:
        raise AssertionError("rescale needs the baseline's forward pass")
    dx, dy = b.op("Sub", x, x_bar), b.op("Sub", env.y, y_bar)
    close = b.op("Less", b.op("Abs", dx), b.scalar(1e-10))
    safe_dx = b.op("Where", close, b.scalar(1.0), dx)
    ratio = b.op("Mul", env.R, b.op("Div", dy, safe_dx))
    return env.to_first_input(b.op("Where", close, derivative_mask(env), ratio))


def _clip_sign(node: ir.Node) -> str | None:
    """A Clip with a lower bound ≥ 0 gives y ≥ 0."""
    low = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None \
        else attr(node, "min", None)
    return NONNEGATIVE if low is not None and float(np.asarray(low)) >= 0 else None


# y ≥ 0 whatever x (Exp and Abs sit in gates and normalizers written out)
defsign(("Relu", "Sigmoid", "HardSigmoid", "Exp", "Abs"), NONNEGATIVE)
defsign("Clip", _clip_sign)
