"""Named rules and composites: which rule each node gets.

A :class:`Composite` maps every node to a rule name, in this order of precedence:

1. node-name globs (``names``),
2. the first affine layer(s) — those that read the model input without another affine layer in
   between (``first``),
3. op types (``op_types``),
4. the default rule of the node's kind (``kinds``).

Named single rules (``--rule epsilon``) apply their rule to every affine layer and LRP's defaults
elsewhere: sums, average pooling and scale layers split by ``norm`` (zennit's Norm: the ε split with the
fixed stabilizer, not the user's ε), winner-takes-all max pooling, relevance passed unchanged through
activations, gates given no relevance. So ``epsilon`` means what ε means in zennit's composites: it acts
on the layers with weights (Gemm, Conv, MatMul) only. ``zbox`` applies z^B to the first layer and
ε elsewhere (its bounds describe the input only). The composites carry zennit's meaning
(``zennit.composites``): z⁺, γ or αβ on convolutions, ε on fully connected layers, flat or z^B first.

A TOML rule map (``--rule-map FILE``) builds a composite from a named base:

    base = "epsilon-plus"                # any name of RULE_NAMES; default "epsilon"
    first = "flat"                       # or {rule = "zbox", low = -1.0, high = 1.0}
    [params]                             # epsilon, stabilizer, gamma, alpha, beta, low, high
    epsilon = 1e-6
    [op_types]
    Conv = {rule = "gamma", gamma = 0.5}
    Add = "epsilon"                      # the user's ε on residual sums too (default: norm)
    MatMul = "gamma"                     # MatMuls with weights; Q·Kᵀ and A·V (bilinear) keep their default
    [names]
    "/features/2*" = "alpha-beta"
"""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from dataclasses import dataclass, field

from ..errors import RelgraphError
from .registry import (ACTIVATION, AFFINE, ALL_KINDS, BILINEAR, KIND_RULES, LINEAR, MAX, PRODUCT, RULES, SCALE,
                       SOFTMAX, STRUCTURAL, RuleParams, rule_for, rules_for)

# attention takes AttnLRP's rules in every LRP composite: the softmax's Taylor rule, the uniform ε rule on
# bilinear MatMuls (relgraph.rules.attention)
LRP_KINDS = {AFFINE: "epsilon", LINEAR: "norm", SCALE: "norm", MAX: "gradient", ACTIVATION: "pass",
             PRODUCT: "gate", BILINEAR: "uniform", SOFTMAX: "taylor", STRUCTURAL: "gradient"}
GRADIENT_KINDS = {kind: "gradient" for kind in ALL_KINDS}


@dataclass(frozen=True)
class Choice:
    rule: str
    params: RuleParams


@dataclass
class Composite:
    name: str
    kinds: dict
    op_types: dict = field(default_factory=dict)   # op type → rule or Choice
    names: list = field(default_factory=list)      # [(glob, rule or Choice)]
    first: object = None                           # rule or Choice
    output_init: str = "logit"                     # "logit": R_out = f_c(x); "one": R_out = 1
    multiply_input: bool = False                   # input × gradient
    params: RuleParams = field(default_factory=RuleParams)
    formulation: str = "r"                         # "q": propagate Q = R/a (see to_q_formulation)
    baseline: object = None                        # "zeros" or an array: compare to this input (DeepLIFT)

    def choose(self, node, kind: str, first_layer: bool) -> Choice:
        """The rule for ``node``; raises when a user-given rule does not fit the node's kind."""
        picked, source = None, None
        for glob, rule in self.names:
            if fnmatch.fnmatchcase(node.name or "", glob):
                picked, source = rule, f"name glob '{glob}'"
                break
        if picked is None and first_layer and self.first is not None and kind == AFFINE:
            picked, source = self.first, "first layer"
        if picked is None and node.op_type in self.op_types:
            picked, source = self.op_types[node.op_type], f"op type {node.op_type}"
            rule = picked if isinstance(picked, str) else picked.rule
            if rule_for(node, rule) is None and any(name == rule for _, name in RULES.get(node.op_type, {})):
                picked = None  # a rule for this op's other kind (γ for MatMuls with weights, not Q·Kᵀ)
        if picked is None:
            picked, source = self.kinds[kind], f"the default of composite '{self.name}'"
        choice = picked if isinstance(picked, Choice) else Choice(picked, self.params)
        if rule_for(node, choice.rule) is None:
            raise RelgraphError(
                f"rule '{choice.rule}' ({source}) does not apply to {node.op_type} '{node.name}' "
                f"(a {kind} op: {', '.join(rules_for(node))})"
            )
        return choice


def _lrp(name, kinds_update=None, **kw):
    return Composite(name, dict(LRP_KINDS, **(kinds_update or {})), **kw)


def _gradient(name, **kw):
    kinds = dict(GRADIENT_KINDS)
    kinds.update(kw.pop("kinds", {}))
    return Composite(name, kinds, output_init="one", **kw)


def _affine(rule):
    return lambda: Composite(rule, dict(LRP_KINDS, **{AFFINE: rule}))


def _patterns(name, rule):
    return Composite(name, dict(GRADIENT_KINDS, **{AFFINE: rule}), output_init="logit")


def _zero():
    # LRP-0 on the layers with weights; sums and pooling keep norm's fixed stabilizer (zennit's Norm always has
    # it): an all-zero channel would otherwise give 0/0 at a global average pool
    return Composite("zero", dict(LRP_KINDS, **{AFFINE: "zero"}))


DENSE = {"Gemm": "epsilon", "MatMul": "epsilon"}

COMPOSITES = {
    # single rules
    "gradient": lambda: _gradient("gradient"),
    "input-x-gradient": lambda: _gradient("input-x-gradient", multiply_input=True),
    "deconvnet": lambda: _gradient("deconvnet", kinds={ACTIVATION: "deconvnet"}),
    "guided-backprop": lambda: _gradient("guided-backprop", kinds={ACTIVATION: "guided-backprop"}),
    "lrp": lambda: _lrp("lrp"),
    "epsilon": lambda: _lrp("epsilon"),
    "zero": _zero,
    "gamma": _affine("gamma"),
    "alpha-beta": _affine("alpha-beta"),
    "zplus": _affine("zplus"),
    "w-square": _affine("w-square"),
    "flat": _affine("flat"),
    "zbox": lambda: _lrp("zbox", first="zbox"),
    # transformers. AttnLRP (Achtibat et al. 2024): ε on linear layers, the LN rule (σ constant), identity on
    # activations, the uniform rule on products without a gate and on bilinear MatMuls, the softmax's Taylor
    # rule. CP-LRP (Ali et al. 2022): the same, but the attention weights are held constant and relevance flows
    # through the values only.
    "attnlrp": lambda: _lrp("attnlrp"),
    "cp-lrp": lambda: _lrp("cp-lrp", kinds_update={BILINEAR: "detach", SOFTMAX: "detach"}),
    # compare to baseline (Shrikumar et al. 2017, arXiv:1704.02685); DeepLIFT's rescale rule: multipliers propagate as gradients with Δy/Δx
    # at nonlinearities, and the input's relevance is (x − x̄) ⊙ multiplier, so Σ R = f(x) − f(x̄)
    "deeplift": lambda: _gradient("deeplift", kinds={ACTIVATION: "rescale"}, multiply_input=True,
                                  baseline="zeros"),
    # learned signal estimators (Kindermans et al. 2018): the gradient's backward pass with the weights
    # replaced by the fitted patterns A (PatternNet) or W ⊙ A (PatternAttribution), started at the target
    # logit (A.2.3, A.3.3), not multiplied by the input; they need compile(..., patterns=FILE)
    "patternnet": lambda: _patterns("patternnet", "pattern"),
    "patternattribution": lambda: _patterns("patternattribution", "pattern-attribution"),
    # zennit's composites
    "epsilon-plus": lambda: _lrp("epsilon-plus", op_types=dict(DENSE, Conv="zplus")),
    "epsilon-plus-flat": lambda: _lrp("epsilon-plus-flat", op_types=dict(DENSE, Conv="zplus"), first="flat"),
    "epsilon-gamma-box": lambda: _lrp("epsilon-gamma-box", op_types=dict(DENSE, Conv="gamma"), first="zbox"),
    "epsilon-alpha2-beta1": lambda: _lrp("epsilon-alpha2-beta1", op_types=dict(DENSE, Conv="alpha-beta")),
    "epsilon-alpha2-beta1-flat": lambda: _lrp("epsilon-alpha2-beta1-flat", op_types=dict(DENSE, Conv="alpha-beta"),
                                              first="flat"),
}
RULE_NAMES = tuple(COMPOSITES)
_ALL_RULES = sorted({r for rules in KIND_RULES.values() for r in rules})


def _params(base: RuleParams, values: dict, where: str) -> RuleParams:
    known = {f.name for f in dataclasses.fields(RuleParams)} - {"patterns"}  # patterns come from a file
    values = dict(values)
    if "bounds" in values:
        bounds = values.pop("bounds")
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
            raise RelgraphError(f"{where}: bounds must be [LOW, HIGH]")
        values["low"], values["high"] = bounds
    unknown = set(values) - known
    if unknown:
        raise RelgraphError(f"{where}: unknown parameter(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(known))}, bounds)")
    for key, v in values.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if key in ("low", "high"):
            ok = ok or (isinstance(v, list) and all(isinstance(e, (int, float)) for e in v))
        if not ok:
            raise RelgraphError(f"{where}: parameter '{key}' must be a number, got {v!r}")
    params = dataclasses.replace(base, **values)
    check_params(params, where)
    return params


def check_params(p: RuleParams, where: str = "rule parameters") -> None:
    if p.epsilon < 0:
        raise RelgraphError(f"{where}: epsilon must be ≥ 0, got {p.epsilon}")
    if p.stabilizer <= 0:
        raise RelgraphError(f"{where}: stabilizer must be > 0, got {p.stabilizer}")
    if p.gamma < 0:
        raise RelgraphError(f"{where}: gamma must be ≥ 0, got {p.gamma}")
    if p.alpha < 0 or p.beta < 0 or abs(p.alpha - p.beta - 1.0) > 1e-9:
        raise RelgraphError(f"{where}: alpha and beta must be ≥ 0 with alpha − beta = 1, got {p.alpha}, {p.beta}")


def _choice(value, params: RuleParams, where: str):
    if isinstance(value, str):
        rule, extra = value, {}
    elif isinstance(value, dict) and isinstance(value.get("rule"), str):
        extra = {k: v for k, v in value.items() if k != "rule"}
        rule = value["rule"]
    else:
        raise RelgraphError(f"{where}: expected a rule name or {{rule = \"…\", …}}, got {value!r}")
    if rule not in _ALL_RULES:
        raise RelgraphError(f"{where}: unknown rule '{rule}' (known: {', '.join(_ALL_RULES)})")
    return Choice(rule, _params(params, extra, where)) if extra else rule


def resolve(rule: str, params: RuleParams) -> Composite:
    if rule not in COMPOSITES:
        raise RelgraphError(f"unknown rule '{rule}' (known: {', '.join(RULE_NAMES)})")
    check_params(params)
    composite = COMPOSITES[rule]()
    composite.params = params
    return composite


def load_rule_map(path, params: RuleParams) -> Composite:
    """Build a composite from a TOML rule map (format in the module docstring)."""
    where = f"rule map {path}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise RelgraphError(f"{where}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RelgraphError(f"{where}: not valid TOML ({exc})") from None
    unknown = set(data) - {"base", "first", "params", "op_types", "names"}
    if unknown:
        raise RelgraphError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                            "(known: base, first, params, op_types, names)")
    params = _params(params, data.get("params", {}), f"{where} [params]")
    base = data.get("base", "epsilon")
    if not isinstance(base, str) or base not in COMPOSITES:
        raise RelgraphError(f"{where}: base must be one of {', '.join(RULE_NAMES)}, got {base!r}")
    composite = resolve(base, params)
    composite.name = f"{base}+{path}"
    if "first" in data:
        composite.first = _choice(data["first"], params, f"{where} first")
    for table in ("op_types", "names"):
        if not isinstance(data.get(table, {}), dict):
            raise RelgraphError(f"{where}: [{table}] must be a table")

    for op, value in data.get("op_types", {}).items():
        if op not in RULES:
            raise RelgraphError(f"{where} [op_types]: unsupported op type '{op}'")
        composite.op_types[op] = _choice(value, params, f"{where} [op_types] {op}")
    composite.names = [(glob, _choice(v, params, f"{where} [names] {glob}"))
                       for glob, v in data.get("names", {}).items()] + composite.names
    return composite


def to_q_formulation(composite: Composite) -> Composite:
    """LRP-0 rephrased in Q = R/a (LRP read as back-propagation, README "Rules"): no division by z anywhere.

    The normalized rule becomes the gradient (Q_x = Q_z·Wᵀ), winner-takes-all max stays the gradient,
    the ignore rule for nonlinearities becomes the slope rule (Q_a = (f(a)/a)·Q_b), a gate's signal gets
    Q ⊙ gate. Q_out = 1, the input's relevance is x ⊙ Q_x, each bias gets ⟨b, Q_z⟩, and Σ a·Q is conserved.
    Only LRP-0-like composites have a Q form: ε is dropped (it exists only to guard the division).
    """
    lrp0 = {AFFINE: ("zero", "epsilon", "normalized"), LINEAR: ("zero", "norm", "epsilon", "normalized"),
            SCALE: ("zero", "norm", "epsilon", "normalized"), MAX: ("gradient",), ACTIVATION: ("pass", "ignore"),
            PRODUCT: ("gate",), BILINEAR: ("uniform",), SOFTMAX: ("taylor",), STRUCTURAL: ("gradient",)}
    bad = [f"{kind}: {rule}" for kind, rule in composite.kinds.items() if rule not in lrp0[kind]]
    bad += [f"{op}: {r if isinstance(r, str) else r.rule}" for op, r in composite.op_types.items()]
    bad += [f"{g}: {r if isinstance(r, str) else r.rule}" for g, r in composite.names]
    if composite.first is not None:
        bad.append("first layer")
    if bad or composite.output_init != "logit":
        raise RelgraphError(f"--formulation q rephrases LRP-0 (rule 'zero', 'epsilon' or 'lrp'); "
                            f"'{composite.name}' uses other rules ({', '.join(bad) or 'gradient output'})")
    q = {AFFINE: "gradient", LINEAR: "gradient", SCALE: "gradient", MAX: "gradient", ACTIVATION: "slope",
         PRODUCT: "gate", BILINEAR: "uniform", SOFTMAX: "taylor", STRUCTURAL: "gradient"}
    return Composite(f"{composite.name}-q", q, output_init="one", multiply_input=True, params=composite.params,
                     formulation="q")
