"""Build the reverse relevance graph next to the forward graph.

Contract. Input: a canonical model (shapes inferred, biases as explicit inputs) and a composite.
Output: the same model with one more input, ``target`` (int64 [N], −1 = the predicted class), and
more outputs: ``relevance`` (the explained input's shape; [N, S] for token ids, one value per token),
``bias_relevance`` ([N]), optionally one ``bias_relevance/<layer>`` per bias-carrying layer and
``relevance_embedding`` ([N, S, D], token models), and ``logits`` when the model's output is a softmax or a
sequence ([N, S, V], explained at one position).

The explained value x is the model's input, or a token model's embedding lookup output. Values on the path from
x to the logits carry relevance; every other input of a node on it is a constant for the explanation (a model
constant, or a *run-time constant* such as an attention mask: ``relgraph.graph.is_fixed``), and biases are the
constants an activation is added to.

The walk: nodes between the explained input and the logits, in reverse topological order. Each node's
rule (chosen by the composite) receives the relevance summed over its outputs' consumers and returns
one relevance per input — the walker asserts it (as tinygrad's does). Every node without a rule is
reported before anything is emitted, all of them at once.

Relevance at the output starts as the target logit, R_out = f_c(x) (Bach et al. 2015), or as 1 for
the gradient family, so that ``gradient`` is exactly ∂f_c/∂x.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..errors import RelgraphError, UnsupportedOpsError
from ..graph import FIXED, Builder, attr, const_array, dims, is_fixed
from ..progress import Progress
from ..rules import RULES, Env, kind_of, supported_ops
from .layout import batch_layouts, layout_of
from .shapes import EXPORT_BATCH
from ..rules.composites import Composite
from ..rules.registry import (AFFINE, CHECKS, NONNEGATIVE, PRESERVES, Share, rule_epsilon, rule_for,
                              sign_of)

OUTPUT_OPS = ("Softmax", "LogSoftmax")

@dataclass
class Relevance:
    """What the relevance pass decided and built: the rule of each node, the trace of relevance values, the
    model-local functions called (for the CLI's summary, ``relgraph check`` and the explainer's metadata)."""

    input: ir.Value
    logits: ir.Value
    nodes: list
    choices: dict = field(default_factory=dict)     # node name → rule name
    first_layers: set = field(default_factory=set)
    trace: list = field(default_factory=list)       # per node: relevance value names in and out, bias
    functions: list = field(default_factory=list)   # model-local functions the relevance graph calls
    logits_output: str = ""                         # the graph output that carries the logits
    tokens: ir.Value | None = None                  # the token ids input, when x is their embedding

    @property
    def fed(self) -> ir.Value:
        """The graph input the explanation is of: x itself, or the token ids x is the embedding of."""
        return self.tokens if self.tokens is not None else self.input

    def rules(self) -> dict:
        return {name: choice.rule for name, choice in self.choices.items()}


def explained_values(model: ir.Model, input_name: str | None = None, position=-1):
    """(x, logits): the value explained and the [N, C] logits it is explained for.

    x is the model's (first, or named) input, or, for a model fed integer token ids, the output of the
    embedding lookup ``Gather(E, ids)`` that reads them (:func:`token_ids` finds the ids again). Logits of a
    sequence model, [N, S, V], are explained at one ``position`` along S (−1: the last): a Gather picking it
    is appended to the graph.
    """
    graph = model.graph
    inputs = [v for v in graph.inputs if not v.is_initializer()]
    if input_name:
        inputs = [v for v in inputs if v.name == input_name]
        if not inputs:
            raise RelgraphError(f"model has no input named '{input_name}'")
    if not inputs:
        raise RelgraphError("model has no inputs")
    x = inputs[0]
    if x.dtype is not None and x.dtype.is_integer():
        x = _token_embedding(x)
    if not graph.outputs:
        raise RelgraphError("model has no outputs")
    out = graph.outputs[0]
    producer = out.producer()
    logits = producer.inputs[0] if producer is not None and producer.op_type in OUTPUT_OPS else out
    if logits.shape is not None and len(logits.shape) == 3:
        logits = _at_position(graph, logits, position)
    if logits.shape is None or len(logits.shape) != 2:
        raise RelgraphError(f"the explained output '{logits.name}' must have shape [batch, classes] or "
                            f"[batch, sequence, vocabulary], got {None if logits.shape is None else list(logits.shape)}")
    if not isinstance(logits.shape[1], int):
        raise RelgraphError(f"the number of classes of '{logits.name}' is not static")
    return x, logits


def _token_embedding(ids: ir.Value) -> ir.Value:
    """The output of the embedding lookup Gather(E, ids), E a constant table: what a token model is explained at."""
    lookups = [u.node for u in ids.uses() if u.node.op_type == "Gather" and u.idx == 1
               and const_array(u.node.inputs[0]) is not None and attr(u.node, "axis", 0) == 0]
    if len(lookups) != 1:
        raise RelgraphError(f"input '{ids.name}' holds integers ({ids.dtype}); relgraph explains float inputs, or "
                            f"token ids read by one embedding lookup (Gather from a constant table), and "
                            f"'{ids.name}' feeds {len(lookups)} such lookups")
    return lookups[0].outputs[0]


def token_ids(x: ir.Value) -> ir.Value | None:
    """The integer graph input x was looked up from, when x is a token embedding."""
    node = x.producer()
    if node is None or node.op_type != "Gather" or not node.inputs[1].is_graph_input():
        return None
    return node.inputs[1]


def _at_position(graph: ir.Graph, logits: ir.Value, position) -> ir.Value:
    """logits[:, position, :] as a new value (a Gather appended to the graph)."""
    length = logits.shape[1]
    if not isinstance(position, int) or (isinstance(length, int) and not -length <= position < length):
        raise RelgraphError(f"--position must be 'last' or a position in 0..{length - 1 if isinstance(length, int) else 'S-1'}"
                            f" of the output '{logits.name}' [N, S, V], got {position}")
    index = ir.Value(name=f"{logits.name}.position", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(np.array(position, np.int64)))
    graph.register_initializer(index)
    node = ir.node("Gather", [logits, index], attributes={"axis": 1}, name=f"{logits.name}.at_position")
    graph.append(node)
    picked = node.outputs[0]
    picked.name = f"{logits.name}.at_position"
    picked.shape, picked.type = ir.Shape([logits.shape[0], logits.shape[2]]), logits.type
    return picked


def relevance_nodes(graph: ir.Graph, x: ir.Value, logits: ir.Value) -> list[ir.Node]:
    """Nodes on some path from x to the logits, in topological order.

    Relevance flows through floating-point values only: a Shape of an activation, a comparison or a cast to
    integers ends the path (shapes, masks and indices carry no relevance, whatever they compute). Every
    other input of the nodes on the path is a run-time constant, and is marked so (``is_fixed``).
    """
    forward: set[int] = {id(x)}
    reached = []
    for node in graph:
        if any(v is not None and id(v) in forward for v in node.inputs):
            floats = [o for o in node.outputs if o.dtype is None or o.dtype.is_floating_point()]
            if floats:
                forward.update(id(o) for o in floats)
                reached.append(node)
    backward = {id(logits)}
    on_path = []
    for node in reversed(reached):
        if any(id(o) in backward for o in node.outputs):
            backward.update(id(v) for v in node.inputs if v is not None)
            on_path.append(node)
    on_path.reverse()
    if id(x) not in backward:
        raise RelgraphError(f"the output '{logits.name}' does not depend on the input '{x.name}'")
    for node in on_path:
        for v in node.inputs:
            if v is not None and id(v) not in forward:
                v.meta[FIXED] = True
    return on_path


def unfolded_shape(node: ir.Node) -> str:
    """Why a Shape node is left on the relevance path: the nodes whose shape operand it computes at run time."""
    sized, stack, seen = [], list(node.outputs), set()
    while stack:
        v = stack.pop()
        for use in v.uses():
            user = use.node
            if use.idx > 0 and user.op_type in ("Reshape", "Expand", "Tile", "Slice", "Pad", "ConstantOfShape"):
                sized.append(f"{user.op_type} '{user.name}'")
            elif id(user) not in seen:
                seen.add(id(user))
                stack.extend(user.outputs)
    what = ", ".join(sorted(set(sized))) or "a node"
    return f"the shape operand of {what} did not fold to a constant: dynamic dimensions? --input-shape fixes them"


def unsupported(node: ir.Node) -> str | None:
    """Why no rule covers ``node`` ("" when its op has none and nothing more is known), or None when one does:
    an op without rules, or a node its op's check refuses (an attribute, a non-constant weight)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in RULES:
        return "only at the model output" if node.op_type in OUTPUT_OPS else \
            unfolded_shape(node) if node.op_type == "Shape" else ""
    check = CHECKS.get(node.op_type)
    return check(node) if check else None


def validate(nodes: list[ir.Node]) -> None:
    """Every node covered, or one error that lists every node that is not, with the supported ops."""
    problems = [(node.op_type, node.name, why) for node in nodes if (why := unsupported(node)) is not None]
    if problems:
        raise UnsupportedOpsError(problems, supported_ops())


def choose_rule(node: ir.Node, composite: Composite, first: bool):
    """(the composite's ``Choice`` for ``node``, None) when the rule can run there, else (None or the
    choice, why not)."""
    try:
        choice = composite.choose(node, kind_of(node), first)
    except RelgraphError as exc:
        return None, str(exc)
    why = rule_for(node, choice.rule).problem(node, choice.params)
    return choice, why and f"rule '{choice.rule}' for {node.op_type} '{node.name}': {why}"


def choose_rules(nodes: list[ir.Node], composite: Composite, firsts: set[str]) -> dict:
    """Node name → the composite's ``Choice``, once every chosen rule is known to run on its node (its kind,
    and what its record ``requires``: bounds, a fitted pattern); otherwise one error that names every node."""
    choices, problems = {}, []
    for node in nodes:
        choices[node.name], why = choose_rule(node, composite, node.name in firsts)
        if why:
            problems.append(why)
    if problems:
        raise RelgraphError("; ".join(problems))
    return choices


def nonnegative_values(graph: ir.Graph) -> set[int]:
    """Values proven ≥ 0 by a forward sweep over the ops' declared signs (``relgraph.rules.registry.SIGNS``):
    ReLU outputs, pools and reshapes of them, non-negative constants, …"""
    proven: set[int] = set()
    for v in graph.initializers.values():
        arr = const_array(v)
        if arr is not None and arr.dtype.kind == "f" and np.all(arr >= 0):
            proven.add(id(v))
    for node in graph:
        sign = sign_of(node)
        if sign == PRESERVES:
            # the values among the operands decide; shape, index and condition operands do not
            values = [v for v in node.inputs if v is not None and (v.dtype is None or v.dtype.is_floating_point())]
            ok = bool(values) and all(id(v) in proven for v in values)
        else:
            ok = sign == NONNEGATIVE
        if ok:
            proven.update(id(o) for o in node.outputs)
    return proven


def first_layers(nodes: list[ir.Node], x: ir.Value) -> set[str]:
    """Affine nodes that read the input with no other affine node in between."""
    before_affine = {id(x)}
    first = set()
    for node in nodes:
        if not any(v is not None and id(v) in before_affine for v in node.inputs):
            continue
        if kind_of(node) == AFFINE:
            first.add(node.name)
        else:
            before_affine.update(id(o) for o in node.outputs)
    return first


def vanishing_values(nodes, choices: dict, logits: ir.Value, composite: Composite) -> set[int]:
    """Values whose relevance is zero wherever the value is zero, under the chosen rules.

    R_out = onehot ⊙ logits vanishes with the logit; a rule that multiplies by its input (``Rule.multiplies_input``:
    ε, z⁺, αβ, γ, sums, pooling) gives a value relevance that vanishes with it; a rule that moves relevance
    (``Rule.keeps_zeros``: reshapes, max pooling's winner routing, a pass through f with f(0) = 0) keeps the
    property of its outputs.
    A value has the property when every consumer on the relevance path gives it.
    """
    if composite.output_init != "logit" or composite.formulation != "r" or composite.baseline is not None:
        return set()
    consumers: dict[int, list] = {}
    for node in nodes:
        for v in node.inputs:
            if v is not None:
                consumers.setdefault(id(v), []).append(node)
    vanish = {id(logits)}

    def keeps_zero(consumer) -> bool:
        rule = rule_for(consumer, choices[consumer.name].rule)
        return rule.multiplies_input or (
            rule.keeps_zeros and all(id(o) in vanish for o in consumer.outputs if o.uses()))

    for node in reversed(nodes):
        for out in node.outputs:
            users = consumers.get(id(out), [])
            if id(out) not in vanish and users and not out.is_graph_output() and all(map(keeps_zero, users)):
                vanish.add(id(out))
    return vanish


def rectified_outputs(nodes, choices: dict, vanish: set[int]) -> dict[str, ir.Value]:
    """Node → the ReLU output y = max(z, 0) of its output z, where R_z is proven zero wherever z ≤ 0.

    That holds when z's only consumer on the relevance path is a ReLU that passes relevance unchanged and
    y's relevance vanishes wherever y = 0: the ε denominator stab(z) may then be read as y + ε.
    """
    on_path = {id(n) for n in nodes}
    out = {}
    for node in nodes:
        if not rule_for(node, choices[node.name].rule).stabilized or len(node.outputs) != 1:
            continue
        z = node.outputs[0]
        users = [u.node for u in z.uses() if id(u.node) in on_path]
        if len(users) != 1 or z.is_graph_output():
            continue
        relu = users[0]
        if relu.op_type == "Relu" and choices[relu.name].rule in ("pass", "ignore") and id(relu.outputs[0]) in vanish:
            out[node.name] = relu.outputs[0]
    return out


def sharing_values(nodes, choices: dict) -> set[int]:
    """Values v whose relevance may arrive as a ``Share`` (R_v = v ⊙ q, q handed over alone).

    v is the one output of an affine layer under ε (ε > 0), not a graph output, and its only consumer on
    the relevance path is an Add under an ε-family rule: when that Add is a residual sum, its split hands v
    the share q, and the layer's ε step divides q ⊙ v by stab(v) without testing v's sign.
    """
    on_path = {id(n) for n in nodes}
    out = set()
    for node in nodes:
        choice = choices[node.name]
        if kind_of(node) != AFFINE or not rule_for(node, choice.rule).stabilized \
                or rule_epsilon(choice.rule, choice.params) <= 0 or len(node.outputs) != 1 \
                or node.outputs[0].is_graph_output():
            continue
        users = [u.node for u in node.outputs[0].uses() if id(u.node) in on_path]
        if len(users) == 1 and users[0].op_type == "Add" and rule_for(users[0], choices[users[0].name].rule).stabilized:
            out.add(id(node.outputs[0]))
    return out


def build_relevance(model: ir.Model, composite: Composite, *, input_name: str | None = None,
                    per_layer_bias: bool = False, residual_shares: bool = True, position=-1,
                    embedding_relevance: bool = False) -> Relevance:
    """The relevance graph for ``composite``. ``residual_shares``: let residual sums hand ε layers their
    share unmultiplied (``Share``; fewer ops on onnxruntime, while the triton target fuses the sign test
    of stab(z) into its kernels and keeps the ``relgraph.EpsilonSum`` calls).

    A token model (integer ids in) is explained at its embedding lookup's output [N, S, D]: ``relevance`` is
    then [N, S], one value per token (the sum over D), and ``embedding_relevance`` adds the [N, S, D] values
    as ``relevance_embedding``. ``position``: where sequence logits [N, S, V] are explained (−1: the last).
    """
    graph = model.graph
    x, logits = explained_values(model, input_name, position)
    tokens = token_ids(x)
    if tokens is not None and composite.baseline is not None:
        raise RelgraphError(f"rule '{composite.name}' compares to a baseline input; a token model's input "
                            f"'{tokens.name}' holds ids, which have no baseline")
    if x.dtype != ir.DataType.FLOAT:
        raise RelgraphError(f"input '{x.name}' has type {x.dtype}; relgraph explains float32 models")
    nodes = relevance_nodes(graph, x, logits)
    validate(nodes)
    walk = Relevance(x, logits, nodes, first_layers=first_layers(nodes, x), tokens=tokens)
    walk.choices = choose_rules(nodes, composite, walk.first_layers)

    rectified = rectified_outputs(nodes, walk.choices, vanishing_values(nodes, walk.choices, logits, composite))
    sharing = sharing_values(nodes, walk.choices) if residual_shares else set()
    b = Builder(graph)
    proven = nonnegative_values(graph)
    reference = _baseline_forward(b, graph, nodes, x, composite.baseline) if composite.baseline is not None else {}
    R_out, target = _output_relevance(b, graph, logits, composite.output_init)

    contributions: dict[int, list] = {id(logits): [R_out]}
    biases: list = []
    layouts = batch_layouts(nodes, x, graph.meta.get(EXPORT_BATCH))
    b.explained = x
    bar = Progress(len(nodes), "relevance graph", min_total=150)  # big models only: small ones take no time
    for node in reversed(nodes):
        bar.update()
        incoming = [contributions.pop(id(o), None) for o in node.outputs]
        shared = len(incoming) == 1 and incoming[0] is not None and len(incoming[0]) == 1 \
            and isinstance(incoming[0][0], Share)
        if shared:
            Rs = [incoming[0][0].q]
        else:
            Rs = [_sum(b, R) for R in incoming]
        if all(R is None for R in Rs):
            continue
        choice = walk.choices[node.name]
        b.prefix = f"relevance/{node.name}"
        b.layout = layout_of(node.outputs[0], layouts, x)
        env = Env(b, node, Rs, choice.rule, choice.params, lambda v: id(v) in proven,
                  first_layer=node.name in walk.first_layers, formulation=composite.formulation,
                  baseline=lambda v: reference.get(id(v)), rectified=rectified.get(node.name), shared=shared,
                  absorbs=lambda v: id(v) in sharing,
                  conserving=composite.output_init == "logit" and composite.formulation == "r")
        result = rule_for(node, choice.rule).fn(env)
        assert len(result) == len(node.inputs) or (len(result) == len(node.inputs) + 1 and result[-1] is not None), \
            f"rule {choice.rule} for {node.op_type} returned {len(result)} relevances for {len(node.inputs)} inputs"
        # blame the bias: what flows into a constant input (a bias, a run-time constant added in; one value per
        # sample) and into the constant-one input an op implies (an extra last entry) is bias relevance
        node_bias = result[len(node.inputs):]
        for v, R in zip(node.inputs, result):
            if R is None or v is None:
                continue
            if is_fixed(v):
                node_bias.append(R)
            else:
                contributions.setdefault(id(v), []).append(R)
        b.layout = None
        bias = _sum(b, node_bias)
        if bias is not None:
            biases.append((node, bias))
        walk.trace.append({
            "node": node.name, "op": node.op_type, "rule": choice.rule,
            "out": [_traced(incoming[0][0])] if shared else [_traced(R) for R in Rs],
            "in": [_traced(R) for v, R in zip(node.inputs, result) if v is not None and not is_fixed(v)],
            "bias": bias.name if bias is not None else None,
        })

    bar.close()
    b.prefix = "relevance/output"
    relevance = _sum(b, contributions.pop(id(x), None))
    if relevance is None:
        raise RelgraphError(f"no relevance reaches the input '{x.name}'")
    if composite.multiply_input:
        factor = b.op("Sub", x, reference[id(x)]) if composite.baseline is not None else x
        relevance = b.op("Mul", factor, relevance)
    total_bias = _sum(b, [v for _, v in biases]) or b.op("Mul", b.op("Cast", target, to=ir.DataType.FLOAT),
                                                          b.scalar(0.0))
    if tokens is not None:  # one value per token: the sum over the embedding's features
        if embedding_relevance:
            _add_output(graph, b.op("Identity", relevance), "relevance_embedding", x.shape)
        relevance = b.op("ReduceSum", relevance, b.ints([-1]), keepdims=0)
        _add_output(graph, relevance, "relevance", ir.Shape(list(x.shape)[:2]))
    else:
        _add_output(graph, b.op("Identity", relevance), "relevance", x.shape)
    _add_output(graph, b.op("Identity", total_bias), "bias_relevance", ir.Shape([x.shape[0]]))
    if per_layer_bias:
        for node, v in biases:
            _add_output(graph, b.op("Identity", v), f"bias_relevance/{node.name}", ir.Shape([x.shape[0]]))
    if logits.is_graph_output():
        walk.logits_output = logits.name
    else:
        walk.logits_output = _free_name(graph, "logits")
        _add_output(graph, b.op("Identity", logits), walk.logits_output, logits.shape)
    model.metadata_props["relgraph.trace"] = json.dumps(walk.trace)
    walk.functions = sorted(b.functions)
    return walk


BASELINE_ROWS = "baseline_rows"  # the baseline path's batch: 1, or the explained batch


def _baseline_forward(b: Builder, graph: ir.Graph, nodes, x: ir.Value, baseline) -> dict:
    """A second copy of the forward path fed by the input ``baseline`` (default: the given array).

    Returns value → its baseline counterpart, for the compare-to-baseline rules (DeepLIFT).
    """
    default = np.zeros([1, *[d or 1 for d in dims(x)[1:]]], np.float32) if isinstance(baseline, str) \
        else np.asarray(baseline, np.float32)
    if default.ndim == len(x.shape) - 1:
        default = default[None]
    if list(default.shape[1:]) != dims(x)[1:]:
        raise RelgraphError(f"baseline has shape {list(default.shape)}, the input '{x.name}' is "
                            f"[N, {', '.join(map(str, dims(x)[1:]))}]")
    x_bar = b.const(default, name="baseline")
    # an input with a default: callers may pass their own, one for all samples or one per sample, so the
    # baseline path has a batch of its own
    rows = x.shape[0]
    x_bar.shape = ir.Shape([BASELINE_ROWS, *default.shape[1:]])
    graph.inputs.append(x_bar)
    mapping = {id(x): x_bar}
    b.prefix = "baseline"
    for node in nodes:
        inputs = [mapping.get(id(v), v) if v is not None else None for v in node.inputs]
        attributes = {name: a.value for name, a in node.attributes.items()}
        outs = b.op(node.op_type, *inputs, outputs=len(node.outputs), **attributes)
        for old, new in zip(node.outputs, outs if isinstance(outs, tuple) else (outs,)):
            mapping[id(old)] = new
            new.type = old.type
            new.shape = ir.Shape([BASELINE_ROWS, *list(old.shape)[1:]]) \
                if old.shape is not None and len(old.shape) and old.shape[0] == rows else old.shape
    return mapping


def _output_relevance(b: Builder, graph: ir.Graph, logits: ir.Value, init: str):
    """R_out = onehot(target) ⊙ logits (or onehot alone); target −1 picks the arg-max."""
    target = ir.Value(name="target", shape=ir.Shape([logits.shape[0]]), type=ir.TensorType(ir.DataType.INT64))
    graph.inputs.append(target)
    b.prefix = "relevance/output"
    classes = dims(logits)[1]
    predicted = b.op("ArgMax", logits, axis=1, keepdims=0)
    chosen = b.op("Where", b.op("Less", target, b.const(np.array(0, np.int64))), predicted, target)
    hit = b.op("Equal", b.op("Unsqueeze", chosen, b.ints([1])), b.const(np.arange(classes, dtype=np.int64)[None]))
    onehot = b.op("Cast", hit, to=ir.DataType.FLOAT)
    return (b.op("Mul", onehot, logits) if init == "logit" else onehot), target


def _traced(R):
    """A relevance value's name for the trace; a ``Share`` as [v, q] (R = v ⊙ q, not a value of its own)."""
    if isinstance(R, Share):
        return [R.value.name, R.q.name]
    return None if R is None else R.name


def _sum(b: Builder, values):
    return b.total(b.op("Mul", R.value, R.q) if isinstance(R, Share) else R for R in values or ())


def _free_name(graph: ir.Graph, name: str) -> str:
    taken = {v.name for v in graph.outputs} | {v.name for v in graph.inputs}
    return name if name not in taken else f"relgraph_{name}"


def _add_output(graph: ir.Graph, value: ir.Value, name: str, shape) -> None:
    _claim_name(graph, name)
    value.name = name
    value.shape = shape
    value.type = ir.TensorType(ir.DataType.FLOAT)
    graph.outputs.append(value)


def _claim_name(graph: ir.Graph, name: str) -> None:
    """Free ``name`` for an explainer output: a model's inner value of that name (a softmax input called
    'logits', say) is renamed; only the graph's inputs and outputs are names the user relies on."""
    values = [v for node in graph for v in node.outputs] + list(graph.initializers.values())
    taken = {v.name for v in values} | {v.name for v in graph.inputs}
    for v in values:
        if v.name == name and not v.is_graph_output():
            fresh, k = f"{name}.inner", 1
            while fresh in taken:
                fresh, k = f"{name}.inner{k}", k + 1
            if v.name in graph.initializers:
                graph.initializers.pop(v.name)
                v.name = fresh
                graph.register_initializer(v)
            else:
                v.name = fresh
            taken.add(fresh)
