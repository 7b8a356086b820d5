"""Relevance steps → kernel nodes: onnxscript rewrite rules over the explainer in onnx_ir.

Each rule matches one call of a model-local function of the ``relgraph`` domain whose :class:`LocalFunction`
record names a fused kernel, and replaces it by nodes of the ``relgraph.kernel`` domain, one per launch.
The records are read, never the names: a rule exists for every declared function with a kernel.

- the ε step ``Epsilon<Op>(x, W, den, R) → (R_x, s)`` and the residual sum's ``EpsilonSum(a, b, den, R)``:
  how ``den`` was made decides the kernel's ``mode``, so that the stabilizer runs while the R tile loads and
  its elementwise ops die. The rules are tried in this order:

  - stab(z) as ``relgraph.graph.stabilized`` spells it for the builder, ``Add(z, Where(GreaterOrEqual(z, 0), ε,
    −ε))``: the pattern is made by that same function → mode ``stab`` on z;
  - ``Add(y, ε)`` with a constant ε > 0 → mode ``shift`` on y (d = y + ε, exact for any y);
  - anything else → mode ``den``, the denominator as it is;
- a γ or αβ layer ``<Rule><Op>…(x, W, b⁺, b⁻, [z,] R) → (R_x, s_a, s_b)`` → the split forward
  ``lrp_parts_*`` (Z⁺, Z⁻) and the push-back ``lrp_parts_*_back``;
- max pooling's route ``MaxPoolRoute(x, R)`` of a 2-d pool → ``maxpool2d_back``.

A call whose operands do not fit its kernel (a batched MatMul weight, a 1-d convolution, a bias computed at
run time) is not rewritten; :func:`misfit` says why, and the lowering inlines the call's body.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir

from ..errors import require
from ..graph import attr, const_array, stabilized
from ..rules.functions import DOMAIN, FUNCTIONS, LocalFunction

KERNEL_DOMAIN = "relgraph.kernel"
# the attributes of a kernel node that are the kernel's constexpr switches (the rest are runtime arguments)
FLAGS = ("mode", "want_s", "x_nonneg", "rule", "has_bias")
CALL = "call"  # the attribute that keeps the name of the call a kernel node replaces


# ------------------------------------------------------------------------------------------- fitting


def rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def unfit_operand(what: str, value: ir.Value | None, want: int) -> str:
    """Why an operand does not fit a kernel: the kernels take constant 2-d weights and 2-d images."""
    if what == "weight" and (value is None or value.const_value is None):
        return "the weight is computed at run time, not a constant"
    have = rank(value)
    expected = ({2: "a matrix", 4: "a 2-d image batch [N, C, H, W]"} if what == "input" else
                {2: "a matrix", 4: "a 2-d filter bank"})[want]
    return f"its {what} has rank {have if have is not None else 'unknown'}; the kernel takes {expected}"


def misfit(call: ir.Node, function: LocalFunction) -> str | None:
    """Why the operands of ``call`` do not fit the kernel of ``function``, or None when they do."""
    kernel = function.kernel
    if kernel == "epsilon_sum":
        return None
    x = call.inputs[0]
    if kernel == "maxpool2d_back":
        return unfit_operand("input", x, 4) if rank(x) != 4 else None
    w = call.inputs[1]
    want = 2 if kernel in ("epsilon_linear", "lrp_parts_linear") else 4
    if w.const_value is None or rank(w) != want:
        return unfit_operand("weight", w, want)
    if (kernel != "epsilon_linear") and rank(x) != want:
        return unfit_operand("input", x, want)
    if function.rule and any(b.const_value is None for b in call.inputs[2:4]):
        return "the bias is computed at run time, not a constant"
    return None


def scalar(value: ir.Value) -> float | None:
    """The value of a one-element float constant, else None."""
    a = const_array(value)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 and a.dtype.kind == "f" else None


# ------------------------------------------------------------------------------------------- attributes


def _ints(call: ir.Node, name: str) -> list[int]:
    return list(attr(call, name))


def _epsilon_attrs(call: ir.Node, function: LocalFunction) -> dict:
    """The ε kernel's geometry: a stride-1 2-d conv's call carries its transpose's geometry, the forward pads
    are p = d·(k − 1) − back_pad."""
    if function.unit_stride:
        kernel = list(call.inputs[1].const_value.shape)[2:]
        dil, back = _ints(call, "dilations"), _ints(call, "back_pads")
        pads = [d * (k - 1) - b for d, k, b in zip(dil * 2, kernel * 2, back)]
        return dict(strides=[1, 1], pads=pads, dilations=dil, group=call.attributes["group"].as_int())
    return _geometry(call) if function.op == "Conv" else {}


def _geometry(call: ir.Node) -> dict:
    """A convolution call's strides, explicit pads, dilations and group."""
    return dict(strides=_ints(call, "strides"), pads=_ints(call, "pads"), dilations=_ints(call, "dilations"),
                group=call.attributes["group"].as_int())


def _parts_attrs(call: ir.Node, function: LocalFunction) -> tuple[dict, dict]:
    """(geometry, rule parameters) of a γ / αβ call."""
    geometry = {} if function.op == "Gemm" else _geometry(call)
    params = {k: call.attributes[k].as_float() for k in ("epsilon", "gamma", "alpha", "beta") if k in call.attributes}
    return geometry, params


# ------------------------------------------------------------------------------------------- the rules


def _call(op, function: LocalFunction, *inputs, outputs: int):
    names = ["out0", "out1", "out2"][:outputs]
    return getattr(op, function.name)(*inputs, _domain=DOMAIN, _outputs=names)


def _fits(function: LocalFunction):
    """The rules' check: the call's operands fit the kernel, else a failed match that says why."""
    def check(context, out0, **_):
        from onnxscript.rewriter.pattern import MatchResult  # optional: the triton target's stack

        why = misfit(out0.producer(), function)
        return MatchResult().fail(why) if why else True
    return check


def _kernel(op, name: str, inputs: list, outputs: int, call: ir.Node, **attributes):
    return getattr(op, name)(*inputs, _domain=KERNEL_DOMAIN, _outputs=outputs, **{CALL: call.name}, **attributes)


def _epsilon_rules(function: LocalFunction) -> list[tuple]:
    """stab, shift, den (in that order) for an ε function or the residual sum, each (target, replacement,
    condition, name)."""
    fits = _fits(function)
    is_sum = function.kernel == "epsilon_sum"
    outputs = 2

    def replace(op, first, second, den, r, out0, mode, epsilon):
        call = out0.producer()
        attrs = {} if is_sum else {**_epsilon_attrs(call, function), "want_s": 1}
        return _kernel(op, function.kernel, [first, second, r, den], outputs, call, mode=mode, epsilon=epsilon,
                       **attrs)

    def stab_target(op, first, second, z, eps, neg, zero, r):  # the builder's own spelling, as a pattern
        den = stabilized(lambda op_type, *inputs: getattr(op, op_type)(*inputs), z, eps, neg, zero)
        return _call(op, function, first, second, den, r, outputs=outputs)

    def stab_check(context, z, eps, neg, zero, out0, **_):
        e, n, o = scalar(eps), scalar(neg), scalar(zero)
        return e is not None and e > 0 and n == -e and o == 0.0 and fits(context, out0)

    def stab(op, first, second, z, eps, r, out0, **_):
        return replace(op, first, second, z, r, out0, "stab", scalar(eps))

    def shift_target(op, first, second, y, eps, r):
        return _call(op, function, first, second, op.Add(y, eps), r, outputs=outputs)

    def shift_check(context, eps, out0, **_):
        e = scalar(eps)
        return e is not None and e > 0 and fits(context, out0)

    def shift(op, first, second, y, eps, r, out0, **_):
        return replace(op, first, second, y, r, out0, "shift", scalar(eps))

    def den_target(op, first, second, den, r):
        return _call(op, function, first, second, den, r, outputs=outputs)

    def den(op, first, second, den, r, out0, **_):
        return replace(op, first, second, den, r, out0, "den", 0.0)

    return [(stab_target, stab, stab_check, f"{function.name}+stab"),
            (shift_target, shift, shift_check, f"{function.name}+shift"),
            (den_target, den, fits, function.name)]


def _parts_rule(function: LocalFunction) -> tuple:
    """A γ / αβ call → split forward + push-back; the bias inputs are dropped when the bias is zero."""
    gamma = function.rule == "gamma"

    def target(op, x, w, bp, bn, z, r):
        return _call(op, function, x, w, bp, bn, *([z] if gamma else []), r, outputs=3)

    def target_ab(op, x, w, bp, bn, r):
        return _call(op, function, x, w, bp, bn, r, outputs=3)

    def rewrite(op, x, w, bp, bn, r, out0, **_):
        call = out0.producer()
        geometry, params = _parts_attrs(call, function)
        has_bias = bool(np.any(bp.const_value.numpy()) or np.any(bn.const_value.numpy()))
        nonneg = int(function.nonnegative)
        z_pos, z_neg = _kernel(op, function.kernel, [x, w], 2, call, x_nonneg=nonneg, **geometry)
        bias = [bp, bn] if has_bias else [None, None]
        return _kernel(op, function.kernel + "_back", [x, w, r, z_pos, z_neg, *bias], 3, call,
                       rule=function.rule, x_nonneg=nonneg, has_bias=int(has_bias), want_s=1, **geometry, **params)

    return target if gamma else target_ab, rewrite, _fits(function), function.name


def _route_rule(function: LocalFunction) -> tuple:
    def target(op, x, r):
        return _call(op, function, x, r, outputs=1)

    def rewrite(op, x, r, out0, **_):
        call = out0.producer()
        attrs = {k: _ints(call, k) for k in ("kernel_shape", "strides", "pads", "dilations")}
        return _kernel(op, function.kernel, [x, r], 1, call, ceil_mode=call.attributes["ceil_mode"].as_int(),
                       **attrs)

    return target, rewrite, _fits(function), function.name


def _rules_of(function: LocalFunction) -> list[tuple]:
    if function.kernel in ("epsilon_linear", "epsilon_conv2d", "epsilon_sum"):
        return _epsilon_rules(function)
    if function.rule:
        return [_parts_rule(function)]
    if function.kernel == "maxpool2d_back":
        return [_route_rule(function)]
    raise AssertionError(f"no lowering rule for {function.name}'s kernel {function.kernel}")


@functools.cache
def kernel_rules(called: frozenset | None = None):
    """The onnxscript ``RewriteRuleSet``: one rule (three for the ε family) per declared function, or per function
    in ``called`` (the set tries each rule on each node: rules for functions a graph never calls cost time)."""
    require(("onnxscript",), "lowering to the triton target")
    from onnxscript.rewriter import pattern

    rules = [rule for function in FUNCTIONS.values() if called is None or function.name in called
             for rule in _rules_of(function)]
    return pattern.RewriteRuleSet([pattern.RewriteRule(target, replace, check, name=name)
                                   for target, replace, check, name in rules], commute=True)
