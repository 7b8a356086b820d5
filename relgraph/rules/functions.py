"""The ε step as model-local ONNX functions in the ``relgraph`` domain.

    Epsilon<Op>(x, W, den, R) -> (R_x, s):   s = R ⊘ den,   R_x = x ⊙ (s ⋆ᵀ W),   den = stab(z)

One function per linear map (Gemm, MatMul, Conv, and stride-1 2-d Conv, whose transpose runs as a
Conv); the body is standard ONNX, so onnxruntime inlines it, and a GPU lowering recognises the call and replaces it by one fused kernel (divide while loading
the R tile, multiply by x in the epilogue). ``s`` is returned for the bias share ⟨b, s⟩. The stabilized
denominator is an input: the caller computes it, from z in general, or more cheaply from a following ReLU's
output where the graph allows it (see ``Env.stabilized_output``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

DOMAIN = "relgraph"
DOMAIN_VERSION = 1

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


def function_proto(name: str, opset: int) -> onnx.FunctionProto:
    attrs, back = _BODIES[name]
    text = (
        f'<domain: "{DOMAIN}", opset_import: ["" : {opset}]>\n'
        f"{name} {attrs} (x, W, den, R) => (Rx, s) {{{_DIVIDE}    {back}\n    Rx = Mul (x, back)\n}}"
    )
    return onnx.parser.parse_function(text)


def epsilon_step(env, lin, epsilon: float):
    """Emit one ε step for the layer of ``env``; returns (R_x, s)."""
    return normalized_step(env, lin, lin.w, env.stabilized_output(epsilon))


def normalized_step(env, lin, w: np.ndarray, den):
    """R_x = x ⊙ ((R ⊘ den) ⋆ᵀ w), s = R ⊘ den, as one ``relgraph.Epsilon<Op>`` call.

    ``w`` is the weight the layer's rule pushes back through: W itself for ε, W⁺ for z⁺ on an input proved
    non-negative (one group, one term: the same step with another weight). ``den`` is the stabilized
    denominator. Returns (R_x, s).
    """
    from .linear import MatMulMap, activation

    b, node = env.b, env.node
    x = activation(env)
    if isinstance(lin, MatMulMap) and lin.left:  # W·x: no function form, plain ops
        s = b.op("Div", env.R, den)
        return b.op("Mul", x, lin.transpose(s, w)), s
    name = "Epsilon" + node.op_type
    extra = {}
    if node.op_type == "Conv" and lin.unit_stride_2d():
        name = "EpsilonConvUnitStride"
        extra = lin.flipped_geometry()
    elif node.op_type == "Conv":
        extra = dict(lin.geometry, output_padding=lin.output_padding)
    if node.op_type == "MatMul":
        weight = lin.param(np.ascontiguousarray(np.swapaxes(w, -1, -2)))
    else:
        weight = lin.param(w)
    b.functions.add(name)
    return b.op(name, x, weight, den, env.R, domain=DOMAIN, outputs=2, **extra)
