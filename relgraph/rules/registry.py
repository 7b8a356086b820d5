"""The rule registry: ONNX op type → rule name → function.

A rule is one small function ``rule(env) -> [relevance of each input]``. It reads the forward node
(``env.node``), the relevance arriving at its outputs (``env.R`` / ``env.Rs``) and emits ONNX nodes
through ``env.b`` (a :class:`relgraph.graph.Builder`). It returns one entry per node input; ``None``
means "no relevance flows there" (constants, shape operands, an input the rule gives nothing).

Every op type belongs to one *kind*; a composite picks a rule name per node, and the kind says
which names make sense (a ReLU has no ``zplus``). Rules are registered next to their math, in the
modules of this package, with :func:`defrule` — as JAX keeps its transpose rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx_ir as ir

from ..graph import Builder

# kinds, and the rule names each accepts
AFFINE = "affine"          # Gemm, Conv, MatMul: a weight matrix and a bias
LINEAR = "linear"          # parameter-free linear maps that mix inputs: sums, average pooling
SCALE = "scale"            # elementwise affine with constants: BatchNormalization, Add/Sub/Mul/Div by a constant
MAX = "max"                # MaxPool
ACTIVATION = "activation"  # elementwise nonlinearities
PRODUCT = "product"        # Mul (or Div) of two activations (gates: SiLU, squeeze-excitation; normalizers)
BILINEAR = "bilinear"      # MatMul of two activations (attention: Q·Kᵀ, A·V)
SOFTMAX = "softmax"        # a Softmax inside the model (attention weights)
STRUCTURAL = "structural"  # moves values without arithmetic: its adjoint is exact for every rule

# ``normalized`` (= epsilon) and ``ignore`` (= pass) are the names in the per-layer-type tables of LRP
# read as back-propagation (README, "Per-layer-type rules").
# ``norm`` is zennit's Norm: the ε split with the fixed stabilizer, the default on sums, pooling and scale layers.
KIND_RULES: dict[str, tuple[str, ...]] = {
    AFFINE: ("gradient", "epsilon", "normalized", "zero", "gamma", "alpha-beta", "zplus", "zbox", "w-square",
             "flat", "pattern", "pattern-attribution"),
    LINEAR: ("gradient", "norm", "epsilon", "normalized", "zero"),
    SCALE: ("gradient", "norm", "epsilon", "normalized", "zero"),
    MAX: ("gradient", "radial"),
    ACTIVATION: ("gradient", "pass", "ignore", "slope", "repeat", "rescale", "deconvnet", "guided-backprop"),
    PRODUCT: ("gradient", "gate", "uniform"),
    BILINEAR: ("gradient", "uniform", "detach"),
    SOFTMAX: ("gradient", "taylor", "detach"),
    STRUCTURAL: ("gradient",),
}

RuleFn = Callable[["Env"], list]

RULES: dict[str, dict[str, RuleFn]] = {}
_BY_KIND: dict[tuple[str, str, str], RuleFn] = {}  # (op type, kind, rule) → a rule for the nodes of one kind
KINDS: dict[str, Callable[[ir.Node], str]] = {}
CHECKS: dict[str, Callable[[ir.Node], str | None]] = {}
_DECLARED: dict[str, object] = {}  # op type → the kind (name or function) it was registered with


def defrule(op_types, kind, *names: str, check: Callable[[ir.Node], str | None] | None = None,
            only: str | None = None):
    """Register ``fn`` as rule(s) ``names`` for ``op_types``.

    ``kind`` is a kind name or a function node → kind (Add is a sum of activations or a bias add).
    ``check(node)`` returns why a particular node cannot be handled (an attribute value, a mode), or None.
    ``only``: the function serves the nodes of this kind alone (a MatMul is affine with a constant operand
    and bilinear without one: the two kinds have different ``gradient`` rules).
    """
    if isinstance(op_types, str):
        op_types = (op_types,)

    def register(fn: RuleFn) -> RuleFn:
        for op in op_types:
            # one kind per op type: a later registration with another kind would silently reclassify every
            # node of that op (a per-node kind is one function, registered the same way each time)
            if _DECLARED.setdefault(op, kind) != kind:
                raise AssertionError(f"{op} registered as kind {kind!r} and as {_DECLARED[op]!r}")
            KINDS[op] = kind if callable(kind) else (lambda node, k=kind: k)
            if check is not None:
                CHECKS[op] = check
            for name in names:
                if only is None:
                    RULES.setdefault(op, {})[name] = fn
                else:
                    RULES.setdefault(op, {}).setdefault(name, fn)
                    _BY_KIND[op, only, name] = fn
        return fn

    return register


def kind_of(node: ir.Node) -> str:
    return KINDS[node.op_type](node)


def rule_function(node: ir.Node, rule: str) -> RuleFn:
    """The function of ``rule`` for ``node``: the one registered for the node's kind, else the op's."""
    return _BY_KIND.get((node.op_type, kind_of(node), rule)) or RULES[node.op_type][rule]


def supported_ops() -> list[str]:
    return sorted(RULES)


@dataclass
class RuleParams:
    """Numeric parameters of a rule, with zennit's defaults."""

    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: object = None   # z^B bounds: float or per-channel list
    high: object = None
    # fixed ε of the rules whose denominators only need guarding: z⁺, αβ, γ, w², flat, z^B and ``norm`` (sums,
    # pooling, scale layers), as zennit's ``stabilizer``; ``epsilon`` is the ε of ``epsilon``/``normalized`` alone
    stabilizer: float = 1e-6
    # layer name → fitted pattern (relgraph.patterns), read by the pattern rules; arrays, so left out of ==
    patterns: dict | None = field(default=None, compare=False, repr=False)


@dataclass
class Env:
    """What a rule sees: the builder, the forward node, the relevance at its outputs, its rule choice."""

    b: Builder
    node: ir.Node
    Rs: list
    rule: str
    params: RuleParams
    nonnegative: Callable[[ir.Value], bool]
    report_bias: Callable[[ir.Value], None]
    first_layer: bool = False
    formulation: str = "r"  # "q": the relevance graph carries Q = R/a (LRP-0 rephrased); gradient rules report biases
    baseline: Callable[[ir.Value], ir.Value | None] = lambda v: None  # a value's counterpart on the baseline
    rectified: ir.Value | None = None  # the ReLU output y = max(z, 0), when the graph proves R_z = 0 wherever z ≤ 0
    shared: bool = False  # R is the share q of z in a residual sum, R_z = z ⊙ q (see ``Share``)
    absorbs: Callable[[ir.Value], bool] = lambda v: False  # whether v's producer takes a ``Share`` of v
    conserving: bool = False  # R starts at the target logit and is accounted: constants' shares are biases

    @property
    def epsilon(self) -> float:
        """The ε of the ε family under this node's rule: 0 for LRP-0 (``zero``), the fixed stabilizer for
        ``norm`` (zennit's Norm), the user's ε for ``epsilon`` and ``normalized``."""
        if self.rule == "zero":
            return 0.0
        return self.params.stabilizer if self.rule == "norm" else self.params.epsilon

    def stabilized_output(self, epsilon: float):
        """The denominator d with R ⊘ d = R_z ⊘ stab(z) for the node's output z, where it matters: only
        where R_z ≠ 0.

        When the relevance pass proved that R_z vanishes wherever z ≤ 0 (z feeds only a ReLU whose relevance
        is zero where the ReLU gives 0), stab(z) = z + ε wherever R_z ≠ 0, and y + ε with y the ReLU output
        (≥ 0, already computed) is exact there and a positive denominator elsewhere: one elementwise op
        instead of three. When R arrives as the share q of R_z = z ⊙ q, R_z ⊘ stab(z) = q ⊙ |z| ⊘ (|z| + ε):
        d = (|z| + ε) ⊘ |z|, no sign test (at z = 0, d = +∞ and the quotient is 0, as R_z there).
        """
        if self.shared:
            magnitude = self.b.op("Abs", self.y)
            return self.b.op("Div", self.b.op("Add", magnitude, self.b.scalar(epsilon)), magnitude)
        if self.rectified is not None and epsilon > 0:
            return self.b.op("Add", self.rectified, self.b.scalar(epsilon))
        return self.b.stabilize(self.y, epsilon)

    def to_first_input(self, rx) -> list:
        """The rule's result when all relevance goes to the node's first input (shape, bound, exponent and
        parameter operands take none)."""
        return [rx] + [None] * (len(self.node.inputs) - 1)

    @property
    def R(self):
        return self.Rs[0]

    @property
    def x(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def y(self) -> ir.Value:
        return self.node.outputs[0]


@dataclass(frozen=True)
class Share:
    """Relevance R_v = v ⊙ q handed over unmultiplied: a residual sum's ε split gives each branch
    R_v = v ⊙ (R ⊘ stab(v + w)); when v is the output of an ε layer that feeds only the sum, that layer
    divides by stab(v) next, and v ⊙ q ⊘ stab(v) needs no sign of v (``Env.stabilized_output``)."""

    value: ir.Value
    q: ir.Value
