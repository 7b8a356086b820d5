"""Relevance is a property of the function, not of its spelling (DESIGN.md 4b): metamorphic tests.

Each case is one function written the ways exporters write it (torch, tf2onnx, paddle2onnx, jax2onnx, onnx's
version converter), inline in ONNX text. Every spelling sits in the same small CNN (conv → the spelled part →
1×1 conv → ReLU → global pool → dense), with the same random weights; compiled under ``gradient``,
``epsilon``, ``epsilon-plus-flat`` and ``epsilon-gamma-box`` and run by onnxruntime, every spelling must give
the logits and the relevance of the first one, to a relative L2 of 1e-6 per sample, for several seeds.

The canonical op each spelling folds to is asserted too (the pass fired), and a MobileNetV3-like stack of
hard swishes written as tf2onnx writes them must deliver the logit to the input (conservation under ε).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import relgraph
from relgraph.frontend import prepare
from relgraph.graph import to_proto

try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

RULES = {"gradient": {}, "epsilon": {}, "epsilon-plus-flat": {}, "epsilon-gamma-box": {"bounds": (-1.0, 1.0)}}
SEEDS = (0, 1, 2)
TOLERANCE = 1e-6

CONSTANTS = """
   zero = Constant <value = float {0.0}> ()
   half = Constant <value = float {0.5}> ()
   one = Constant <value = float {1.0}> ()
   three = Constant <value = float {3.0}> ()
   six = Constant <value = float {6.0}> ()
   sixth = Constant <value = float {0.16666667}> ()
   sqrt2 = Constant <value = float {1.4142135}> ()
   rsqrt2 = Constant <value = float {0.70710677}> ()"""

HEAD = """
<ir_version: 10, opset_import: ["" : {opset}]>
block (float[N, 3, 6, 6] x) => (float[N, 5] {output}) {{
   h = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
{constants}
{body}
   c = Conv (a, W2, B2)
   r = Relu (c)
   p = GlobalAveragePool (r)
   f = Flatten (p)
{tail}
}}
"""
LOGITS = "   logits = Gemm <transB = 1> (f, W3, B3)"

# the parameters of the normalizations: γ and β over the width (6), per channel (4, as [4, 1, 1])
LN_PARAMS = ("   lg = Constant <value = float[6] {0.8, 1.2, 0.5, 1.5, 1.0, 0.7}> ()"
             "\n   lb = Constant <value = float[6] {0.1, -0.2, 0.3, 0.0, -0.1, 0.2}> ()"
             "\n   eps = Constant <value = float {0.001}> ()")
CHANNEL_PARAMS = ("   cg = Constant <value = float[4, 1, 1] {0.8, 1.3, 0.6, 1.1}> ()"
                  "\n   cb = Constant <value = float[4, 1, 1] {0.2, -0.1, 0.0, 0.3}> ()")
GROUPED = ("\n   gs = Constant <value = int64[3] {0, 2, -1}> ()\n   gr = Reshape (h, gs)"
           "\n   g1 = Constant <value = float[2] {1.0, 1.0}> ()\n   g0 = Constant <value = float[2] {0.0, 0.0}> ()"
           "\n   n = InstanceNormalization <epsilon = 0.001> (gr, g1, g0)")

# the function from h to a, in each spelling; the first of each case is the canonical form
BODIES = {
    "hardswish": ("HardSwish", [
        "   a = HardSwish (h)",
        # tf2onnx (Keras hard_swish): x · (Clip(x + 3, 0, 6) · 1/6)
        "   t = Add (h, three)\n   u = Clip (t, zero, six)\n   g = Mul (u, sixth)\n   a = Mul (h, g)",
        # paddle2onnx: (x · Clip(x + 3, 0, 6)) / 6, the scaling after the product
        "   t = Add (h, three)\n   u = Clip (t, zero, six)\n   m = Mul (h, u)\n   a = Div (m, six)",
        # jax2onnx: x · min(max(x + 3, 0), 6) / 6, constants first
        "   t = Add (three, h)\n   u = Max (t, zero)\n   v = Min (six, u)\n   g = Div (v, six)\n   a = Mul (g, h)",
        # torch at opset < 14: x · HardSigmoid(x)
        "   g = HardSigmoid <alpha = 0.16666667, beta = 0.5> (h)\n   a = Mul (h, g)",
        # Relu then Min(·, 6), the 1/6 on the signal
        "   t = Add (h, three)\n   u = Relu (t)\n   v = Min (u, six)\n   s = Mul (h, sixth)\n   a = Mul (s, v)",
    ]),
    "hard-sigmoid": ("HardSigmoid", [
        "   a = HardSigmoid <alpha = 0.16666667, beta = 0.5> (h)",
        "   t = Add (h, three)\n   u = Clip (t, zero, six)\n   a = Mul (u, sixth)",  # tf2onnx
        "   t = Add (h, three)\n   u = Clip (t, zero, six)\n   a = Div (u, six)",   # paddle2onnx
        "   t = Add (h, three)\n   u = Max (t, zero)\n   v = Min (u, six)\n   a = Div (v, six)",  # jax2onnx
        "   s = Div (h, six)\n   t = Add (s, half)\n   a = Clip (t, zero, one)",  # clip(x/6 + 1/2, 0, 1)
    ]),
    "squeeze-excitation": ("HardSigmoid", [
        "   q = GlobalAveragePool (h)\n   z = Conv (q, WS, BS)\n   g = HardSigmoid <alpha = 0.16666667, beta = 0.5> (z)"
        "\n   a = Mul (h, g)",
        "   q = GlobalAveragePool (h)\n   z = Conv (q, WS, BS)\n   t = Add (z, three)\n   u = Clip (t, zero, six)"
        "\n   g = Mul (u, sixth)\n   a = Mul (h, g)",
    ]),
    "relu6": ("Clip", [
        "   a = Clip (h, zero, six)",
        "   u = Max (h, zero)\n   a = Min (u, six)",
        "   u = Min (h, six)\n   a = Max (zero, u)",
        "   u = Relu (h)\n   a = Min (u, six)",
    ]),
    # a floor per channel: Max with a constant either side; the same floor everywhere is a Clip
    "max-constant": ("Max", [
        "   k = Constant <value = float[4, 1, 1] {0.3, -0.2, 0.1, 0.0}> ()\n   a = Max (h, k)",
        "   k = Constant <value = float[4, 1, 1] {0.3, -0.2, 0.1, 0.0}> ()\n   a = Max (k, h)",
        # max(x, k) = −min(−x, −k)
        "   k = Constant <value = float[4, 1, 1] {-0.3, 0.2, -0.1, 0.0}> ()\n   n = Neg (h)\n   m = Min (n, k)"
        "\n   a = Neg (m)",
    ]),
    "max-uniform": ("Max", [
        "   k = Constant <value = float[4, 1, 1] {0.25, 0.25, 0.25, 0.25}> ()\n   a = Max (k, h)",
        "   k = Constant <value = float {0.25}> ()\n   a = Clip (h, k)",
    ]),
    "relu": ("Relu", [
        "   a = Relu (h)",
        "   a = Max (h, zero)",
        "   a = Max (zero, h)",
    ]),
    "silu": ("Sigmoid", [
        "   g = Sigmoid (h)\n   a = Mul (h, g)",
        "   g = Sigmoid (h)\n   a = Mul (g, h)",
        "   g = Sigmoid (h)\n   s = Mul (h, half)\n   m = Mul (g, s)\n   a = Div (m, half)",
    ]),
    "gelu": ("Erf", [
        "   d = Div (h, sqrt2)\n   e = Erf (d)\n   t = Add (e, one)\n   g = Mul (t, half)\n   a = Mul (h, g)",
        # torch: (x · ½) · (1 + erf(x/√2))
        "   s = Mul (h, half)\n   d = Div (h, sqrt2)\n   e = Erf (d)\n   t = Add (e, one)\n   a = Mul (s, t)",
        # tf2onnx: (x · (1 + erf(x · 1/√2))) · ½
        "   d = Mul (h, rsqrt2)\n   e = Erf (d)\n   t = Add (one, e)\n   m = Mul (h, t)\n   a = Mul (m, half)",
    ]),
    # an RMS normalization over the channels, x / √(mean(x²) + ε), written as a quotient (HF's Llama export after
    # upcasting), a product with a Reciprocal (torch.rsqrt through the dynamo export) or with a power of −½: the
    # normalizer is a gate under the LRP rules, and the gradient differentiates it in every form
    "rms-norm": ("Div", [
        "   nq = Mul (h, h)\n   nm = ReduceMean <axes = [1]> (nq)\n   eps = Constant <value = float {0.001}> ()"
        "\n   ne = Add (nm, eps)\n   nr = Sqrt (ne)\n   a = Div (h, nr)",
        "   nq = Mul (h, h)\n   nm = ReduceMean <axes = [1]> (nq)\n   eps = Constant <value = float {0.001}> ()"
        "\n   ne = Add (nm, eps)\n   nr = Sqrt (ne)\n   ni = Reciprocal (nr)\n   a = Mul (h, ni)",
        "   two = Constant <value = float {2.0}> ()\n   np2 = Pow (h, two)\n   nm = ReduceMean <axes = [1]> (np2)\n   eps = Constant <value = float {0.001}> ()"
        "\n   ne = Add (eps, nm)\n   mh = Constant <value = float {-0.5}> ()\n   ni = Pow (ne, mh)\n   a = Mul (ni, h)",
    ]),
    # a LayerNorm over the width (γ, β per column): the op, torch's legacy export below opset 17, tf2onnx's Keras 2
    # (x·inv + (β − μ·inv), inv = γ/√(var + ε) through Reciprocal), Keras 3 (the variance as mean(x²) − μ², −μ·inv
    # + β through Neg), and γ first with a power of −½ and ε added on the left
    "layer-norm": ("LayerNormalization", [
        LN_PARAMS + "\n   a = LayerNormalization <axis = -1, epsilon = 0.001> (h, lg, lb)",
        LN_PARAMS + "\n   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (h, m)\n   two = Constant <value = float {2.0}> ()"
        "\n   q = Pow (d, two)\n   v = ReduceMean <axes = [-1]> (q)\n   e = Add (v, eps)\n   s = Sqrt (e)"
        "\n   n = Div (d, s)\n   g = Mul (n, lg)\n   a = Add (g, lb)",
        LN_PARAMS + "\n   m = ReduceMean <axes = [3]> (h)\n   d = Sub (h, m)\n   q = Mul (d, d)"
        "\n   v = ReduceMean <axes = [3]> (q)\n   e = Add (v, eps)\n   s = Sqrt (e)\n   ri = Reciprocal (s)"
        "\n   i = Mul (ri, lg)\n   xi = Mul (h, i)\n   mi = Mul (m, i)\n   ci = Sub (lb, mi)\n   a = Add (xi, ci)",
        LN_PARAMS + "\n   m = ReduceMean <axes = [-1]> (h)\n   hh = Mul (h, h)\n   m2 = ReduceMean <axes = [-1]> (hh)"
        "\n   mm = Mul (m, m)\n   v = Sub (m2, mm)\n   e = Add (v, eps)\n   s = Sqrt (e)\n   ri = Reciprocal (s)"
        "\n   i = Mul (ri, lg)\n   nm = Neg (m)\n   t = Mul (nm, i)\n   ci = Add (t, lb)\n   xi = Mul (h, i)"
        "\n   a = Add (xi, ci)",
        LN_PARAMS + "\n   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (m, h)\n   q = Mul (d, d)"
        "\n   v = ReduceMean <axes = [-1]> (q)\n   e = Add (eps, v)\n   mh = Constant <value = float {-0.5}> ()"
        "\n   ri = Pow (e, mh)\n   gd = Mul (lg, d)\n   nd = Neg (gd)\n   n = Mul (nd, ri)\n   a = Add (lb, n)",
        # σ as a power of ½
        LN_PARAMS + "\n   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (h, m)\n   q = Mul (d, d)"
        "\n   v = ReduceMean <axes = [-1]> (q)\n   e = Add (v, eps)\n   s = Pow (e, half)\n   n = Div (d, s)"
        "\n   g = Mul (n, lg)\n   a = Add (g, lb)",
    ]),
    # a LayerNorm over C, H, W without γ and β (torch's elementwise_affine=False below opset 17)
    "layer-norm-chw": ("LayerNormalization", [
        "   ones = Constant <value = float[4, 6, 6] {" + ", ".join(["1.0"] * 144) + "}> ()"
        "\n   a = LayerNormalization <axis = 1> (h, ones)",
        "   m = ReduceMean <axes = [1, 2, 3]> (h)\n   d = Sub (h, m)\n   two = Constant <value = float {2.0}> ()"
        "\n   q = Pow (d, two)\n   v = ReduceMean <axes = [-3, -2, -1]> (q)\n   eps = Constant <value = float {1e-5}> ()"
        "\n   e = Add (v, eps)\n   s = Sqrt (e)\n   a = Div (d, s)",
    ]),
    # a LayerNorm over the channels of NCHW (γ, β per channel): the op between transposes, and a Keras
    # LayerNormalization as tf2onnx writes it once its transpose optimizer has moved the graph to NCHW (Keras 2:
    # x·inv + (β − μ·inv), the mean over axis 1)
    "layer-norm-channels": ("LayerNormalization", [
        "   tg = Constant <value = float[4] {0.8, 1.3, 0.6, 1.1}> ()\n   tb = Constant <value = float[4] {0.2, -0.1, 0.0, 0.3}> ()"
        "\n   ht = Transpose <perm = [0, 2, 3, 1]> (h)\n   nt = LayerNormalization <axis = -1, epsilon = 0.001> (ht, tg, tb)"
        "\n   a = Transpose <perm = [0, 3, 1, 2]> (nt)",
        CHANNEL_PARAMS + "\n   eps = Constant <value = float {0.001}> ()\n   m = ReduceMean <axes = [1]> (h)"
        "\n   d = Sub (h, m)\n   q = Mul (d, d)\n   v = ReduceMean <axes = [1]> (q)\n   e = Add (v, eps)"
        "\n   s = Sqrt (e)\n   ri = Reciprocal (s)\n   i = Mul (ri, cg)\n   xi = Mul (h, i)\n   mi = Mul (m, i)"
        "\n   ci = Sub (cb, mi)\n   a = Add (xi, ci)",
    ]),
    # normalized per sample and channel over H, W: the op, a LayerNorm from axis 2 with γ, β per channel, and the
    # same written out (the statistics over the trailing axes 2, 3)
    "instance-norm": ("LayerNormalization", [
        "   ig = Constant <value = float[4] {0.8, 1.3, 0.6, 1.1}> ()\n   ib = Constant <value = float[4] {0.2, -0.1, 0.0, 0.3}> ()"
        "\n   a = InstanceNormalization <epsilon = 0.001> (h, ig, ib)",
        CHANNEL_PARAMS + "\n   a = LayerNormalization <axis = 2, epsilon = 0.001> (h, cg, cb)",
        CHANNEL_PARAMS + "\n   m = ReduceMean <axes = [2, 3]> (h)\n   d = Sub (h, m)\n   q = Mul (d, d)"
        "\n   v = ReduceMean <axes = [2, 3]> (q)\n   eps = Constant <value = float {0.001}> ()\n   e = Add (v, eps)"
        "\n   s = Sqrt (e)\n   n = Div (d, s)\n   g = Mul (n, cg)\n   a = Add (g, cb)",
    ]),
    # GroupNorm of 2 groups: torch's legacy export (Reshape → InstanceNormalization → Reshape(Shape(x)) → Mul →
    # Add), its dynamo export (a static shape back), and the GroupNormalization op of opset 21 (OPSET_BODIES)
    "group-norm": ("LayerNormalization", [
        CHANNEL_PARAMS + GROUPED + "\n   sh = Shape (h)\n   ri = Reshape (n, sh)\n   g = Mul (ri, cg)\n   a = Add (g, cb)",
        CHANNEL_PARAMS + GROUPED + "\n   sh = Constant <value = int64[4] {-1, 4, 6, 6}> ()\n   ri = Reshape (n, sh)"
        "\n   g = Mul (cg, ri)\n   a = Add (g, cb)",
    ]),
    # x · clip(x + 1, 0, 3) is no named activation: only the gate recognition sees it, against the same
    # function through the HardSigmoid op, 3·x·hardsigmoid(x; 1/3, 1/3)
    "gate": ("Mul", [
        "   g = HardSigmoid <alpha = 0.33333334, beta = 0.33333334> (h)\n   m = Mul (h, g)\n   a = Mul (m, three)",
        "   t = Add (h, one)\n   u = Clip (t, zero, three)\n   a = Mul (h, u)",
        "   t = Add (h, one)\n   u = Clip (t, zero, three)\n   k = Cast <to = 1> (u)\n   a = Mul (k, h)",
    ]),
    # a crop of 1 pixel on each side: Keras's Cropping2D through tf2onnx slices every axis, the batch
    # included, with INT32_MAX ends; torch, the cropped axes alone
    "crop": ("Slice", [
        "   st = Constant <value = int64[2] {1, 1}> ()\n   en = Constant <value = int64[2] {5, 5}> ()"
        "\n   ax = Constant <value = int64[2] {2, 3}> ()\n   a = Slice (h, st, en, ax)",
        "   st = Constant <value = int64[4] {0, 0, 1, 1}> ()"
        "\n   en = Constant <value = int64[4] {2147483647, 2147483647, -1, -1}> ()"
        "\n   ax = Constant <value = int64[4] {0, 1, 2, 3}> ()\n   a = Slice (h, st, en, ax)",
        "   st = Constant <value = int64[3] {-9223372036854775807, 1, 1}> ()"
        "\n   en = Constant <value = int64[3] {9223372036854775807, -1, 9223372036854775807}> ()"
        "\n   ax = Constant <value = int64[3] {0, -2, -1}> ()\n   s = Slice (h, st, en, ax)"
        "\n   st2 = Constant <value = int64[1] {0}> ()\n   en2 = Constant <value = int64[1] {-1}> ()"
        "\n   ax2 = Constant <value = int64[1] {3}> ()\n   a = Slice (s, st2, en2, ax2)",
    ]),
    # a sum over H and W: n · ReduceMean, ReduceSum with the axes as an input (either sign), keepdims=0 then
    # Unsqueeze (torch's x.sum((2, 3)) followed by a view)
    "reduce-sum": ("ReduceMean", [
        "   m = ReduceMean <axes = [2, 3]> (h)\n   n = Constant <value = float {36.0}> ()\n   a = Mul (m, n)",
        "   ax = Constant <value = int64[2] {2, 3}> ()\n   a = ReduceSum (h, ax)",
        "   ax = Constant <value = int64[2] {-1, -2}> ()\n   a = ReduceSum <keepdims = 1> (h, ax)",
        "   ax = Constant <value = int64[2] {2, 3}> ()\n   s = ReduceSum <keepdims = 0> (h, ax)"
        "\n   a = Unsqueeze (s, ax)",
    ]),
    # a weight applied along the last axis, with a bias: MatMul + Add (torch's nn.Linear on a [N, S, D] sequence,
    # tf2onnx's Keras Dense on a rank-3/4 input), either operand order of the Add, against the rows as a Gemm
    "dense-rows": ("Gemm", [
        "   s1 = Constant <value = int64[2] {-1, 6}> ()\n   rows = Reshape (h, s1)"
        "\n   g = Gemm <transB = 1> (rows, WMT, BM)\n   s2 = Constant <value = int64[4] {-1, 4, 6, 6}> ()"
        "\n   a = Reshape (g, s2)",
        "   m = MatMul (h, WM)\n   a = Add (m, BM)",
        "   m = MatMul (h, WM)\n   a = Add (BM, m)",
    ]),
    "passthrough": ("Relu", [
        "   a = Relu (h)",
        "   k = Cast <to = 1> (h)\n   i = Identity (k)\n   a = Relu (i)",
        "   k, mask = Dropout (h)\n   a = Relu (k)",
    ]),
    # a 3×3 conv of h [N, 4, 6, 6] with auto_pad, against its explicit pads worked out here: VALID pads
    # nothing; SAME at stride 2 gives ⌈6/2⌉ = 3 outputs, which need (3 − 1)·2 + 3 − 6 = 1 pad per axis, at the
    # end for SAME_UPPER and at the beginning for SAME_LOWER
    "conv-valid": ("Conv", [
        "   k = Conv <pads = [0, 0, 0, 0], strides = [2, 2]> (h, WK, BK)\n   a = Relu (k)",
        "   k = Conv <auto_pad = \"VALID\", strides = [2, 2]> (h, WK, BK)\n   a = Relu (k)",
    ]),
    "conv-same-upper": ("Conv", [
        "   k = Conv <pads = [0, 0, 1, 1], strides = [2, 2]> (h, WK, BK)\n   a = Relu (k)",
        "   k = Conv <auto_pad = \"SAME_UPPER\", strides = [2, 2]> (h, WK, BK)\n   a = Relu (k)",
    ]),
    "conv-same-lower": ("Conv", [
        "   k = Conv <pads = [1, 1, 0, 0], strides = [2, 2]> (h, WK, BK)\n   a = Relu (k)",
        "   k = Conv <auto_pad = \"SAME_LOWER\", strides = [2, 2]> (h, WK, BK)\n   a = Relu (k)",
    ]),
}

# an inference BatchNormalization after a conv, γ (one negative), β, μ, σ², and as tf2onnx and some exporters
# write it, a scale and a shift per channel: s = γ/√(σ² + ε), t = β − μ·s
BN = {"G": [1.5, -0.8, 0.6, 1.2], "BE": [0.1, -0.2, 0.3, 0.05], "MU": [0.2, -0.1, 0.05, -0.3], "VAR": [0.5, 1.5, 0.8, 2.0]}
BN_SCALE = np.array(BN["G"]) / np.sqrt(np.array(BN["VAR"]) + 1e-5)
BN_SHIFT = np.array(BN["BE"]) - np.array(BN["MU"]) * BN_SCALE


def _constant(name: str, values, shape) -> str:
    text = ", ".join(repr(float(np.float32(v))) for v in values)
    return f"   {name} = Constant <value = float[{', '.join(map(str, shape))}] {{{text}}}> ()"


BODIES["batchnorm"] = ("Conv", [
    "\n".join(_constant(k, v, [4]) for k, v in BN.items())
    + "\n   b = BatchNormalization <epsilon = 0.00001> (h, G, BE, MU, VAR)\n   a = Relu (b)",
    _constant("S", BN_SCALE, [4, 1, 1]) + "\n" + _constant("T", BN_SHIFT, [4, 1, 1])
    + "\n   m = Mul (h, S)\n   b = Add (m, T)\n   a = Relu (b)",
    _constant("S", BN_SCALE, [1, 4, 1, 1]) + "\n" + _constant("T", BN_SHIFT, [1, 4, 1, 1])
    + "\n   m = Mul (S, h)\n   b = Add (T, m)\n   a = Relu (b)",
    # a flatten and its undoing between the conv and its BatchNorm: once the chain is dropped, the flatten
    # that fed it must go too, or the conv's output has a second consumer and the fold is refused
    "\n".join(_constant(k, v, [4]) for k, v in BN.items())
    + "\n   back = Constant <value = int64[4] {0, 4, 6, 6}> ()\n   fl = Flatten (h)\n   rs = Reshape (fl, back)"
    + "\n   b = BatchNormalization <epsilon = 0.00001> (rs, G, BE, MU, VAR)\n   a = Relu (b)",
])

# ops of opset 18, 20 and 24: the gated activations with an op of their own
OPSET_BODIES = {
    "gelu": [(20, "   a = Gelu (h)")],
    "gelu-tanh": [(20, "   a = Gelu <approximate = \"tanh\"> (h)")],
    "silu": [(24, "   a = Swish (h)")],
    "group-norm": [(21, "   gg = Constant <value = float[4] {0.8, 1.3, 0.6, 1.1}> ()"
                        "\n   gb = Constant <value = float[4] {0.2, -0.1, 0.0, 0.3}> ()"
                        "\n   a = GroupNormalization <num_groups = 2, epsilon = 0.001> (h, gg, gb)")],
    "mish": [(18, "   a = Mish (h)")],
}
# softsign: torch writes F.softsign as x / (|x| + 1)
BODIES["softsign"] = ("Softsign", [
    "   a = Softsign (h)",
    "   m = Abs (h)\n   d = Add (m, one)\n   a = Div (h, d)",
    "   m = Abs (h)\n   d = Add (one, m)\n   a = Div (h, d)",
])
# a softmax inside the network, over the channels (split attention), as the op and written out
BODIES["softmax-inner"] = ("Softmax", [
    "   a = Softmax <axis = 1> (h)",
    "   ax = Constant <value = int64[1] {1}> ()\n   m = ReduceMax <axes = [1]> (h)\n   d = Sub (h, m)\n   e = Exp (d)"
    "\n   s = ReduceSum (e, ax)\n   a = Div (e, s)",
    "   ax = Constant <value = int64[1] {-3}> ()\n   e = Exp (h)\n   s = ReduceSum (e, ax)\n   a = Div (e, s)",
])
# Mish, x · tanh(softplus(x)): the legacy torch export and tf2onnx (Keras's mish) write the product
BODIES["mish"] = ("Tanh", [
    "   sp = Softplus (h)\n   g = Tanh (sp)\n   a = Mul (h, g)",
    "   sp = Softplus (h)\n   g = Tanh (sp)\n   a = Mul (g, h)",
])
BODIES["gelu-tanh"] = ("Tanh", [
    "   k = Constant <value = float {0.044715}> ()\n   sq = Constant <value = float {0.7978846}> ()"
    "\n   q = Mul (h, h)\n   cube = Mul (q, h)\n   w = Mul (cube, k)\n   v = Add (h, w)\n   y = Mul (v, sq)"
    "\n   e = Tanh (y)\n   t = Add (e, one)\n   g = Mul (t, half)\n   a = Mul (h, g)",
])

# a batch norm of the logits (BatchNorm1d after the dense layer), as the op and as Mul + Add
BN5 = {"G": [1.2, -0.7, 0.9, 1.1, -1.3], "BE": [0.1, 0.0, -0.2, 0.3, 0.05], "MU": [0.1, -0.2, 0.0, 0.3, -0.1],
       "VAR": [0.6, 1.2, 0.9, 2.0, 0.4]}
BN5_SCALE = np.array(BN5["G"]) / np.sqrt(np.array(BN5["VAR"]) + 1e-5)
BN5_SHIFT = np.array(BN5["BE"]) - np.array(BN5["MU"]) * BN5_SCALE

# the logits and the class axis, for the softmaxes written out; the max over it as opset 17 and 18 write it
LOGIT = "   l = Gemm <transB = 1> (f, W3, B3)\n   ax = Constant <value = int64[1] {-1}> ()"
MAX_ATTRIBUTE = "\n   m = ReduceMax <axes = [1]> (l)"
MAX_INPUT = "\n   m = ReduceMax <keepdims = 1> (l, ax)"

# the end of the network, to the output; an (opset, tail) pair needs that opset
TAILS = {
    "identity": (None, [
        LOGITS,
        "   l = Gemm <transB = 1> (f, W3, B3)\n   logits = Identity (l)",
        "   l = Gemm <transB = 1> (f, W3, B3)\n   logits, mask = Dropout (l)",
        "   l = Gemm <transB = 1> (f, W3, B3)\n   k = Cast <to = 1> (l)\n   logits = Identity (k)",
    ]),
    "softmax": ("Softmax", [
        "   l = Gemm <transB = 1> (f, W3, B3)\n   prob = Softmax (l)",
        # onnx's version converter, for an opset-11 Softmax whose input's rank it cannot see
        "   l = Gemm <transB = 1> (f, W3, B3)\n   s = Shape (l)\n   fl = Flatten <axis = 1> (l)"
        "\n   sm = Softmax <axis = -1> (fl)\n   prob = Reshape (sm, s)",
        "   l = Gemm <transB = 1> (f, W3, B3)\n   sm = Softmax <axis = 1> (l)\n   prob = Identity (sm)",
        # written out: exp(x) / Σ exp(x) (hand-written heads), and with the max subtracted first (jax2onnx,
        # tf2onnx), the max's axes an attribute (opset < 18) or an input
        LOGIT + "\n   e = Exp (l)\n   s = ReduceSum (e, ax)\n   prob = Div (e, s)",
        LOGIT + MAX_ATTRIBUTE + "\n   d = Sub (l, m)\n   e = Exp (d)\n   s = ReduceSum <keepdims = 1> (e, ax)"
        "\n   prob = Div (e, s)",
        (18, LOGIT + MAX_INPUT + "\n   d = Sub (l, m)\n   e = Exp (d)\n   s = ReduceSum (e, ax)\n   prob = Div (e, s)"),
    ]),
    "batchnorm-dense": (None, [
        "\n".join(_constant(k, v, [5]) for k, v in BN5.items())
        + "\n   l = Gemm <transB = 1> (f, W3, B3)\n   logits = BatchNormalization <epsilon = 0.00001> (l, G, BE, MU, VAR)",
        _constant("S", BN5_SCALE, [5]) + "\n" + _constant("T", BN5_SHIFT, [1, 5])
        + "\n   l = Gemm <transB = 1> (f, W3, B3)\n   m = Mul (l, S)\n   logits = Add (T, m)",
    ]),
    "log-softmax": ("LogSoftmax", [
        "   l = Gemm <transB = 1> (f, W3, B3)\n   prob = LogSoftmax (l)",
        "   l = Gemm <transB = 1> (f, W3, B3)\n   s = Shape (l)\n   fl = Flatten <axis = 1> (l)"
        "\n   sm = LogSoftmax <axis = -1> (fl)\n   prob = Reshape (sm, s)",
        # jax2onnx: (x − max) − log Σ exp(x − max)
        LOGIT + MAX_ATTRIBUTE + "\n   d = Sub (l, m)\n   e = Exp (d)\n   s = ReduceSum (e, ax)\n   g = Log (s)"
        "\n   prob = Sub (d, g)",
        (18, LOGIT + MAX_INPUT + "\n   d = Sub (l, m)\n   e = Exp (d)\n   s = ReduceSum (e, ax)\n   g = Log (s)"
             "\n   prob = Sub (d, g)"),
        LOGIT + "\n   e = Exp (l)\n   s = ReduceSum (e, ax)\n   g = Log (s)\n   prob = Sub (l, g)",
    ]),
}



def lerp_neighbours(n_in: int, n_out: int, align_corners: bool):
    """(left, right, weight) per output position of torch's 1-d linear upsampling: the source coordinate
    i·(n_in − 1)/(n_out − 1) (align_corners) or (i + ½)·n_in/n_out − ½ clamped at 0, its floor and the next
    index (clamped at the end), and the fraction between them."""
    i = np.arange(n_out)
    src = i * (n_in - 1) / (n_out - 1) if align_corners else np.maximum((i + 0.5) * n_in / n_out - 0.5, 0)
    left = np.floor(src).astype(np.int64)
    return left, np.minimum(left + 1, n_in - 1), (src - left).astype(np.float32)


def _listed(values) -> str:
    return ", ".join(map(str, values))


def lerp_body(axis: int, align_corners: bool, form: str) -> str:
    """h [N, 4, 6, 6] upsampled ×2 along ``axis`` (2 or 3) as torch's exports write it: gathers of the left and
    right neighbours mixed as a + (b − a)·w ("lerp"), the same between a Transpose that moves the axis first
    and its inverse (torch's dynamo export, "dynamo"), or as (1 − w)·a + w·b ("convex")."""
    left, right, w = lerp_neighbours(6, 12, align_corners)
    shape = "12" if axis == 3 else "12, 1"
    text = (f"   li = Constant <value = int64[12] {{{_listed(left)}}}> ()"
            f"\n   ri = Constant <value = int64[12] {{{_listed(right)}}}> ()"
            f"\n   lw = Constant <value = float[{shape}] {{{_listed(repr(float(v)) for v in w)}}}> ()")
    if form == "dynamo":
        perm = [axis] + [j for j in range(4) if j != axis]
        back = [perm.index(j) for j in range(4)]
        text += (f"\n   ht = Transpose <perm = [{_listed(perm)}]> (h)\n   ta = Gather (ht, li)\n   tb = Gather (ht, ri)"
                 f"\n   ga = Transpose <perm = [{_listed(back)}]> (ta)"
                 f"\n   gb = Transpose <perm = [{_listed(back)}]> (tb)")
    else:
        text += f"\n   ga = Gather <axis = {axis}> (h, li)\n   gb = Gather <axis = {axis}> (h, ri)"
    if form == "convex":
        return text + "\n   om = Sub (one, lw)\n   ma = Mul (ga, om)\n   mb = Mul (lw, gb)\n   a = Add (ma, mb)"
    return text + "\n   d = Sub (gb, ga)\n   m = Mul (d, lw)\n   a = Add (ga, m)"


def resize_body(axis: int, mode: str) -> str:
    scales = ", ".join("2.0" if j == axis else "1.0" for j in range(4))
    return (f"   sc = Constant <value = float[4] {{{scales}}}> ()"
            f"\n   a = Resize <mode = \"linear\", coordinate_transformation_mode = \"{mode}\"> (h, , sc)")


# linear upsampling ×2: the Resize, and the gathers and lerp of torch's dynamo export (align_corners False, along
# the width; True, along the height), folded by LerpAsResizePass
BODIES["upsample-linear"] = ("Resize", [resize_body(3, "half_pixel")]
                             + [lerp_body(3, False, form) for form in ("lerp", "dynamo", "convex")])
BODIES["upsample-linear-corners"] = ("Resize", [resize_body(2, "align_corners")]
                                     + [lerp_body(2, True, form) for form in ("lerp", "dynamo", "convex")])

def weights(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(0, 0.5, (4, 3, 3, 3)), "B1": rng.normal(0, 0.1, 4),
            "W2": rng.normal(0, 0.5, (4, 4, 1, 1)), "B2": rng.normal(0, 0.1, 4),
            "WS": rng.normal(0, 0.5, (4, 4, 1, 1)), "BS": rng.normal(0, 0.1, 4),
            "W3": rng.normal(0, 0.5, (5, 4)), "B3": rng.normal(0, 0.1, 5)} | _dense(rng) | _kernel(seed)


def _kernel(seed: int) -> dict:
    """A 3×3 conv from 4 channels to 4 (its own generator: the other weights stay as they were)."""
    rng = np.random.default_rng(1000 + seed)
    return {"WK": rng.normal(0, 0.5, (4, 4, 3, 3)), "BK": rng.normal(0, 0.1, 4)}


def _dense(rng) -> dict:
    w = rng.normal(0, 0.5, (6, 6))
    return {"WM": w, "WMT": w.T, "BM": rng.normal(0, 0.1, 6)}


def write_model(path, body: str, seed: int, tail: str = LOGITS, opset: int = 17) -> str:
    output = "prob" if "prob" in tail else "logits"
    text = HEAD.format(opset=opset, output=output, constants=CONSTANTS, body=body, tail=tail)
    model = onnx.parser.parse_model(text)
    used = {i for n in model.graph.node for i in n.input}
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k)
                                   for k, v in weights(seed).items() if k in used)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def write_tail(path, tail, seed: int) -> str:
    """The model ending in ``tail`` (text, or an (opset, text) pair), a ReLU as its activation."""
    opset, text = tail if isinstance(tail, tuple) else (17, tail)
    return write_model(path, "   a = Relu (h)", seed, tail=text, opset=opset)


def explain(path: str, rule: str, x: np.ndarray) -> dict:
    result = relgraph.compile(path, rule=rule, write=False, **RULES[rule])
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x, "target": np.full(len(x), -1, np.int64)})))


def relative_l2(actual, desired) -> np.ndarray:
    a, d = actual.reshape(len(actual), -1), desired.reshape(len(desired), -1)
    return np.linalg.norm(a - d, axis=1) / np.linalg.norm(d, axis=1)


def assert_same_relevance(paths: list[str], seed: int):
    x = np.random.default_rng(100 + seed).uniform(-1, 1, (3, 3, 6, 6)).astype(np.float32)
    model = ort.InferenceSession(paths[0], providers=["CPUExecutionProvider"])
    output = model.get_outputs()[0].name, model.run(None, {"x": x})[0]
    for rule in RULES:
        reference = explain(paths[0], rule, x)
        # the explainer's output is the model's, as onnxruntime computes it from the file as written
        np.testing.assert_allclose(reference[output[0]], output[1], rtol=1e-5, atol=1e-6)
        assert np.abs(reference["relevance"]).sum() > 0
        for path in paths[1:]:
            out = explain(path, rule, x)
            for name in ("logits", "prob"):  # the model's output, and the logits it is explained at
                if name in reference:
                    np.testing.assert_allclose(out[name], reference[name], rtol=1e-5, atol=1e-6)
            error = relative_l2(out["relevance"], reference["relevance"])
            assert np.all(error <= TOLERANCE), f"{path} under {rule}: relative L2 {error}"


def canonical_ops(path: str) -> list[str]:
    return [n.op_type for n in prepare(path)[0].graph]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", sorted(BODIES))
def test_activation_spellings_give_equal_relevance(tmp_path, case, seed):
    canonical, bodies = BODIES[case]
    paths = [write_model(tmp_path / f"{case}{i}.onnx", body, seed) for i, body in enumerate(bodies)]
    paths += [write_model(tmp_path / f"{case}-opset{opset}.onnx", body, seed, opset=opset)
              for opset, body in OPSET_BODIES.get(case, [])]
    assert_same_relevance(paths, seed)


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("case", sorted(TAILS))
def test_output_spellings_give_equal_relevance(tmp_path, case, seed):
    _, tails = TAILS[case]
    paths = [write_tail(tmp_path / f"{case}{i}.onnx", tail, seed) for i, tail in enumerate(tails)]
    assert_same_relevance(paths, seed)


# the spellings of these fold to one op sequence; GELU's and SiLU's written-out products (and the unnamed
# gate) stay products, recognised as gates by the relevance pass
FOLDED = {"hardswish", "hard-sigmoid", "squeeze-excitation", "relu6", "relu", "passthrough", "layer-norm",
          "layer-norm-chw", "layer-norm-channels", "instance-norm", "group-norm", "batchnorm", "softsign",
          "softmax-inner", "upsample-linear", "upsample-linear-corners"}


@pytest.mark.parametrize("case", sorted(BODIES))
def test_spellings_fold_to_the_canonical_form(tmp_path, case):
    """Every spelling of a named activation canonicalizes to the same op sequence as the first one."""
    canonical, bodies = BODIES[case]
    forms = [canonical_ops(write_model(tmp_path / f"{case}{i}.onnx", body, 0)) for i, body in enumerate(bodies)]
    forms += [canonical_ops(write_model(tmp_path / f"{case}-opset{opset}.onnx", body, 0, opset=opset))
              for opset, body in OPSET_BODIES.get(case, [])]
    assert canonical in forms[0]
    if case in FOLDED:
        for form in forms[1:]:
            assert form == forms[0]
    gone = {"Cast", "Identity", "Dropout", "Gelu", "Swish", "Mish"}
    gone |= set() if case.startswith("max") else {"Min", "Max"}
    assert not gone & set(sum(forms, []))


@pytest.mark.parametrize("case", sorted(TAILS))
def test_output_spellings_fold(tmp_path, case):
    canonical, tails = TAILS[case]
    for i, tail in enumerate(tails):
        model = prepare(write_tail(tmp_path / f"{case}{i}.onnx", tail, 0))[0]
        out = model.graph.outputs[0]
        assert out.name in ("logits", "prob")
        assert out.producer().op_type == (canonical or "Gemm")
        assert canonical is None or out.producer().inputs[0].producer().op_type == "Gemm"  # reads the logits


class HandSoftmax(torch.nn.Module):
    """A dense layer and a softmax, by torch.softmax or computed by hand (x − max, exp, a sum, a quotient)."""

    def __init__(self, by_hand: bool):
        super().__init__()
        self.fc, self.by_hand = torch.nn.Linear(6, 4), by_hand

    def forward(self, x):
        logits = self.fc(x)
        if not self.by_hand:
            return torch.softmax(logits, 1)
        e = (logits - logits.max(1, keepdim=True).values).exp()
        return e / e.sum(1, keepdim=True)


@pytest.mark.parametrize("dynamo", [False, True])
def test_softmax_computed_by_hand_in_torch_folds(tmp_path, dynamo):
    """Both torch exports write the hand-made softmax op by op; it folds to the Softmax op and is explained
    as torch.softmax is."""
    paths = []
    for by_hand in (False, True):
        torch.manual_seed(0)
        paths.append(tm.export(HandSoftmax(by_hand), torch.zeros(1, 6), tmp_path / f"s{int(by_hand)}.onnx", dynamo))
    assert {"Exp", "ReduceSum", "ReduceMax", "Div"} <= tm.op_types(paths[1])
    assert [n.op_type for n in prepare(paths[1])[0].graph] == [n.op_type for n in prepare(paths[0])[0].graph]
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    outs = []
    for path in paths:
        proto = relgraph.compile(path, rule="epsilon", write=False).proto
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(session.run(["relevance"], {tm.INPUT: x, "target": np.full(3, -1, np.int64)})[0])
    assert np.abs(outs[0]).sum() > 0
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-7)


# near misses of a written-out softmax: each still computes what it computed, and no softmax of the logits
# appears at the output
NOT_SOFTMAX = [
    # a max over the batch axis does not cancel: a softmax of l − m, not of l
    LOGIT + "\n   m = ReduceMax <axes = [0]> (l)\n   d = Sub (l, m)\n   e = Exp (d)\n   s = ReduceSum (e, ax)"
    "\n   prob = Div (e, s)",
    # a sum without its axis, put back by Unsqueeze or not (then broadcast along the classes: a batch of as many
    # samples as classes runs); another numerator
    LOGIT + "\n   e = Exp (l)\n   s = ReduceSum <keepdims = 0> (e, ax)\n   prob = Div (e, s)",
    LOGIT + "\n   e = Exp (l)\n   s = ReduceSum <keepdims = 0> (e, ax)\n   u = Unsqueeze (s, ax)\n   prob = Div (e, u)",
    LOGIT + "\n   e = Exp (l)\n   s = ReduceSum (e, ax)\n   prob = Div (l, s)",
    # l − log Σ exp(l − max) = log_softmax(l) + max: the shift is not subtracted from l itself
    LOGIT + MAX_ATTRIBUTE + "\n   d = Sub (l, m)\n   e = Exp (d)\n   s = ReduceSum (e, ax)\n   g = Log (s)"
    "\n   prob = Sub (l, g)",
]


@pytest.mark.parametrize("index", range(len(NOT_SOFTMAX)))
def test_softmax_near_misses_are_left_alone(tmp_path, index):
    path = write_tail(tmp_path / "m.onnx", NOT_SOFTMAX[index], 0)
    model = prepare(path)[0]
    end = model.graph.outputs[0].producer()
    assert not (end.op_type in ("Softmax", "LogSoftmax") and end.inputs[0].producer().op_type == "Gemm")
    x = np.random.default_rng(index).uniform(-1, 1, (5, 3, 6, 6)).astype(np.float32)
    runs = [ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for proto in (onnx.load(path), to_proto(model))]
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-6)


# near misses of a written-out softsign: another offset, another scale, the magnitude of another value
NOT_SOFTSIGN = [
    "   m = Abs (h)\n   d = Add (m, half)\n   a = Div (h, d)",
    "   m = Abs (h)\n   s = Mul (m, half)\n   d = Add (s, one)\n   a = Div (h, d)",
    "   v = Relu (h)\n   m = Abs (v)\n   d = Add (m, one)\n   a = Div (h, d)",
]


@pytest.mark.parametrize("index", range(len(NOT_SOFTSIGN)))
def test_softsign_near_misses_are_left_alone(tmp_path, index):
    path = write_model(tmp_path / "m.onnx", NOT_SOFTSIGN[index], 0)
    model = prepare(path)[0]
    assert "Softsign" not in [n.op_type for n in model.graph]
    x = np.random.default_rng(index).uniform(-1, 1, (3, 3, 6, 6)).astype(np.float32)
    runs = [ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for proto in (onnx.load(path), to_proto(model))]
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-6)


def mobilenet_like(path, seed: int, blocks: int = 4) -> str:
    """Stem conv, then ``blocks`` × (1×1 expand conv → hard swish → depthwise 3×3 conv → hard swish →
    squeeze-excitation with a hard-sigmoid gate → 1×1 project conv → residual sum), pool, dense: MobileNetV3's
    block with every hard swish and hard sigmoid written as tf2onnx writes them. No layer has a bias: the
    only constants added anywhere are the hard sigmoids' offsets."""
    rng = np.random.default_rng(seed)
    zeros = np.zeros
    inits = {"W0": rng.normal(0, 0.4, (8, 3, 3, 3)), "B0": zeros(8),
             "W3": rng.normal(0, 0.4, (5, 8)), "B3": zeros(5)}

    def hard_sigmoid(v, out):
        return f"   {out}_t = Add ({v}, three)\n   {out}_c = Clip ({out}_t, zero, six)\n   {out} = Mul ({out}_c, sixth)"

    lines, v = ["   s0 = Conv <pads = [1, 1, 1, 1]> (x, W0, B0)"], "s0"
    for k in range(blocks):
        inits.update({f"E{k}": rng.normal(0, 0.4, (16, 8, 1, 1)), f"EB{k}": zeros(16),
                      f"D{k}": rng.normal(0, 0.4, (16, 1, 3, 3)), f"DB{k}": zeros(16),
                      f"S{k}": rng.normal(0, 0.4, (16, 16, 1, 1)), f"SB{k}": zeros(16),
                      f"P{k}": rng.normal(0, 0.3, (8, 16, 1, 1)), f"PB{k}": zeros(8)})
        lines += [f"   e{k} = Conv ({v}, E{k}, EB{k})", hard_sigmoid(f"e{k}", f"eg{k}"), f"   ea{k} = Mul (e{k}, eg{k})",
                  f"   d{k} = Conv <pads = [1, 1, 1, 1], group = 16> (ea{k}, D{k}, DB{k})",
                  hard_sigmoid(f"d{k}", f"dg{k}"), f"   da{k} = Mul (d{k}, dg{k})",
                  f"   q{k} = GlobalAveragePool (da{k})\n   z{k} = Conv (q{k}, S{k}, SB{k})",
                  hard_sigmoid(f"z{k}", f"zg{k}"), f"   se{k} = Mul (da{k}, zg{k})",
                  f"   p{k} = Conv (se{k}, P{k}, PB{k})\n   s{k + 1} = Add ({v}, p{k})"]
        v = f"s{k + 1}"
    text = ('<ir_version: 10, opset_import: ["" : 17]>\nnet (float[N, 3, 6, 6] x) => (float[N, 5] logits) {\n'
            + CONSTANTS + "\n" + "\n".join(lines)
            + f"\n   g = GlobalAveragePool ({v})\n   f = Flatten (g)\n   logits = Gemm <transB = 1> (f, W3, B3)\n}}")
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in inits.items())
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("seed", SEEDS)
def test_hard_swish_network_delivers_the_logit_to_the_input(tmp_path, seed):
    """Under ε in a network without biases, Σ R_input = f_c(x) up to what the stabilizer absorbs: the offsets
    +3 of the written-out hard sigmoids are part of the activations, not biases that soak up the relevance."""
    path = mobilenet_like(tmp_path / "m.onnx", seed)
    assert "HardSwish" in canonical_ops(path)
    x = np.random.default_rng(seed).uniform(-1, 1, (4, 3, 6, 6)).astype(np.float32)
    out = explain(path, "epsilon", x)
    logit = out["logits"][np.arange(len(x)), out["logits"].argmax(1)]
    share = out["relevance"].reshape(len(x), -1).sum(1) / logit
    np.testing.assert_allclose(out["bias_relevance"], 0, atol=1e-6)
    np.testing.assert_allclose(share, 1, rtol=1e-3)


# near misses of a LayerNorm: each computes something else, and must stay as written, with the reason in
# ``skipped`` where a variance of x was found (not for mean(x²) alone: an RMS normalizer, no variance)
NOT_LAYER_NORMS = {
    "the mean not subtracted": (
        "   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (h, m)\n   q = Mul (d, d)\n   v = ReduceMean <axes = [-1]> (q)"
        "\n   eps = Constant <value = float {0.001}> ()\n   e = Add (v, eps)\n   s = Sqrt (e)\n   a = Div (h, s)",
        "no value computes"),
    "the variance not centered": (
        "   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (h, m)\n   q = Mul (h, h)\n   v = ReduceMean <axes = [-1]> (q)"
        "\n   eps = Constant <value = float {0.001}> ()\n   e = Add (v, eps)\n   s = Sqrt (e)\n   a = Div (d, s)",
        None),
    "the centered value used again": (
        "   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (h, m)\n   q = Mul (d, d)\n   v = ReduceMean <axes = [-1]> (q)"
        "\n   eps = Constant <value = float {0.001}> ()\n   e = Add (v, eps)\n   s = Sqrt (e)\n   n = Div (d, s)"
        "\n   a = Add (n, d)",
        "is also used outside the normalization"),
    "σ³ for σ": (
        "   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (h, m)\n   q = Mul (d, d)\n   v = ReduceMean <axes = [-1]> (q)"
        "\n   eps = Constant <value = float {0.001}> ()\n   e = Add (v, eps)\n   th = Constant <value = float {1.5}> ()"
        "\n   s = Pow (e, th)\n   a = Div (d, s)",
        None),
    "ε added to σ": (
        "   m = ReduceMean <axes = [-1]> (h)\n   d = Sub (h, m)\n   q = Mul (d, d)\n   v = ReduceMean <axes = [-1]> (q)"
        "\n   eps = Constant <value = float {0.001}> ()\n   s = Sqrt (v)\n   e = Add (s, eps)\n   a = Div (d, e)",
        "no value computes"),
}


@pytest.mark.parametrize("case", sorted(NOT_LAYER_NORMS))
def test_near_layer_norms_are_left_alone(tmp_path, case):
    body, reason = NOT_LAYER_NORMS[case]
    path = write_model(tmp_path / "near.onnx", body, 0)
    model, skipped = prepare(path)
    ops = [n.op_type for n in model.graph]
    assert "LayerNormalization" not in ops and ops.count("ReduceMean") >= 2
    reported = [line for line in skipped if "LayerNorm written out" in line]
    assert any(reason in line for line in reported) if reason else not reported, skipped
