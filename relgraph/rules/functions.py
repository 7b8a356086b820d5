"""The ε step as model-local ONNX functions in the ``relgraph`` domain.

    Epsilon<Op>(x, W, den, R) -> (R_x, s):   s = R ⊘ den,   R_x = x ⊙ (s ⋆ᵀ W),   den = stab(z)

One function per linear map (Gemm, MatMul, Conv, and stride-1 2-d Conv, whose transpose runs as a
Conv); the body is standard ONNX, so onnxruntime inlines it, and a GPU lowering replaces the call by the
fused kernel its :class:`LocalFunction` record names (divide while loading the R tile, multiply by x in the
epilogue). The affine rules emit the calls (``relgraph.rules.linear``). ``s`` is returned for the bias share ⟨b, s⟩. The stabilized
denominator is an input: the caller computes it, from z in general, or more cheaply from a following ReLU's
output where the graph allows it (see ``Env.stabilized_output``).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx.parser

from ..graph import stabilized

DOMAIN = "relgraph"
DOMAIN_VERSION = 1


@dataclass(frozen=True)
class LocalFunction:
    """A model-local function of the ``relgraph`` domain: one relevance step whose body is standard ONNX, and
    the fused kernel that runs it on a GPU (:mod:`relgraph.lowering.plan` reads ``kernel``, never the name).

    ``op``: the layer's op type (Gemm, MatMul, Conv); ``unit_stride``: a 2-d stride-1 Conv whose transpose
    runs as a flipped-kernel Conv; ``rule``: ``gamma`` or ``alpha-beta`` for the split-forward steps;
    ``nonnegative``: the layer's input is proven ≥ 0, so every x⁻ term is dropped.
    """

    name: str
    kernel: str
    op: str = ""
    unit_stride: bool = False
    rule: str = ""
    nonnegative: bool = False


FUNCTIONS: dict[str, LocalFunction] = {}


def _declare(*functions: LocalFunction) -> None:
    FUNCTIONS.update((f.name, f) for f in functions)

_DIVIDE = """
    s = Div (R, den)
"""
# A stride-1 2-d convolution's transpose is itself a convolution: flip the kernel, swap its in/out
# channels within each group, pad by d·(k − 1) − p. onnxruntime's Conv kernels are faster than its
# ConvTranspose (NCHWc layouts), and the weight rewrite below folds to a constant at session start.
_FLIP_AS_CONV = """
    gshape = Constant <value_ints: ints = @grouped_shape> ()
    bshape = Constant <value_ints: ints = @back_shape> ()
    Wg = Reshape (W, gshape)
    Wt = Transpose <perm = [0, 2, 1, 3, 4]> (Wg)
    Wr = Reshape (Wt, bshape)
    starts = Constant <value_ints = [-1, -1]> ()
    ends = Constant <value_ints = [-9223372036854775807, -9223372036854775807]> ()
    axes = Constant <value_ints = [2, 3]> ()
    steps = Constant <value_ints = [-1, -1]> ()
    Wf = Slice (Wr, starts, ends, axes, steps)
    back = Conv <pads: ints = @back_pads, dilations: ints = @dilations, group: int = @group> (s, Wf)"""

_BODIES = {
    "EpsilonGemm": ("", "back = MatMul (s, W)"),
    "EpsilonMatMul": ("", "back = MatMul (s, W)"),
    "EpsilonConv": (
        "<strides, pads, dilations, group, output_padding>",
        "back = ConvTranspose <strides: ints = @strides, pads: ints = @pads, dilations: ints = @dilations, "
        "group: int = @group, output_padding: ints = @output_padding> (s, W)",
    ),
    "EpsilonConvUnitStride": ("<back_pads, dilations, group, grouped_shape, back_shape>", _FLIP_AS_CONV),
}


_declare(LocalFunction("EpsilonGemm", "epsilon_linear", "Gemm"),
         LocalFunction("EpsilonMatMul", "epsilon_linear", "MatMul"),
         LocalFunction("EpsilonConv", "epsilon_conv2d", "Conv"),
         LocalFunction("EpsilonConvUnitStride", "epsilon_conv2d", "Conv", unit_stride=True))


def function_proto(name: str, opset: int) -> onnx.FunctionProto:
    function = FUNCTIONS[name]
    if function.rule:
        return parts_function_proto(function, opset)
    if name in _ROUTES:
        return onnx.parser.parse_function(f'<domain: "{DOMAIN}", opset_import: ["" : {opset}]>\n{_ROUTES[name]}')
    attrs, back = _BODIES[name]
    text = (
        f'<domain: "{DOMAIN}", opset_import: ["" : {opset}]>\n'
        f"{name} {attrs} (x, W, den, R) => (Rx, s) {{{_DIVIDE}    {back}\n    Rx = Mul (x, back)\n}}"
    )
    return onnx.parser.parse_function(text)


# ------------------------------------------------------------------------------------------- pooling, sums

"""Two relevance steps without weights, as functions for the same reason: a GPU lowering runs each call as
one kernel, onnxruntime inlines the body.

    MaxPoolRoute(x, R) -> R_x          R_x[i] = Σ_{windows won by i} R (the gradient of max pooling)
    EpsilonSum(a, b, den, R) -> (R_a, R_b)     R_a = a ⊙ R ⊘ den, R_b = b ⊙ R ⊘ den (ε on z = a + b)

The route's body pools again for the winners' indices and scatter-adds R over them: the forward MaxPool
keeps its single output, and a lowering that re-finds the winners from x reads no indices at all.
"""

_ROUTES = {
    "MaxPoolRoute": """MaxPoolRoute <kernel_shape, strides, pads, dilations, ceil_mode> (x, R) => (Rx) {
    pooled, indices = MaxPool <kernel_shape: ints = @kernel_shape, strides: ints = @strides, pads: ints = @pads,
                               dilations: ints = @dilations, ceil_mode: int = @ceil_mode> (x)
    flat = Constant <value_ints = [-1]> ()
    count = Size (x)
    size = Reshape (count, flat)
    zeros = ConstantOfShape <value = float[1] {0.0}> (size)
    flat_indices = Reshape (indices, flat)
    flat_R = Reshape (R, flat)
    routed = ScatterElements <axis = 0, reduction = "add"> (zeros, flat_indices, flat_R)
    shape = Shape (x)
    Rx = Reshape (routed, shape)
}""",
    "EpsilonSum": """EpsilonSum (a, b, den, R) => (Ra, Rb) {
    s = Div (R, den)
    Ra = Mul (a, s)
    Rb = Mul (b, s)
}""",
}
_declare(LocalFunction("MaxPoolRoute", "maxpool2d_back"), LocalFunction("EpsilonSum", "epsilon_sum"))


def maxpool_route(env, geometry: dict):
    """Emit max pooling's winner-takes-all route of R as one ``relgraph.MaxPoolRoute`` call; returns R_x.
    ``geometry``: kernel_shape, strides, explicit pads, dilations, ceil_mode."""
    env.b.functions.add("MaxPoolRoute")
    return env.b.op("MaxPoolRoute", env.x, env.R, domain=DOMAIN, **geometry)


def epsilon_sum(env, a, b, den):
    """Emit the ε split of z = a + b (a, b of z's shape) as one ``relgraph.EpsilonSum`` call; returns
    (R_a, R_b)."""
    env.b.functions.add("EpsilonSum")
    return env.b.op("EpsilonSum", a, b, den, env.R, domain=DOMAIN, outputs=2)


# ------------------------------------------------------------------------------------------- γ and αβ

"""γ and αβ as model-local functions: one call per layer, so that a GPU lowering can run the layer as two
fused kernels (split forward, push-back) that read x and W once.

    <Rule><Op>[UnitStride][OnNonnegative](x, W, b⁺, b⁻, [z,] R) -> (R_x, s_a, s_b)

With x⁺ = max(x, 0), x⁻ = min(x, 0) and W⁺, W⁻ likewise, both rules need only the split forward

    Z⁺ = x⁺⋆W⁺ + x⁻⋆W⁻ + b⁺,      Z⁻ = x⁺⋆W⁻ + x⁻⋆W⁺ + b⁻

and push back two shares through the transposed map:

    R_x = x⁺ ⊙ (s_a ⋆ᵀ W⁺ + s_b ⋆ᵀ W⁻) + x⁻ ⊙ (s_b ⋆ᵀ W⁺ + s_a ⋆ᵀ W⁻),     R_bias = ⟨b⁺, s_a⟩ + ⟨b⁻, s_b⟩

- γ (zennit's Gamma): z₁ = (1+γ)Z⁺ + Z⁻, z₂ = Z⁺ + (1+γ)Z⁻, s₁ = [z > 0]·R ⊘ stab(z₁), s₂ = [z < 0]·R ⊘ stab(z₂)
  with z the layer's output; s_a = (1+γ)s₁ + s₂, s_b = s₁ + (1+γ)s₂.
- αβ: s_a = α·R ⊘ stab(Z⁺), s_b = −β·R ⊘ stab(Z⁻).

This is zennit's modified-weight form (``relgraph.rules.linear``) regrouped by the signs of x and W, written
once, by :func:`parts_relevance`, for the functions and for inline layers. ``OnNonnegative``: x ≥ 0
is proved (it comes out of a ReLU), every x⁻ term is dropped: half the products. ``UnitStride``: the 2-d
stride-1 transpose runs as a flipped-kernel Conv, as in ``EpsilonConvUnitStride``.
"""

_PARTS_PREFIX = {"gamma": "Gamma", "alpha-beta": "AlphaBeta"}
_PARTS: dict[tuple, LocalFunction] = {}
for _rule, _op, _unit, _nonneg in [(r, o, u, n) for r in _PARTS_PREFIX for o in ("Gemm", "Conv") for u in (False, True)
                                   for n in (False, True) if not (u and o == "Gemm")]:
    _PARTS[_rule, _op, _unit, _nonneg] = LocalFunction(
        _PARTS_PREFIX[_rule] + _op + "UnitStride" * _unit + "OnNonnegative" * _nonneg,
        "lrp_parts_linear" if _op == "Gemm" else "lrp_parts_conv2d", _op, _unit, _rule, _nonneg)
_declare(*_PARTS.values())


def parts_function(rule: str, op: str, unit_stride: bool, nonnegative: bool) -> LocalFunction:
    """The γ or αβ function of a Gemm or Conv layer."""
    return _PARTS[rule, op, unit_stride, nonnegative]


def parts_relevance(op, forward, back, stab, rule: str, x, wp, wn, bp, bn, z, R, zero, *, nonnegative: bool = False,
                    g1=None, alpha=None, beta=None):
    """(R_x, s_a, s_b) of a γ or αβ layer by the formulas above: the one ONNX definition of both rules, for
    these functions' text and for the builder's inline steps alike (``relgraph.rules.linear``).

    ``op(op_type, *inputs)`` writes an op; ``forward(x, w[, b])`` is the layer's map x⋆w + b and ``back(s, w)``
    its transpose s⋆ᵀw; ``stab(z)`` the stabilized denominator. ``wp``, ``wn``, ``bp``, ``bn``: W⁺, W⁻, b⁺, b⁻
    (``bp``/``bn`` may be whatever ``forward`` reads as no bias); ``z``: the layer's output (γ's masks).
    γ takes ``g1`` = 1 + γ, αβ takes ``alpha`` (None: 1) and ``beta`` (None: β = 0, and s_b is None: z⁺).
    """
    xp = x if nonnegative else op("Relu", x)
    xn = None if nonnegative else op("Min", x, zero)

    def split(w_same, w_other, b):  # x⁺⋆w_same + x⁻⋆w_other + b
        out = forward(xp, w_same, b)
        return out if nonnegative else op("Add", out, forward(xn, w_other))

    z_pos = split(wp, wn, bp)
    if rule == "gamma":
        z_neg = split(wn, wp, bn)
        s1 = op("Where", op("Greater", z, zero), op("Div", R, stab(op("Add", op("Mul", z_pos, g1), z_neg))), zero)
        s2 = op("Where", op("Less", z, zero), op("Div", R, stab(op("Add", z_pos, op("Mul", z_neg, g1)))), zero)
        sa, sb = op("Add", op("Mul", s1, g1), s2), op("Add", s1, op("Mul", s2, g1))
    else:
        sa = op("Div", R, stab(z_pos))
        sa = sa if alpha is None else op("Mul", sa, alpha)
        sb = None if beta is None else op("Neg", op("Mul", op("Div", R, stab(split(wn, wp, bn))), beta))

    def pushed(w_a, w_b):  # s_a ⋆ᵀ w_a + s_b ⋆ᵀ w_b
        out = back(sa, w_a)
        return out if sb is None else op("Add", out, back(sb, w_b))

    if nonnegative:
        return op("Mul", x, pushed(wp, wn)), sa, sb
    return op("Add", op("Mul", xp, pushed(wp, wn)), op("Mul", xn, pushed(wn, wp))), sa, sb


class _Body:
    """A function body in ONNX text, one fresh name per value."""

    def __init__(self):
        self.lines, self.count = [], 0

    def __call__(self, expr: str) -> str:
        self.count += 1
        name = f"v{self.count}"
        self.lines.append(f"    {name} = {expr}")
        return name

    def op(self, op_type: str, *inputs: str) -> str:
        return self(f"{op_type} ({', '.join(inputs)})")


def parts_function_proto(function: LocalFunction, opset: int) -> onnx.FunctionProto:
    rule, op, unit, nonneg = function.rule, function.op, function.unit_stride, function.nonnegative
    v = _Body()
    geometry = "strides: ints = @strides, pads: ints = @pads, dilations: ints = @dilations, group: int = @group"
    if op == "Gemm":
        attrs = []
        forward = lambda x, w, b="": v(f"Gemm <transB = 1> ({x}, {w}{', ' + b if b else ''})")  # noqa: E731
        back = lambda s, w: v(f"MatMul ({s}, {w})")  # noqa: E731
    else:
        attrs = ["strides", "pads", "dilations", "group"]
        forward = lambda x, w, b="": v(f"Conv <{geometry}> ({x}, {w}{', ' + b if b else ''})")  # noqa: E731
        if unit:
            attrs += ["back_pads", "grouped_shape", "back_shape"]

            def back(s, w):
                g = v(f"Reshape ({w}, gshape)")
                t = v(f"Transpose <perm = [0, 2, 1, 3, 4]> ({g})")
                r = v(f"Reshape ({t}, bshape)")
                f = v(f"Slice ({r}, starts, ends, axes, steps)")
                return v(f"Conv <pads: ints = @back_pads, dilations: ints = @dilations, group: int = @group> "
                         f"({s}, {f})")
        else:
            attrs += ["output_padding"]
            back = lambda s, w: v(f"ConvTranspose <{geometry}, output_padding: ints = @output_padding> "  # noqa
                                  f"({s}, {w})")
    attrs += ["epsilon"] + (["gamma"] if rule == "gamma" else ["alpha", "beta"])
    consts = ["    zero = Constant <value_float = 0.0> ()", "    eps = Constant <value_float: float = @epsilon> ()"]
    if unit:
        consts += ["    gshape = Constant <value_ints: ints = @grouped_shape> ()",
                   "    bshape = Constant <value_ints: ints = @back_shape> ()",
                   "    starts = Constant <value_ints = [-1, -1]> ()",
                   "    ends = Constant <value_ints = [-9223372036854775807, -9223372036854775807]> ()",
                   "    axes = Constant <value_ints = [2, 3]> ()",
                   "    steps = Constant <value_ints = [-1, -1]> ()"]
    if rule == "gamma":
        consts += ["    g = Constant <value_float: float = @gamma> ()", "    one = Constant <value_float = 1.0> ()",
                   "    g1 = Add (one, g)"]
    else:
        consts += ["    alpha = Constant <value_float: float = @alpha> ()",
                   "    beta = Constant <value_float: float = @beta> ()"]

    def stab(z):
        return stabilized(v.op, z, "eps", v("Neg (eps)"), "zero")

    coefficients = dict(g1="g1") if rule == "gamma" else dict(alpha="alpha", beta="beta")
    rx, sa, sb = parts_relevance(v.op, forward, back, stab, rule, "x", v("Relu (W)"), v("Min (W, zero)"), "bp", "bn",
                                 "z", "R", "zero", nonnegative=nonneg, **coefficients)
    inputs = "x, W, bp, bn, " + ("z, " if rule == "gamma" else "") + "R"
    text = (f'<domain: "{DOMAIN}", opset_import: ["" : {opset}]>\n'
            f"{function.name} <{', '.join(attrs)}> ({inputs}) => ({rx}, {sa}, {sb}) {{\n"
            + "\n".join(consts + v.lines) + "\n}")
    return onnx.parser.parse_function(text)
