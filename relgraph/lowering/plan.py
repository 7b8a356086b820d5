"""Lowering: a compiled ONNX explainer → a launch plan of Triton kernel calls and torch ops.

The explainer, read into onnx_ir, is the IR. The relevance calls a kernel covers are rewritten by onnxscript
rules (:mod:`relgraph.lowering.rewrites`), then lowering walks the nodes in order into steps:

- the ε step, a call of the model-local function ``relgraph.Epsilon{Gemm,MatMul,Conv,ConvUnitStride}``
  (x, W, den, R) → (R_x, s), becomes one ``epsilon_linear`` / ``epsilon_conv2d`` launch. How ``den`` was
  made decides the kernel's mode, so the stabilizer runs while the R tile is loaded and its elementwise
  ops die: ``Add(z, Where(GreaterOrEqual(z, 0), ε, −ε))`` → mode ``stab`` on z, ``Add(y, ε)`` → mode
  ``shift`` on y (exact for any y: d = y + ε), anything else → mode ``den``. ``s`` is written only when
  something reads it (the bias share ⟨b, s⟩);
- a γ or αβ layer, a call ``relgraph.{Gamma,AlphaBeta}{Gemm,Conv}…`` (x, W, b⁺, b⁻, [z,] R) →
  (R_x, s_a, s_b), becomes two launches that each read x and W once: the split forward
  ``lrp_parts_*`` (z_pos, z_neg) and the push-back ``lrp_parts_*_back``, which writes s_a and s_b only
  when something reads them (the bias share);
- max pooling's route, a call ``relgraph.MaxPoolRoute`` (x, R) → R_x of a 2-d pool, becomes one
  ``maxpool2d_back`` launch that re-finds each window's winner from x; the forward MaxPool then runs
  without its indices output;
- a residual sum's ε split, a call ``relgraph.EpsilonSum`` (a, b, den, R) → (R_a, R_b), becomes one
  ``epsilon_sum`` launch, its stabilizer fused as in the ε step;
- a forward Conv (2-d) or Gemm / MatMul with constant weights becomes ``conv2d`` / ``linear``, with
  the bias and a following Relu in the epilogue, and ``keep_z`` when z is still read after the Relu;
- everything else runs as a torch op (:data:`relgraph.lowering.torch_ops.TORCH_OPS`); other model-local
  functions, and ε calls a kernel cannot take, are inlined into torch ops.

Steps whose inputs are all constants (weight rewrites such as the flipped kernels of stride-1
transposes) form the *prelude*, run once when the plan is loaded. Each step lists the values that
die after it, so an executor can free them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from ..errors import RelgraphError
from ..files import replacing
from ..rules.functions import DOMAIN, FUNCTIONS
from ..weights import skeleton_proto
from .rewrites import CALL, FLAGS, KERNEL_DOMAIN, kernel_rules, misfit, rank, unfit_operand

FORMAT = "relgraph.plan/1"
# a kernel op is a family with autotune configurations; the file is read as data, so plans load without triton
KERNEL_OPS = tuple(k for k in json.loads((Path(__file__).parents[1] / "kernels" / "configs.json").read_text())
                   if not k.startswith("_"))
REQUIRED = ("kind", "op", "inputs", "outputs")  # the fields of a Step without a default


@dataclass
class Step:
    """One launch: a Triton kernel (``kind="kernel"``, ``op`` a kernel op of :mod:`kernels`) or a torch op
    (``kind="torch"``, ``op`` an ONNX op type).

    ``attrs``: the ONNX attributes (torch) or the kernel's runtime arguments (geometry, ε). ``flags``: the
    kernel's constexpr switches, which with ``dtype`` name the compiled specialization. ``inputs`` may hold
    "" for an absent optional input. ``nodes``: the explainer nodes the step replaces. ``free``: values
    no later step reads. ``why``: for a torch step, why no kernel runs it.
    """

    kind: str
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    dtype: str | None = None
    nodes: list = field(default_factory=list)
    free: list = field(default_factory=list)
    domain: str = ""
    why: str = ""

    def to_json(self) -> dict:
        # the fields without a default stay even when empty: a Constant step has no inputs
        out = {k: v for k, v in asdict(self).items() if k in REQUIRED or v not in ({}, [], None, "")}
        out["attrs"] = {k: _encode(v) for k, v in self.attrs.items()}
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Step":
        d = dict(d)
        d["attrs"] = {k: _decode(v) for k, v in d.get("attrs", {}).items()}
        return cls(**d)

    def describe(self) -> str:
        if self.kind == "kernel":
            flags = ", ".join(f"{k}={v}" for k, v in self.flags.items())
            return f"kernel {self.op}[{self.dtype}]({flags})"
        return f"torch {self.op}"


@dataclass
class Plan:
    """A lowered explainer: per-call ``steps`` after a once-only ``prelude``.

    ``inputs`` are fed per call (the explainer's inputs; those with a default in ``constants`` may be
    overridden), ``constants`` are initializers read from the explainer ONNX file, ``outputs`` are the
    explainer's outputs, same names and order.
    """

    inputs: list
    outputs: list
    constants: list
    prelude: list
    steps: list
    metadata: dict = field(default_factory=dict)
    dtype: str = "fp32"

    def kernel_steps(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "kernel"]

    def specializations(self) -> list[dict]:
        """The kernel specializations the plan launches: one entry per (op, dtype, flags)."""
        seen, out = set(), []
        for s in self.kernel_steps():
            key = (s.op, s.dtype, tuple(sorted(s.flags.items())))
            if key not in seen:
                seen.add(key)
                out.append({"op": s.op, "dtype": s.dtype, "flags": dict(s.flags)})
        return out

    def to_json(self) -> dict:
        return {"format": FORMAT, "dtype": self.dtype, "inputs": self.inputs, "outputs": self.outputs,
                "constants": self.constants, "specializations": self.specializations(),
                "metadata": self.metadata, "prelude": [s.to_json() for s in self.prelude],
                "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        if d.get("format") != FORMAT:
            raise RelgraphError(f"not a relgraph launch plan (format {d.get('format')!r}, expected {FORMAT!r})")
        plan = cls(d["inputs"], d["outputs"], d["constants"], [Step.from_json(s) for s in d["prelude"]],
                   [Step.from_json(s) for s in d["steps"]], d.get("metadata", {}), d.get("dtype", "fp32"))
        unknown = sorted({s.op for s in plan.kernel_steps()} - set(KERNEL_OPS))
        if unknown:
            raise RelgraphError(f"the launch plan calls unknown kernel op(s) {', '.join(unknown)}; "
                                f"kernel ops are {', '.join(KERNEL_OPS)}")
        return plan

    def save(self, path) -> None:
        with replacing(path) as temporary, open(temporary, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise RelgraphError(f"cannot read launch plan {path}: {exc}") from None
        try:
            return cls.from_json(data)
        except (KeyError, TypeError) as exc:
            raise RelgraphError(f"launch plan {path} is malformed ({exc}); lower the explainer again") from None


# ------------------------------------------------------------------------------------------- attributes


def _encode(v):
    """JSON form of an attribute value: tensors as {dtype, shape, values}."""
    if isinstance(v, np.ndarray):
        return {"tensor": {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.reshape(-1).tolist()}}
    return v


def _decode(v):
    if isinstance(v, dict) and "tensor" in v:
        t = v["tensor"]
        return np.asarray(t["values"], dtype=t["dtype"]).reshape(t["shape"])
    return v


def _attribute(a: ir.Attr):
    """The plain Python value of an attribute (lists, str, numpy arrays for tensors)."""
    if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise RelgraphError(f"attribute '{a.name}' holds a subgraph; control flow cannot be lowered")
    if a.type == ir.AttributeType.TENSOR:
        return a.as_tensor().numpy()
    if a.type == ir.AttributeType.TENSORS:
        return [t.numpy() for t in a.as_tensors()]
    if a.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(a.value)
    return a.value


def _names(values) -> list[str]:
    return [v.name if v is not None else "" for v in values]


def _step(node: ir.Node, attrs: dict | None = None) -> Step:
    return Step("torch", node.op_type, _names(node.inputs), _names(node.outputs),
                attrs if attrs is not None else {k: _attribute(a) for k, a in node.attributes.items()},
                nodes=[node.name or ""], domain=node.domain if node.domain not in ("", "ai.onnx") else "")


def _kernel_step(node: ir.Node) -> Step:
    """A ``relgraph.kernel`` node (:mod:`relgraph.lowering.rewrites`) as a kernel step: its attributes split
    into the kernel's constexpr flags and its runtime arguments."""
    attrs = {k: _attribute(a) for k, a in node.attributes.items()}
    call = attrs.pop(CALL)
    flags = {k: attrs.pop(k) for k in FLAGS if k in attrs}
    flags = {k: v if k in ("mode", "rule") else bool(v) for k, v in flags.items()}
    return Step("kernel", node.op_type, _names(node.inputs), _names(node.outputs), attrs, flags, nodes=[call])


# ------------------------------------------------------------------------------------------- the graph


def _read(proto: onnx.ModelProto) -> ir.Model:
    """The explainer in onnx_ir, every value typed: ranks decide what a kernel can take, and without them every
    layer would quietly stay a torch op, so a failed shape inference is an error (onnx_ir's ShapeInferencePass
    would log it and go on: hence the strict call here). Inference reads a skeleton (the weights set aside,
    :mod:`relgraph.weights`): no copy of the weights, and no 2 GiB protobuf limit."""
    model = ir.serde.deserialize_model(proto)
    skeleton, _ = skeleton_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True)
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        raise RelgraphError(f"lowering: ONNX shape inference failed on the explainer: "
                            f"{str(exc).strip().splitlines()[0]}") from exc
    values = {v.name: v for n in model.graph for v in n.outputs if v is not None}
    values.update({v.name: v for v in [*model.graph.inputs, *model.graph.outputs]})
    g = inferred.graph
    for info in [*g.value_info, *g.input, *g.output]:
        value = values.get(info.name)
        typed = ir.serde.deserialize_value_info_proto(info, None)
        if value is not None and typed.shape is not None:
            value.shape, value.type = typed.shape, typed.type
    return model


class _Graph:
    """The working list of steps with what lowering asks of it: producers, readers, constants, ranks.

    Built from the explainer after :func:`relgraph.lowering.rewrites.kernel_rules` turned the relevance calls
    that fit a kernel into kernel nodes; every other call of a model-local function is inlined, with the
    reason it is not a kernel."""

    def __init__(self, model: ir.Model):
        g = model.graph
        self.values = {v.name: v for v in [*g.inputs, *g.outputs, *g.initializers.values()]}
        self.values.update({v.name: v for n in g for v in n.outputs if v is not None})
        self.initializers = dict(g.initializers)
        self.inputs = [v.name for v in g.inputs]
        self.outputs = [v.name for v in g.outputs]
        self.functions = {(f.domain, f.name): f for f in model.functions.values()}
        self.ranks = {name: rank(v) for name, v in self.values.items() if rank(v) is not None}
        self.steps = [t for n in g for t in self._expand(n)]

    def _expand(self, node: ir.Node) -> list[Step]:
        if node.domain == KERNEL_DOMAIN:
            return [_kernel_step(node)]
        steps = [_step(node)]
        if node.domain in ("", "ai.onnx"):
            return steps
        function = FUNCTIONS.get(node.op_type) if node.domain == DOMAIN else None
        why = misfit(node, function) if function else None
        if function and why is None:  # it fits, so a rule should have taken it: never fall back in silence
            raise RelgraphError(f"lowering: {node.op_type} call '{node.name}' fits {function.kernel} but no "
                                f"rewrite matched it")
        return self._inlined(steps[0], why and f"{node.op_type} not fused into {function.kernel}: {why}")

    def _inlined(self, call: Step, why: str | None) -> list[Step]:
        """The call's function body (expanded in turn: a body may call another function), each step saying
        why the call is not a kernel; an op of an unknown domain stays, for the coverage check to report."""
        fn = self.functions.get((call.domain, call.op))
        if fn is None:
            return [call]
        out = []
        for step in _inline(call, fn):
            inner = self._inlined(step, why) if step.domain else [step]
            for t in inner:
                t.why = t.why or why or ""
            out += inner
        return out

    def producers(self) -> dict:
        return {o: s for s in self.steps for o in s.outputs if o}

    def readers(self) -> dict:
        out: dict = {}
        for s in self.steps:
            for i in s.inputs:
                if i:
                    out.setdefault(i, []).append(s)
        return out

    def constant_names(self) -> set:
        """Initializers and everything computed from them alone (folded into the prelude)."""
        const = set(self.initializers) - set(self.inputs)  # an initializer that is also an input is a default
        for s in self.steps:  # every op of the torch table is a pure function of its inputs
            if s.kind == "torch" and all(i in const for i in s.inputs if i):
                const.update(o for o in s.outputs if o)
        return const

    def prune(self) -> None:
        """Drop steps no output depends on, and the optional outputs (s, z, pooling indices) no one reads."""
        live = set(self.outputs)
        kept = []
        for s in reversed(self.steps):
            if not any(o in live for o in s.outputs if o):
                continue
            if s.kind == "kernel":
                _drop_unread_outputs(s, live)
            if s.kind == "torch" and s.op == "MaxPool" and not (len(s.outputs) > 1 and s.outputs[1] in live):
                # the route re-finds the winners: the pooled values alone, no int64 indices
                s.outputs, s.attrs["indices"] = s.outputs[:1], 0
            live.update(i for i in s.inputs if i)
            kept.append(s)
        self.steps = kept[::-1]


# the constexpr switches of a kernel's optional outputs, whatever the op: s (ε step; s_a and s_b of a γ/αβ
# push-back), z (a forward layer's pre-activation)
OPTIONAL_OUTPUTS = ("want_s", "keep_z")


def _drop_unread_outputs(step: Step, live: set) -> None:
    """A kernel writes its optional outputs, all but the first, only when one of them is read; a kernel without
    such a switch writes all its outputs."""
    switch = next((f for f in OPTIONAL_OUTPUTS if f in step.flags), None)
    if switch and len(step.outputs) > 1 and not live & set(step.outputs[1:]):
        step.outputs = step.outputs[:1]
        step.flags[switch] = False


# ------------------------------------------------------------------------------------------- passes


def _inline(call: Step, fn: ir.Function) -> list[Step]:
    """The call replaced by its function's body, values renamed under the call's name."""
    names = dict(zip(_names(fn.inputs), call.inputs + [""] * len(fn.inputs)))
    names.update({o: (call.outputs[i] if i < len(call.outputs) else "") for i, o in enumerate(_names(fn.outputs))})
    prefix = call.nodes[0] or call.outputs[0]

    def rename(v):
        return v if not v else names.setdefault(v, f"{prefix}/{v}")

    steps = []
    for node in fn:
        attrs = {}
        for name, a in node.attributes.items():
            if a.is_ref():  # "@name": the call's attribute of that name, if it gave one
                if a.ref_attr_name in call.attrs:
                    attrs[name] = call.attrs[a.ref_attr_name]
            else:
                attrs[name] = _attribute(a)
        step = _step(node, attrs)
        step.inputs, step.outputs = [rename(v) for v in step.inputs], [rename(v) for v in step.outputs]
        step.nodes = [f"{prefix}/{node.op_type}"]
        steps.append(step)
    return steps


def _forward_kernel(s: Step, g: _Graph, const: set, transposes: list) -> Step | str | None:
    """A Conv/Gemm/MatMul with constant weights as a ``conv2d`` / ``linear`` step, else why not (None for
    other ops; weight rewrites it needs go to ``transposes``)."""
    if s.op not in ("Conv", "Gemm", "MatMul") or len(s.inputs) < 2:
        return None
    x, w = s.inputs[0], s.inputs[1]
    bias = s.inputs[2] if len(s.inputs) > 2 else ""
    if x in const:
        return "computed on constants alone"
    if w not in const or (bias and bias not in const):
        return "a product of two activations: the kernels take constant weights"
    if s.op == "Conv" and g.ranks.get(x) == 4 and g.ranks.get(w) == 4:
        attrs = {k: s.attrs[k] for k in ("strides", "pads", "dilations", "group", "auto_pad") if k in s.attrs}
        if attrs.get("auto_pad") == "NOTSET":
            del attrs["auto_pad"]
        return Step("kernel", "conv2d", [x, w, bias], list(s.outputs), attrs, {"has_bias": bool(bias)},
                    nodes=list(s.nodes))
    if s.op == "Gemm" and g.ranks.get(w) == 2 and g.ranks.get(x) == 2 and (not bias or g.ranks.get(bias) == 1) \
            and not s.attrs.get("transA", 0) and s.attrs.get("transB", 0) == 1 \
            and s.attrs.get("alpha", 1.0) == 1.0 and s.attrs.get("beta", 1.0) == 1.0:
        return Step("kernel", "linear", [x, w, bias], list(s.outputs), {}, {"has_bias": bool(bias)},
                    nodes=list(s.nodes))
    if s.op == "MatMul" and g.ranks.get(w) == 2 and (g.ranks.get(x) or 0) >= 2:
        # x·W = x·(Wᵀ)ᵀ: the kernel takes weights [N, K]; Wᵀ is made once, in the prelude
        wt = f"{w}/transposed"
        if wt not in const:
            transposes.append(Step("torch", "Transpose", [w], [wt], {"perm": [1, 0]}, nodes=[f"{w}/Transpose"]))
            const.add(wt)
        return Step("kernel", "linear", [x, wt, ""], list(s.outputs), {}, {"has_bias": False},
                    nodes=list(s.nodes))
    if s.op == "Conv":
        return unfit_operand("input", g.values.get(x), 4) if g.ranks.get(x) != 4 else \
            unfit_operand("weight", g.values.get(w), 4)
    if g.ranks.get(w) != 2:
        return unfit_operand("weight", g.values.get(w), 2)
    if s.op == "Gemm" and g.ranks.get(x) != 2:
        return unfit_operand("input", g.values.get(x), 2)
    return "transposed, scaled or with a bias of another shape: not the kernel's x·Wᵀ + b"


def _fuse_forward(g: _Graph) -> None:
    """Forward layers → kernels; a Relu that reads only the layer's z moves into the epilogue."""
    const, readers_of = g.constant_names(), g.readers()
    steps, absorbed, transposes = [], set(), []
    for s in g.steps:
        kernel = _forward_kernel(s, g, const, transposes) if s.kind == "torch" else None
        if isinstance(kernel, str):
            s.why, kernel = s.why or kernel, None
        if kernel is not None:
            z = kernel.outputs[0]
            readers = readers_of.get(z, [])
            relu = next((r for r in readers if r.op == "Relu" and r.kind == "torch"), None)
            kernel.flags.update(relu=relu is not None, keep_z=False)
            if relu is not None:
                absorbed.add(id(relu))
                kernel.nodes += relu.nodes
                others = len(readers) > 1 or z in g.outputs
                kernel.outputs = [relu.outputs[0], z] if others else [relu.outputs[0]]
                kernel.flags["keep_z"] = others
            s = kernel
        steps.append(s)
    g.steps = transposes + [s for s in steps if id(s) not in absorbed]


def _check_coverage(g: _Graph) -> None:
    """Every torch step must have an op in the table, with attributes it implements: all misses at once,
    in one line."""
    from .torch_ops import CHECKS, TORCH_OPS

    missing = []
    for s in g.steps:
        if s.kind != "torch":
            continue
        if s.domain or s.op not in TORCH_OPS:
            missing.append((f"{s.domain}.{s.op}" if s.domain else s.op, s.nodes[0], None))
        elif s.op in CHECKS and CHECKS[s.op](s.attrs):
            missing.append((s.op, s.nodes[0], CHECKS[s.op](s.attrs)))
    if missing:
        listed = "; ".join(f"{op} '{name}'" + (f" ({why})" if why else "") for op, name, why in missing)
        raise RelgraphError(f"cannot lower {len(missing)} node(s) to the triton target: {listed}. "
                            f"Torch ops: {', '.join(sorted(TORCH_OPS))}")


# ops that torch runs as views of their input, or that compute shapes: no arithmetic on the data
VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size")


def _why_torch(op: str) -> str:
    """Why a torch step with no more specific reason is not a kernel."""
    if op in VIEWS:
        return "a view or a shape: no arithmetic to fuse"
    return f"no fused kernel covers {op}: one torch op"


def _split_prelude(g: _Graph) -> tuple[list, list]:
    """(steps computed from constants alone, the rest), both in graph order."""
    const = g.constant_names()
    prelude = [s for s in g.steps if s.kind == "torch" and all(o in const for o in s.outputs if o)]
    chosen = {id(s) for s in prelude}
    return prelude, [s for s in g.steps if id(s) not in chosen]


def _liveness(steps: list, keep: set) -> None:
    """Each step frees the values whose last reader it is (outputs and constants are kept)."""
    last = {}
    for k, s in enumerate(steps):
        for v in s.inputs + s.outputs:
            if v:
                last[v] = k
    for k, s in enumerate(steps):
        s.free = sorted({v for v in s.inputs + s.outputs if v and last[v] == k and v not in keep})


def lower(proto: onnx.ModelProto, *, dtype: str = "fp32") -> Plan:
    """The launch plan of a compiled explainer (see the module docstring)."""
    if dtype not in ("fp32", "fp16", "bf16"):
        raise RelgraphError(f"dtype must be fp32, fp16 or bf16, got '{dtype}'")
    model = _read(proto)
    called = frozenset(n.op_type for n in model.graph if n.domain == DOMAIN)
    if called:
        kernel_rules(called).apply_to_model(model)
    g = _Graph(model)
    g.prune()
    _fuse_forward(g)
    g.prune()
    _check_coverage(g)
    for s in g.steps:
        if s.kind == "kernel":
            s.dtype = dtype
        else:
            s.why = s.why or _why_torch(s.op)
    prelude, steps = _split_prelude(g)
    constants = sorted({i for s in prelude + steps for i in s.inputs if i in g.initializers}
                       | {o for o in g.outputs if o in g.initializers})
    inputs = [i for i in g.inputs if i not in g.initializers or i in constants]
    keep = set(g.outputs) | set(constants) | {o for s in prelude for o in s.outputs}
    _liveness(steps, keep)
    metadata = {p.key: p.value for p in proto.metadata_props}
    return Plan(inputs, list(g.outputs), constants, prelude, steps, metadata, dtype)
