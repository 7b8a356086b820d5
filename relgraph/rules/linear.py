"""Rules for layers with weights: Gemm, Conv, MatMul with a constant operand.

Every LRP rule for a layer z = x⋆W + b has one shape (zennit's "modify, forward, divide, push back,
multiply"): one or two denominators, each a sum of terms (input variant, weight variant, bias variant,
sign), and the input's relevance pushed back through the transposed map of each term:

    z_g = Σ_t sign_t · (in_t ⋆ W_t + b_t),   s_g = c_g · mask_g ⊙ R ⊘ stab(z_g),
    R_x = Σ_g Σ_t sign_t · in_t ⊙ (s_g ⋆ᵀ W_t),   R_bias = Σ_g Σ_t sign_t · ⟨b_t, s_g⟩

(``x⁺ = max(x, 0)``, ``x⁻ = min(x, 0)``, likewise for W and b.) The rules, in zennit's exact form:

- ε / LRP-0:   one group {(x, W, b)}; ε = 0 for LRP-0. Emitted as the model-local function
  ``relgraph.Epsilon<Op>`` so that a GPU lowering can fuse it.
- z⁺:          {(x⁺, W⁺, b⁺), (x⁻, W⁻, 0)}  — αβ with α = 1, β = 0.
- αβ:          α·{(x⁺, W⁺, b⁺), (x⁻, W⁻, 0)} − β·{(x⁺, W⁻, b⁻), (x⁻, W⁺, 0)}.
- γ:           where z > 0: {(x⁺, W+γW⁺, b+γb⁺), (x⁻, W+γW⁻, 0)}; where z < 0: {(x⁺, W+γW⁻, b+γb⁻),
  (x⁻, W+γW⁺, 0)}.
- z^B:         {(x, W, b), −(l, W⁺, b⁺), −(h, W⁻, b⁻)}: the bias cancels, R_x = x⊙(sWᵀ) − l⊙(sW⁺ᵀ) − h⊙(sW⁻ᵀ).
- w²:          {(1, W², 0)}, no multiplication by the input (Montavon et al. 2017).
- flat:        {(1, 1, 0)}, likewise.

z⁺, αβ and γ are written once, regrouped by the signs of x and W into a split forward Z⁺ = x⁺⋆W⁺ + x⁻⋆W⁻ + b⁺,
Z⁻ = x⁺⋆W⁻ + x⁻⋆W⁺ + b⁻ and two shares (:func:`relgraph.rules.functions.parts_relevance`, by
:func:`affine_parts`); z^B, w² and flat are one group each (:func:`one_group`).

What the graph proves is used: when x ≥ 0 (it comes out of a ReLU, say) every x⁻ term is dropped and
x⁺ is x itself, so z⁺ costs one extra forward and one transposed pass, not two of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..graph import attr, const_array, static_dims
from .functions import DOMAIN, parts_function, parts_relevance
from .registry import AFFINE, BILINEAR, Env, defrule

# ------------------------------------------------------------------------------------------- linear maps


class LinearMap:
    """The forward map z = x ⋆ W and its transpose s ⋆ᵀ W for one layer's geometry."""

    def __init__(self, env: Env):
        self.env = env
        self.b = env.b
        self.w, self.bias = layer_params(env)
        self._params: dict = {}

    def param(self, array: np.ndarray) -> ir.Value:
        """The graph value of a weight variant: the forward initializer itself for W and b (the explainer
        must not carry a second copy of the model), one shared initializer per derived array (W⁺ is used by
        both the forward and the transposed pass)."""
        if id(array) not in self._params:
            node = self.env.node
            if array is self.w and node.op_type != "MatMul":
                self._params[id(array)] = node.inputs[1]
            elif array is self.bias:
                self._params[id(array)] = node.inputs[2]
            else:
                self._params[id(array)] = self.b.const(array)
        return self._params[id(array)]

    def forward(self, x, w: np.ndarray, bias: np.ndarray | None):
        raise NotImplementedError

    def transpose(self, s, w: np.ndarray):
        raise NotImplementedError

    def bias_share(self, s, bias: np.ndarray):
        """⟨b, s⟩ per sample: the relevance of the bias as the weight of a constant-one input."""
        raise NotImplementedError

    def constant_input(self, value) -> ir.Value:
        """An input-shaped constant (batch 1) filled with ``value`` (scalar or per-channel)."""
        shape = static_dims(activation(self.env))[1:]
        arr = np.asarray(value, np.float32)
        if arr.ndim == 1 and len(shape) > 1:
            arr = arr.reshape((-1,) + (1,) * (len(shape) - 1))
        return self.b.const(np.broadcast_to(arr, shape).astype(np.float32)[None])


class GemmMap(LinearMap):
    """z = x·Wᵀ + b with W of shape [out, in] (the canonical Gemm)."""

    def forward(self, x, w, bias):
        args = [x, self.param(w)] + ([self.param(bias)] if bias is not None else [])
        return self.b.op("Gemm", *args, transB=1)

    def transpose(self, s, w):
        return self.b.op("MatMul", s, self.param(w))

    def bias_share(self, s, bias):
        # one value per row: a sample's when the rows are samples, summed per sample when a Gemm runs on a
        # flattened [N·S, D] (``Builder.layout``)
        return self.b.sum_per_sample(self.b.op("MatMul", s, self.param(bias)), 1)


class MatMulMap(LinearMap):
    """z = x·W (W constant, on the right) or z = W·x (W on the left), any batch dimensions."""

    def __init__(self, env):
        super().__init__(env)
        self.left = const_array(env.node.inputs[0]) is not None

    def forward(self, x, w, bias):
        z = self.b.op("MatMul", self.param(w), x) if self.left else self.b.op("MatMul", x, self.param(w))
        return z if bias is None else self.b.op("Add", z, self.param(bias))

    def transpose(self, s, w):
        wt = np.ascontiguousarray(np.swapaxes(w, -1, -2))
        return self.b.op("MatMul", self.b.const(wt), s) if self.left else self.b.op("MatMul", s, self.b.const(wt))

    def bias_share(self, s, bias):
        raise AssertionError("MatMul carries no bias")


class ConvMap(LinearMap):
    """N-d convolution; its transpose is ConvTranspose with the same geometry.

    ConvTranspose needs ``output_padding`` to land on the input's exact size when the forward conv
    left rows unread: op = H_in − ((H_out − 1)·s − p_begin − p_end + d·(k − 1) + 1).
    """

    def __init__(self, env):
        super().__init__(env)
        node = env.node
        w = const_array(node.inputs[1])
        spatial = w.ndim - 2
        in_dims = static_dims(node.inputs[0], "Conv input")[2:]
        out_dims = static_dims(node.outputs[0], "Conv output")[2:]
        self.kernel = list(w.shape[2:])
        self.strides = list(attr(node, "strides", [1] * spatial))
        self.dilations = list(attr(node, "dilations", [1] * spatial))
        self.group = attr(node, "group", 1)
        self.pads = conv_pads(node, in_dims, self.kernel, self.strides, self.dilations)
        self.output_padding = output_padding(in_dims, out_dims, self.kernel, self.strides, self.dilations, self.pads)

    def unit_stride_2d(self) -> bool:
        """Whether the transpose can run as a plain convolution (see ``flipped_geometry``)."""
        n = len(self.kernel)
        return n == 2 and all(s == 1 for s in self.strides) and all(
            0 <= self.pads[i] <= d * (k - 1) and 0 <= self.pads[i + n] <= d * (k - 1)
            for i, (d, k) in enumerate(zip(self.dilations, self.kernel)))

    def flipped_geometry(self) -> dict:
        """Attributes of the stride-1 transpose as a conv: pads d·(k−1) − p, weights regrouped
        [g, Cout/g, Cin/g, k…] → [Cin, Cout/g, k…] and flipped."""
        n, g = len(self.kernel), self.group
        cout, cin_g = self.w.shape[:2]
        back_pads = [d * (k - 1) - p for p, d, k in zip(self.pads[:n], self.dilations, self.kernel)] + \
                    [d * (k - 1) - p for p, d, k in zip(self.pads[n:], self.dilations, self.kernel)]
        return dict(back_pads=back_pads, dilations=self.dilations, group=g,
                    grouped_shape=[g, cout // g, cin_g, *self.kernel], back_shape=[g * cin_g, cout // g, *self.kernel])

    @property
    def geometry(self) -> dict:
        return dict(strides=self.strides, pads=self.pads, dilations=self.dilations, group=self.group)

    def forward(self, x, w, bias):
        args = [x, self.param(w)] + ([self.param(bias)] if bias is not None else [])
        return self.b.op("Conv", *args, **self.geometry)

    def transpose(self, s, w):
        if self.unit_stride_2d():
            geo = self.flipped_geometry()
            return self.b.op("Conv", s, self._flipped(w), pads=geo["back_pads"], dilations=self.dilations,
                             group=self.group)
        return self.b.op("ConvTranspose", s, self.param(w), output_padding=self.output_padding, **self.geometry)

    def _flipped(self, w):
        """The stride-1 transpose's kernel, as graph ops on the weight (onnxruntime folds them once at
        session start, so the explainer file keeps one copy of each weight)."""
        key = ("flipped", id(w))
        if key not in self._params:
            b, geo = self.b, self.flipped_geometry()
            grouped = b.op("Reshape", self.param(w), b.ints(geo["grouped_shape"]))
            swapped = b.op("Reshape", b.op("Transpose", grouped, perm=[0, 2, 1, 3, 4]), b.ints(geo["back_shape"]))
            self._params[key] = b.op("Slice", swapped, b.ints([-1, -1]), b.ints([-2**63 + 1] * 2), b.ints([2, 3]),
                                     b.ints([-1, -1]))
        return self._params[key]

    def bias_share(self, s, bias):
        spatial = len(self.kernel)
        per_channel = self.b.op("ReduceSum", s, self.b.ints(list(range(2, 2 + spatial))), keepdims=0)
        return self.b.op("MatMul", per_channel, self.param(bias))


def output_padding(in_dims, out_dims, kernel, strides, dilations, pads) -> list[int]:
    """ConvTranspose's output_padding that lands a window op's transpose on the input's exact size:
    op = H_in − ((H_out − 1)·s − p_begin − p_end + d·(k − 1) + 1). Negative where ceil_mode windows hang
    past the padded input (the caller crops those)."""
    n = len(kernel)
    return [h_in - ((h_out - 1) * s - pads[i] - pads[i + n] + d * (k - 1) + 1)
            for i, (h_in, h_out, s, d, k) in enumerate(zip(in_dims, out_dims, strides, dilations, kernel))]


def conv_pads(node: ir.Node, in_dims, kernel, strides, dilations) -> list[int]:
    """Explicit ONNX pads [begin…, end…] for any ``auto_pad`` setting."""
    auto = attr(node, "auto_pad", "NOTSET")
    n = len(kernel)
    if auto in ("NOTSET", b"NOTSET"):
        return list(attr(node, "pads", [0] * (2 * n)))
    if auto in ("VALID", b"VALID"):
        return [0] * (2 * n)
    begin, end = [], []
    for h, k, s, d in zip(in_dims, kernel, strides, dilations):
        total = max(0, (-(-h // s) - 1) * s + d * (k - 1) + 1 - h)
        small, large = total // 2, total - total // 2
        upper = auto in ("SAME_UPPER", b"SAME_UPPER")
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return begin + end


LINEAR_MAPS = {"Gemm": GemmMap, "MatMul": MatMulMap, "Conv": ConvMap}


# ------------------------------------------------------------------------------------------- the family


@dataclass
class Term:
    """sign · (input ⋆ weight + bias): one term of a denominator z = Σ_t sign_t · (in_t ⋆ W_t + b_t)."""
    input: str                  # "x", "ones", "low", "high"
    weight: np.ndarray
    bias: np.ndarray | None
    sign: float = 1.0


def _pos(a):
    return None if a is None else np.maximum(a, 0).astype(np.float32)


def _neg(a):
    return None if a is None else np.minimum(a, 0).astype(np.float32)


def layer_params(env: Env):
    node = env.node
    if node.op_type == "MatMul":
        w_val = node.inputs[0] if const_array(node.inputs[0]) is not None else node.inputs[1]
        return const_array(w_val).astype(np.float32), None
    w = const_array(node.inputs[1]).astype(np.float32)
    b = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    return w, None if b is None else b.astype(np.float32)


def terms_for(rule: str, w, b) -> tuple[list[Term], bool]:
    """The terms of z^B, w² and flat (see the module docstring), and whether their z is ≥ 0 by construction
    (W² and ones on a constant-one input), so that stab(z) = z + ε exactly: one op instead of three."""
    if rule == "zbox":
        return [Term("x", w, b), Term("low", _pos(w), _pos(b), -1.0), Term("high", _neg(w), _neg(b), -1.0)], False
    if rule == "w-square":
        return [Term("ones", (w * w).astype(np.float32), None)], True
    if rule == "flat":
        return [Term("ones", np.ones_like(w), None)], True
    raise AssertionError(rule)


def one_group(env: Env, lin: LinearMap, terms: list[Term], nonnegative_z: bool):
    """s = R ⊘ stab(Σ_t sign_t·(in_t ⋆ W_t + b_t)), R_x = Σ_t sign_t · in_t ⊙ (s ⋆ᵀ W_t) (no product with a
    constant-one input), R_bias = Σ_t sign_t·⟨b_t, s⟩; returns (R_x, R_bias or None)."""
    b, p = env.b, env.params
    inputs = {"x": activation(env)}
    if env.rule == "zbox":
        inputs["low"], inputs["high"] = lin.constant_input(p.low), lin.constant_input(p.high)
    if terms[0].input == "ones":
        z = lin.forward(lin.constant_input(1.0), terms[0].weight, None)
    else:
        signed = [lin.forward(inputs[t.input], t.weight, t.bias) for t in terms]
        z = b.total([part if t.sign > 0 else b.op("Neg", part) for t, part in zip(terms, signed)])
    den = b.op("Add", z, b.scalar(p.stabilizer)) if nonnegative_z and p.stabilizer > 0 else b.stabilize(z, p.stabilizer)
    s = b.op("Div", env.R, den)
    relevance, bias_shares = [], []
    for t in terms:
        back = lin.transpose(s, t.weight)
        if t.input != "ones":
            back = b.op("Mul", inputs[t.input], back)
        relevance.append(back if t.sign > 0 else b.op("Neg", back))
        if t.bias is not None:
            share = lin.bias_share(s, t.bias)
            bias_shares.append(share if t.sign > 0 else b.op("Neg", share))
    return b.total(relevance), b.total(bias_shares)


# ------------------------------------------------------------------------------------------- the rules


def affine_kind(node: ir.Node) -> str:
    """Gemm and Conv are affine; a MatMul is affine when one operand is a constant of the model (its weights),
    and bilinear otherwise (attention's Q·Kᵀ and A·V, :mod:`relgraph.rules.attention`)."""
    if node.op_type == "MatMul" and sum(const_array(v) is not None for v in node.inputs) != 1:
        return BILINEAR
    return AFFINE


def _check_affine(node: ir.Node) -> str | None:
    if node.op_type == "MatMul":
        if any(v.shape is not None and len(v.shape) < 2 for v in node.inputs):
            return "an operand is a vector (rank 1)"
        return None
    if const_array(node.inputs[1]) is None:
        return "weights are not constant"
    if len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is None:
        return "bias is not constant"
    if node.op_type == "Gemm" and (attr(node, "transA", 0) or attr(node, "transB", 0) != 1
                                   or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0):
        return "Gemm not in canonical form"
    return None


AFFINE_OPS = ("Gemm", "Conv", "MatMul")


def _needs_bounds(node: ir.Node, params) -> str | None:
    return "needs input bounds: --bounds LOW HIGH" if params.low is None or params.high is None else None


@defrule(AFFINE_OPS, affine_kind, "gradient", kinds=AFFINE, check=_check_affine)
def affine_gradient(env: Env):
    """R_x = R ⋆ᵀ W: the transposed map (the exact gradient).

    In the Q formulation this is LRP-0 rephrased (Q_x = Q_z ⋆ᵀ W), and the bias, the weight of a
    constant-one input, gets R_bias = 1 · ⟨b, Q_z⟩.
    """
    lin = LINEAR_MAPS[env.node.op_type](env)
    bias = lin.bias_share(env.R, lin.bias) if env.formulation == "q" and lin.bias is not None else None
    return _place(env, lin.transpose(env.R, lin.w), bias)


@defrule(AFFINE_OPS, affine_kind, "epsilon", "normalized", "zero", kinds=AFFINE, stabilized=True,
         multiplies_input=True)
def affine_epsilon(env: Env):
    """LRP-ε (Bach et al. 2015): R_x = x ⊙ ((R ⊘ stab(z)) ⋆ᵀ W), R_bias = ⟨b, R ⊘ stab(z)⟩.

    ``zero`` is LRP-0 (ε = 0). z is the forward output itself: nothing is recomputed. The step is one
    call of the model-local function ``relgraph.Epsilon<Op>`` (body: standard ops).
    """
    lin = LINEAR_MAPS[env.node.op_type](env)
    relevance, s = epsilon_step(env, lin, env.epsilon)
    return _place(env, relevance, lin.bias_share(s, lin.bias) if lin.bias is not None else None)


@defrule(AFFINE_OPS, affine_kind, "zbox", kinds=AFFINE, requires=_needs_bounds)
@defrule(AFFINE_OPS, affine_kind, "w-square", "flat", kinds=AFFINE)
def affine_terms(env: Env):
    """z^B (Montavon et al. 2017), w² and flat: one denominator of the rule's terms (``terms_for``)."""
    lin = LINEAR_MAPS[env.node.op_type](env)
    return _place(env, *one_group(env, lin, *terms_for(env.rule, lin.w, lin.bias)))


@defrule(AFFINE_OPS, affine_kind, "gamma", "alpha-beta", "zplus", kinds=AFFINE, multiplies_input=True)
def affine_parts(env: Env):
    """γ (zennit's Gamma), αβ (Bach et al. 2015) and z⁺ (αβ with α = 1, β = 0): the split forward Z⁺, Z⁻ and
    two shares pushed back, by the one definition :func:`relgraph.rules.functions.parts_relevance`.

    On a Gemm or 2-d Conv, γ and αβ with β ≠ 0 are one ``relgraph.<Rule><Op>`` call (a GPU lowering runs it as
    two fused kernels); z⁺ on an input proved ≥ 0 is the ε step with W⁺ and b⁺ (Z⁺ ≥ 0, so stab(Z⁺) = Z⁺ + ε);
    every other layer writes the formula's ops inline.
    """
    lin = LINEAR_MAPS[env.node.op_type](env)
    p = env.params
    rule, alpha, beta = ("alpha-beta", 1.0, 0.0) if env.rule == "zplus" else (env.rule, p.alpha, p.beta)
    if (rule == "gamma" or beta != 0) and (env.node.op_type == "Gemm" or
                                           (env.node.op_type == "Conv" and len(lin.kernel) == 2)):
        return _place(env, *parts_step(env, lin, rule))
    if rule == "alpha-beta" and beta == 0 and env.nonnegative(activation(env)):  # α − β = 1: α = 1
        return _place(env, *_zplus_as_epsilon(env, lin))
    return _place(env, *_parts_inline(env, lin, rule, alpha, beta))


def _zplus_as_epsilon(env: Env, lin: LinearMap):
    """z⁺ on x ≥ 0: s = R ⊘ (x⋆W⁺ + b⁺ + ε), R_x = x ⊙ (s ⋆ᵀ W⁺), one fused ε call; returns (R_x, R_bias)."""
    b, eps = env.b, env.params.stabilizer
    wp, bp = _pos(lin.w), _pos(lin.bias)
    z = lin.forward(activation(env), wp, bp)
    relevance, s = normalized_step(env, lin, wp, b.op("Add", z, b.scalar(eps)) if eps > 0 else z)
    return relevance, lin.bias_share(s, bp) if bp is not None else None


def _parts_inline(env: Env, lin: LinearMap, rule: str, alpha: float, beta: float):
    """γ, αβ or z⁺ written as ops in the graph (MatMul, 1-d and 3-d Conv, β = 0); returns (R_x, R_bias)."""
    b, p, x = env.b, env.params, activation(env)
    wp, wn, bp, bn = _pos(lin.w), _neg(lin.w), _pos(lin.bias), _neg(lin.bias)
    if rule == "gamma":
        coefficients = dict(g1=b.scalar(1 + p.gamma))
    else:
        coefficients = dict(alpha=None if alpha == 1 else b.scalar(alpha), beta=None if beta == 0 else b.scalar(beta))
    relevance, sa, sb = parts_relevance(
        b.op, lambda v, w, bias=None: lin.forward(v, w, bias), lin.transpose, lambda z: b.stabilize(z, p.stabilizer),
        rule, x, wp, wn, bp, bn, env.y, env.R, b.scalar(0.0), nonnegative=bool(env.nonnegative(x)), **coefficients)
    return relevance, _parts_bias(env, lin, sa, sb, bp, bn)


def _activation_index(node: ir.Node) -> int:
    return 1 if node.op_type == "MatMul" and const_array(node.inputs[0]) is not None else 0


def activation(env: Env) -> ir.Value:
    """The layer's non-constant operand (MatMul may carry its weights on either side)."""
    return env.node.inputs[_activation_index(env.node)]


def _place(env: Env, relevance, bias=None):
    """Put the input relevance at the activation operand's position, and the bias's (one value per sample) at
    the bias's (input 2 of a Gemm or Conv)."""
    out = [None] * len(env.node.inputs)
    out[_activation_index(env.node)] = relevance
    if bias is not None:
        out[2] = bias
    return out


# ------------------------------------------------------------------------------ the steps as function calls

def epsilon_step(env, lin, epsilon: float):
    """Emit one ε step for the layer of ``env``; returns (R_x, s)."""
    return normalized_step(env, lin, lin.w, env.stabilized_output(epsilon))


def normalized_step(env, lin, w: np.ndarray, den):
    """R_x = x ⊙ ((R ⊘ den) ⋆ᵀ w), s = R ⊘ den, as one ``relgraph.Epsilon<Op>`` call.

    ``w`` is the weight the layer's rule pushes back through: W itself for ε, W⁺ for z⁺ on an input proved
    non-negative (one group, one term: the same step with another weight). ``den`` is the stabilized
    denominator. Returns (R_x, s).
    """
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


def parts_step(env, lin, rule: str):
    """Emit one γ or αβ step for a Gemm or Conv layer; returns (R_x, R_bias or None)."""
    b, node, p = env.b, env.node, env.params
    x = activation(env)
    nonneg = env.nonnegative(x)
    extra = {}
    unit = node.op_type == "Conv" and lin.unit_stride_2d()
    name = parts_function(rule, node.op_type, unit, bool(nonneg)).name
    if node.op_type == "Conv":
        extra = dict(lin.geometry)
        if unit:
            geo = lin.flipped_geometry()
            extra.update(back_pads=geo["back_pads"], grouped_shape=geo["grouped_shape"],
                         back_shape=geo["back_shape"])
        else:
            extra["output_padding"] = lin.output_padding
    extra.update(epsilon=float(p.stabilizer))
    extra.update(gamma=float(p.gamma)) if rule == "gamma" else extra.update(alpha=float(p.alpha), beta=float(p.beta))
    bias = lin.bias if lin.bias is not None else np.zeros(lin.w.shape[0], np.float32)
    bp, bn = _pos(bias), _neg(bias)
    inputs = [x, lin.param(lin.w), lin.param(bp), lin.param(bn)] + ([env.y] if rule == "gamma" else []) + [env.R]
    b.functions.add(name)
    rx, sa, sb = b.op(name, *inputs, domain=DOMAIN, outputs=3, **extra)
    return rx, _parts_bias(env, lin, sa, sb, bp, bn)


def _parts_bias(env, lin, sa, sb, bp, bn):
    """The bias's share ⟨b⁺, s_a⟩ + ⟨b⁻, s_b⟩ of a γ / αβ step (no s_b under β = 0), None without a bias. ``bp``
    and ``bn`` are the arrays the step read, so that their initializers are shared."""
    if lin.bias is None:
        return None
    return env.b.total([lin.bias_share(sa, bp)] + ([lin.bias_share(sb, bn)] if sb is not None else []))
