"""Lowering: a compiled ONNX explainer → a launch plan of Triton kernel calls and torch ops.

The explainer is the IR. Lowering walks its nodes in order and rewrites the ones a kernel covers:

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

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import RelgraphError
from ..files import replacing
from ..rules.functions import DOMAIN, FUNCTIONS, LocalFunction

FORMAT = "relgraph.plan/1"
KERNEL_OPS = ("linear", "conv2d", "epsilon_linear", "epsilon_conv2d", "lrp_parts_linear", "lrp_parts_linear_back",
              "lrp_parts_conv2d", "lrp_parts_conv2d_back", "maxpool2d_back", "epsilon_sum")
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


def _attribute(a: onnx.AttributeProto):
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise RelgraphError(f"attribute '{a.name}' holds a subgraph; control flow cannot be lowered")
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _step(node: onnx.NodeProto, attrs: dict | None = None) -> Step:
    return Step("torch", node.op_type, list(node.input), list(node.output),
                attrs if attrs is not None else {a.name: _attribute(a) for a in node.attribute},
                nodes=[node.name], domain=node.domain if node.domain not in ("", "ai.onnx") else "")


# ------------------------------------------------------------------------------------------- the graph


class _Graph:
    """The working list of steps with what lowering asks of it: producers, readers, constants, ranks."""

    def __init__(self, proto: onnx.ModelProto):
        try:  # ranks decide what a kernel can take: without them every layer would quietly stay a torch op
            g = onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph
        except (onnx.shape_inference.InferenceError, ValueError) as exc:
            raise RelgraphError(f"lowering: ONNX shape inference failed on the explainer: "
                                f"{str(exc).strip().splitlines()[0]}") from exc
        self.initializers = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input]
        self.outputs = [o.name for o in g.output]
        self.functions = {(f.domain, f.name): f for f in proto.functions}
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim)
                      for v in [*g.value_info, *g.input, *g.output] if v.type.tensor_type.HasField("shape")}
        self.ranks.update({t.name: len(t.dims) for t in g.initializer})
        self.steps = [_step(n) for n in g.node]

    def producers(self) -> dict:
        return {o: s for s in self.steps for o in s.outputs if o}

    def readers(self) -> dict:
        out: dict = {}
        for s in self.steps:
            for i in s.inputs:
                if i:
                    out.setdefault(i, []).append(s)
        return out

    def scalar(self, name: str) -> float | None:
        """The value of a one-element float initializer, else None."""
        t = self.initializers.get(name)
        if t is None or int(np.prod(t.dims, dtype=np.int64)) != 1:
            return None
        a = numpy_helper.to_array(t)
        return float(a.reshape(-1)[0]) if a.dtype.kind == "f" else None

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
            if s.kind == "kernel" and s.op in _OPTIONAL_OUTPUT:
                _drop_unread_outputs(s, live)
            if s.kind == "torch" and s.op == "MaxPool" and not (len(s.outputs) > 1 and s.outputs[1] in live):
                # the route re-finds the winners: the pooled values alone, no int64 indices
                s.outputs, s.attrs["indices"] = s.outputs[:1], 0
            live.update(i for i in s.inputs if i)
            kept.append(s)
        self.steps = kept[::-1]


_OPTIONAL_OUTPUT = {"epsilon_linear": "want_s", "epsilon_conv2d": "want_s", "linear": "keep_z", "conv2d": "keep_z",
                    "lrp_parts_linear_back": "want_s", "lrp_parts_conv2d_back": "want_s"}


def _drop_unread_outputs(step: Step, live: set) -> None:
    """A kernel writes its optional outputs (s of an ε step, z of a forward layer, s_a and s_b of a γ/αβ
    push-back) only when one of them is read."""
    if len(step.outputs) > 1 and not live & set(step.outputs[1:]):
        step.outputs = step.outputs[:1]
        step.flags[_OPTIONAL_OUTPUT[step.op]] = False


# ------------------------------------------------------------------------------------------- passes


def _inline(call: Step, fn: onnx.FunctionProto) -> list[Step]:
    """The call replaced by its function's body, values renamed under the call's name."""
    names = dict(zip(fn.input, call.inputs + [""] * len(fn.input)))
    names.update({o: (call.outputs[i] if i < len(call.outputs) else "") for i, o in enumerate(fn.output)})
    prefix = call.nodes[0] or call.outputs[0]

    def rename(v):
        return v if not v else names.setdefault(v, f"{prefix}/{v}")

    steps = []
    for node in fn.node:
        attrs = {}
        for a in node.attribute:
            if a.ref_attr_name:  # "@name": the call's attribute of that name, if it gave one
                if a.ref_attr_name in call.attrs:
                    attrs[a.name] = call.attrs[a.ref_attr_name]
            else:
                attrs[a.name] = _attribute(a)
        step = _step(node, attrs)
        step.inputs, step.outputs = [rename(v) for v in node.input], [rename(v) for v in node.output]
        step.nodes = [f"{prefix}/{node.op_type}"]
        steps.append(step)
    return steps


def _epsilon_kernel(call: Step, function: LocalFunction, g: _Graph) -> Step | str:
    """The ε call as a kernel step in mode "den" (``_fuse_stabilizers`` refines it), or why its operands do
    not fit a kernel (a batched MatMul weight, a 1-d or 3-d convolution)."""
    x, w, den, r = call.inputs
    op = function.kernel
    want_rank = 2 if op == "epsilon_linear" else 4
    if w not in g.initializers or g.ranks.get(w) != want_rank:
        return _misfit("weight", w, want_rank, g)
    if op == "epsilon_conv2d" and g.ranks.get(x) != 4:
        return _misfit("input", x, 4, g)
    if function.unit_stride:
        # the call carries the transpose's geometry; the forward pads are p = d·(k − 1) − back_pad
        kernel = list(g.initializers[w].dims[2:])
        dil, back = call.attrs["dilations"], call.attrs["back_pads"]
        pads = [d * (k - 1) - b for d, k, b in zip(dil * 2, kernel * 2, back)]
        attrs = dict(strides=[1, 1], pads=pads, dilations=list(dil), group=call.attrs["group"])
    elif function.op == "Conv":
        attrs = {k: list(call.attrs[k]) if k != "group" else call.attrs[k]
                 for k in ("strides", "pads", "dilations", "group")}
    else:
        attrs = {}
    attrs["epsilon"] = 0.0
    return Step("kernel", op, [x, w, r, den], list(call.outputs), attrs, {"mode": "den", "want_s": True},
                dtype=None, nodes=list(call.nodes))


def _parts_kernels(call: Step, function: LocalFunction, g: _Graph) -> list[Step] | str:
    """The γ / αβ call as split forward + push-back kernel steps (the shares s_a, s_b pruned unless a bias
    reads them), or why its operands do not fit the kernels."""
    rule, linear, nonneg = function.rule, function.op == "Gemm", function.nonnegative
    (x, w, b_pos, b_neg), r = call.inputs[:4], call.inputs[-1]
    rank = 2 if linear else 4
    if w not in g.initializers or g.ranks.get(w) != rank:
        return _misfit("weight", w, rank, g)
    if g.ranks.get(x) != rank:
        return _misfit("input", x, rank, g)
    if b_pos not in g.initializers or b_neg not in g.initializers:
        return "the bias is computed at run time, not a constant"
    has_bias = bool(np.any(numpy_helper.to_array(g.initializers[b_pos]))
                    or np.any(numpy_helper.to_array(g.initializers[b_neg])))
    name = call.nodes[0] or call.outputs[0]
    z_pos, z_neg = f"{name}/z_pos", f"{name}/z_neg"
    geometry = {} if linear else {k: call.attrs[k] for k in ("strides", "pads", "dilations", "group")}
    params = {k: call.attrs[k] for k in ("epsilon", "gamma", "alpha", "beta") if k in call.attrs}
    family = function.kernel
    bias = [b_pos, b_neg] if has_bias else ["", ""]
    return [
        Step("kernel", family, [x, w], [z_pos, z_neg], dict(geometry), {"x_nonneg": bool(nonneg)},
             nodes=list(call.nodes)),
        Step("kernel", family + "_back", [x, w, r, z_pos, z_neg, *bias], list(call.outputs[:3]),
             {**geometry, **params}, {"rule": rule, "x_nonneg": bool(nonneg), "has_bias": has_bias, "want_s": True},
             nodes=list(call.nodes)),
    ]


def _route_kernel(call: Step, function: LocalFunction, g: _Graph) -> Step | str:
    """A 2-d ``relgraph.MaxPoolRoute`` as a ``maxpool2d_back`` step (any kernel, stride, pads, dilation,
    ceil_mode), else why not (1-d and 3-d pools keep the function's ops)."""
    x, r = call.inputs
    if g.ranks.get(x) != 4:
        return _misfit("input", x, 4, g)
    attrs = {k: call.attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations", "ceil_mode")}
    return Step("kernel", "maxpool2d_back", [x, r], list(call.outputs), attrs, {}, nodes=list(call.nodes))


def _sum_kernel(call: Step, function: LocalFunction, g: _Graph) -> Step:
    """``relgraph.EpsilonSum`` (a, b, den, R) as an ``epsilon_sum`` step in mode "den" (refined by
    ``_fuse_stabilizers``); den last among the inputs, as in the ε steps."""
    a, b, den, r = call.inputs
    return Step("kernel", "epsilon_sum", [a, b, r, den], list(call.outputs), {"epsilon": 0.0}, {"mode": "den"},
                nodes=list(call.nodes))


def _misfit(what: str, value: str, rank: int, g: _Graph) -> str:
    """Why an operand does not fit a kernel: the kernels take constant 2-d weights and 2-d images."""
    if what == "weight" and value not in g.initializers:
        return "the weight is computed at run time, not a constant"
    have = g.ranks.get(value)
    expected = {2: "a matrix", 4: "a 2-d image batch [N, C, H, W]"}[rank] if what == "input" else \
        {2: "a matrix", 4: "a 2-d filter bank"}[rank]
    return f"its {what} has rank {have if have is not None else 'unknown'}; the kernel takes {expected}"


# the fused kernel a model-local function names → its kernel steps, or why its operands do not fit
_KERNEL_STEPS = {"epsilon_linear": _epsilon_kernel, "epsilon_conv2d": _epsilon_kernel,
                 "lrp_parts_linear": _parts_kernels, "lrp_parts_conv2d": _parts_kernels,
                 "maxpool2d_back": _route_kernel, "epsilon_sum": _sum_kernel}


def _expand_calls(g: _Graph) -> None:
    """ε, γ/αβ, max-pool route and residual-sum calls → kernel steps; every other model-local function call
    → its body (expanded in turn: a body may call another function)."""

    def expand(s: Step) -> list[Step]:
        if not s.domain:
            return [s]
        function = FUNCTIONS.get(s.op) if s.domain == DOMAIN else None
        kernels = _KERNEL_STEPS[function.kernel](s, function, g) if function else None
        if isinstance(kernels, Step):
            kernels = [kernels]
        if kernels and not isinstance(kernels, str):
            return kernels
        if (s.domain, s.op) in g.functions:
            inner = [t for step in _inline(s, g.functions[(s.domain, s.op)]) for t in expand(step)]
            if isinstance(kernels, str):
                for t in inner:
                    t.why = t.why or f"{s.op} not fused into {function.kernel}: {kernels}"
            return inner
        return [s]  # an op of an unknown domain: reported by the coverage check

    g.steps = [t for s in g.steps for t in expand(s)]


def _denominator(den: str, g: _Graph, producers: dict):
    """(mode, value, ε) for the stabilized denominator ``den`` (see the module docstring): z + ε, or the one
    spelling of stab(z) that :func:`relgraph.graph.stabilized` writes, else the denominator as it is."""
    add = producers.get(den)
    if add is None or add.kind != "torch" or add.op != "Add":
        return "den", den, 0.0
    for v, other in (add.inputs, add.inputs[::-1]):
        eps = g.scalar(other)
        if eps is not None and eps > 0:
            return "shift", v, eps
        where = producers.get(other)
        if where is None or where.op != "Where":
            continue
        cond = producers.get(where.inputs[0])
        pos, neg = g.scalar(where.inputs[1]), g.scalar(where.inputs[2])
        if (cond is not None and cond.op == "GreaterOrEqual" and cond.inputs[0] == v
                and g.scalar(cond.inputs[1]) == 0.0 and pos is not None and pos > 0 and neg == -pos):
            return "stab", v, pos
    return "den", den, 0.0


def _fuse_stabilizers(g: _Graph) -> None:
    producers = g.producers()
    for s in g.steps:
        if s.kind == "kernel" and s.op.startswith("epsilon_"):  # den is the fourth input of every ε kernel
            mode, den, eps = _denominator(s.inputs[3], g, producers)
            s.inputs[3] = den
            s.flags["mode"], s.attrs["epsilon"] = mode, eps


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
        return _misfit("input", x, 4, g) if g.ranks.get(x) != 4 else _misfit("weight", w, 4, g)
    if g.ranks.get(w) != 2:
        return _misfit("weight", w, 2, g)
    if s.op == "Gemm" and g.ranks.get(x) != 2:
        return _misfit("input", x, 2, g)
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
    g = _Graph(proto)
    _expand_calls(g)
    _fuse_stabilizers(g)
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
