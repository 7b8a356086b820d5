"""The rule registry: ONNX op type → (kind, rule name) → :class:`Rule`, a record of the function and its facts.

A rule is one small function ``rule(env) -> [relevance of each input]``. It reads the forward node
(``env.node``), the relevance arriving at its outputs (``env.R`` / ``env.Rs``) and emits ONNX nodes
through ``env.b`` (a :class:`relgraph.graph.Builder`). It returns one entry per node input; ``None``
means "no relevance flows there" (weights, shape operands, an input the rule gives nothing).

Blame the bias: a bias is an input like any other, the weight of a constant-one input, and its relevance is
what the rule returns at its position, summed per sample ([N]): a Gemm's or Conv's input 2, the shift of a
BatchNormalization or LayerNormalization, the constant operand of an Add, a run-time constant added in (an
attention mask, a position embedding). An op whose bias is implied rather than an input (the softmax's
normalizer) returns one extra, last entry.

Every op type belongs to one *kind*; a composite picks a rule name per node, and the kind says
which names make sense (a ReLU has no ``zplus``). Rules are registered next to their math, in the
modules of this package, with :func:`defrule` — as JAX keeps its transpose rules. The record carries
every property the passes rely on (multiplies by its input, keeps zeros, stabilized), so that a proof over
the graph reads facts declared next to the math, never a list of names kept elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx_ir as ir

from ..graph import Builder

# kinds of node: a composite picks a rule per kind, and a kind says which rule names make sense
AFFINE = "affine"          # Gemm, Conv, MatMul: a weight matrix and a bias
LINEAR = "linear"          # parameter-free linear maps that mix inputs: sums, average pooling
SCALE = "scale"            # elementwise affine with constants: BatchNormalization, Add/Sub/Mul/Div by a constant
MAX = "max"                # MaxPool
ACTIVATION = "activation"  # elementwise nonlinearities
PRODUCT = "product"        # Mul (or Div) of two activations (gates: SiLU, squeeze-excitation; normalizers)
BILINEAR = "bilinear"      # MatMul of two activations (attention: Q·Kᵀ, A·V)
SOFTMAX = "softmax"        # a Softmax inside the model (attention weights)
STRUCTURAL = "structural"  # moves values without arithmetic: its adjoint is exact for every rule
ALL_KINDS = (AFFINE, LINEAR, SCALE, MAX, ACTIVATION, PRODUCT, BILINEAR, SOFTMAX, STRUCTURAL)

RuleFn = Callable[["Env"], list]

# The ε family: rules that divide R by stab(z) = z + ε·sign(z) of the node's own output z, and the ε each
# takes. ``zero`` is LRP-0 (ε = 0); ``norm`` is zennit's Norm (the fixed stabilizer: the default on sums,
# pooling and scale layers); ``epsilon`` and ``normalized`` take the user's ε. ``normalized`` and ``ignore``
# (= ``pass``) are the names of the per-layer-type tables of LRP read as back-propagation.
EPSILON_OF: dict[str, Callable[["RuleParams"], float]] = {
    "epsilon": lambda p: p.epsilon,
    "normalized": lambda p: p.epsilon,
    "norm": lambda p: p.stabilizer,
    "zero": lambda p: 0.0,
}


@dataclass(frozen=True)
class Rule:
    """One rule on the nodes of one op type and kind: its function, and every fact about it that the passes
    and the lowering rely on. Declared with :func:`defrule` where the function is defined.

    - ``multiplies_input``: R_x = x ⊙ (…) for every activation operand x (ε, z⁺, αβ, γ; the ε split of
      sums and bias adds): R_x vanishes wherever x does.
    - ``keeps_zeros``: R_x vanishes wherever x does provided R_y vanishes wherever y does. The rule moves
      relevance without making any (reshapes, max pooling's winner routing, a gate's signal, a pass through
      f with f(0) = 0), and x = 0 gives y = 0 where R_x takes from R_y.
    - ``stabilized``: in the ε family (:data:`EPSILON_OF`): R ⊘ stab(z) on the node's own output z.
    - ``requires(node, params)``: why the rule cannot run on this node with these parameters (z^B without
      bounds, a pattern rule without a fitted pattern), or None. The relevance pass asks every node before
      the walk starts, so a compile fails before it emits anything, naming every node at once.
    """

    op: str
    kind: str
    name: str
    fn: RuleFn
    multiplies_input: bool
    keeps_zeros: bool
    stabilized: bool
    requires: Callable[[ir.Node, "RuleParams"], str | None] | None

    def problem(self, node: ir.Node, params: "RuleParams") -> str | None:
        return self.requires(node, params) if self.requires is not None else None


def rule_epsilon(rule: str, params: "RuleParams") -> float:
    """The ε of stab(z) under ``rule``: :data:`EPSILON_OF`, else (rules outside the ε family that split by
    the output, as AttnLRP's uniform rule) the user's ε."""
    return EPSILON_OF.get(rule, EPSILON_OF["epsilon"])(params)


RULES: dict[str, dict[tuple[str, str], Rule]] = {}  # op type → (kind, rule name) → Rule
KIND_RULES: dict[str, list[str]] = {kind: [] for kind in ALL_KINDS}  # kind → its rule names, in declaration order
KINDS: dict[str, Callable[[ir.Node], str]] = {}
CHECKS: dict[str, Callable[[ir.Node], str | None]] = {}
_DECLARED: dict[str, object] = {}  # op type → the kind (name or function) it was registered with

# The forward sign of an op's output (``relgraph.passes.relevance.nonnegative_values``):
# ``NONNEGATIVE``: y ≥ 0 whatever x; ``PRESERVES``: y ≥ 0 when its floating-point operands are ≥ 0 (shape and
# index operands aside). A function node → one of them (or None) decides per node.
NONNEGATIVE, PRESERVES = "nonnegative", "preserves"
SIGNS: dict[str, object] = {}


def defrule(op_types, kind, *names: str, kinds=None, check: Callable[[ir.Node], str | None] | None = None,
            multiplies_input: bool = False, keeps_zeros: bool = False, stabilized: bool = False,
            requires: Callable[[ir.Node, "RuleParams"], str | None] | None = None):
    """Register ``fn`` as rule(s) ``names`` for the nodes of ``op_types`` and of ``kinds``.

    ``kind`` is a kind name or a function node → kind (Add is a sum of activations or a bias add); with a
    function, ``kinds`` names the kinds the rule serves (a MatMul is affine with a constant operand and
    bilinear without one: the two kinds have different ``gradient`` rules). ``check(node)`` returns why a
    particular node cannot be handled (an attribute value, a mode), or None. The facts are those of
    :class:`Rule`; ``stabilized`` rules are named in :data:`EPSILON_OF`.
    """
    op_types = (op_types,) if isinstance(op_types, str) else tuple(op_types)
    if isinstance(kind, str) == (kinds is not None):
        raise AssertionError(f"rules {names} of {op_types}: a kind function and the kinds it serves, or one kind")
    served = (kind,) if isinstance(kind, str) else (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if stabilized and not set(names) <= set(EPSILON_OF):
        raise AssertionError(f"rules {names}: the ε family is {sorted(EPSILON_OF)}")

    def register(fn: RuleFn) -> RuleFn:
        for op in op_types:
            # one kind per op type: a later registration with another kind would silently reclassify every
            # node of that op (a per-node kind is one function, registered the same way each time)
            if _DECLARED.setdefault(op, kind) != kind:
                raise AssertionError(f"{op} registered as kind {kind!r} and as {_DECLARED[op]!r}")
            KINDS[op] = kind if callable(kind) else (lambda node, k=kind: k)
            if check is not None:
                CHECKS[op] = check
            for k in served:
                for name in names:
                    if (k, name) in RULES.get(op, {}):
                        raise AssertionError(f"rule {name!r} registered twice for {k} {op}")
                    RULES.setdefault(op, {})[k, name] = Rule(op, k, name, fn, multiplies_input, keeps_zeros,
                                                             stabilized, requires)
                    if name not in KIND_RULES[k]:
                        KIND_RULES[k].append(name)
        return fn

    return register


def defsign(op_types, sign) -> None:
    """Declare the forward sign of ``op_types``' outputs: :data:`NONNEGATIVE`, :data:`PRESERVES`, or a
    function node → either (or None where neither holds)."""
    for op in (op_types,) if isinstance(op_types, str) else op_types:
        SIGNS[op] = sign


def sign_of(node: ir.Node) -> str | None:
    sign = SIGNS.get(node.op_type)
    return sign(node) if callable(sign) else sign


def kind_of(node: ir.Node) -> str:
    return KINDS[node.op_type](node)


def rule_for(node: ir.Node, rule: str) -> Rule | None:
    """The record of ``rule`` on ``node`` (its op type and kind), or None where the rule does not apply."""
    return RULES.get(node.op_type, {}).get((kind_of(node), rule))


def rules_for(node: ir.Node) -> list[str]:
    """The rule names that apply to ``node``."""
    kind = kind_of(node)
    return [name for k, name in RULES.get(node.op_type, {}) if k == kind]


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
    first_layer: bool
    formulation: str  # "q": the relevance graph carries Q = R/a (LRP-0 rephrased); gradient rules report biases
    baseline: Callable[[ir.Value], ir.Value | None]  # a value's counterpart on the baseline's forward pass
    rectified: ir.Value | None  # the ReLU output y = max(z, 0), when the graph proves R_z = 0 wherever z ≤ 0
    shared: bool  # R is the share q of z in a residual sum, R_z = z ⊙ q (see ``Share``)
    absorbs: Callable[[ir.Value], bool]  # whether v's producer takes a ``Share`` of v
    conserving: bool  # R starts at the target logit and is accounted: constants' shares are biases

    @property
    def epsilon(self) -> float:
        """The ε of stab(z) under this node's rule (:data:`EPSILON_OF`)."""
        return rule_epsilon(self.rule, self.params)

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
