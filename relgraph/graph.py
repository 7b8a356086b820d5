"""Loading models into onnx_ir, and the small toolkit every pass and rule uses to read and emit graph pieces.

onnx_ir is the graph: use-def chains, initializers, load/save with external data. This module adds
what the compiler needs on top of it: a safe loader, constant access, static-shape helpers, and
:class:`Builder`, which appends ONNX nodes to a graph and hands back their output values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from .errors import RelgraphError
from .weights import check_skeleton, expected_bytes, put_weights, take_weights

EXPORT_IR_VERSION = 10  # onnxruntime 1.31 refuses IR 11+, onnx 1.23 stamps 14 by default
MIN_OPSET = 17


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read an ONNX file (external data included) into onnx_ir, each weight decoded once (``weights.py``).

    External-data locations must stay inside the model's folder: a model file must not make the compiler
    read arbitrary files from the machine.
    """
    path = Path(path)
    if not path.exists():
        raise RelgraphError(f"model file not found: {path}")
    if path.is_dir():
        raise RelgraphError(f"expected an ONNX file, got a folder: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise RelgraphError(f"not a readable ONNX model: {path} ({type(exc).__name__})") from None
    if not proto.graph.node and not proto.graph.output:
        raise RelgraphError(f"not a readable ONNX model: {path} (empty graph)")
    _check_external_data(proto, path.parent)
    _check_opset(proto, path)
    try:
        weights = take_weights(proto, path.parent)
    except (ValueError, OSError) as exc:
        raise RelgraphError(f"invalid ONNX model {path}: {exc}") from None
    _check_tensors(proto, path)
    try:  # the skeleton: the checker would otherwise serialize every weight again
        check_skeleton(proto, full_check=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RelgraphError(f"invalid ONNX model {path}: {first}") from None
    model = ir.from_proto(proto)
    put_weights(model, weights)
    return model


def _check_external_data(proto: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if base not in target.parents:
            raise RelgraphError(
                f"external data of tensor '{tensor.name}' points outside the model's folder: {location}"
            )
        if not target.is_file():
            raise RelgraphError(f"external data file missing for tensor '{tensor.name}': {location}")


def _check_opset(proto: onnx.ModelProto, path: Path) -> None:
    known = onnx.defs.onnx_opset_version()
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > known:
            raise RelgraphError(f"{path} uses opset {entry.version}; this onnx ({onnx.__version__}) knows opsets "
                                f"up to {known}")


_NON_NUMERIC_INPUTS = {onnx.TensorProto.STRING, onnx.TensorProto.BOOL, onnx.TensorProto.COMPLEX64,
                       onnx.TensorProto.COMPLEX128, onnx.TensorProto.UNDEFINED}


def _check_tensors(proto: onnx.ModelProto, path: Path) -> None:
    """Raw data left in the proto (constants of nodes and subgraphs; the weights were checked as they were
    taken) must hold exactly what shape and type declare; graph inputs must be numeric tensors."""
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not tensor.HasField("raw_data") or tensor.data_type in (onnx.TensorProto.STRING,
                                                                   onnx.TensorProto.UNDEFINED):
            continue
        try:
            raw, expected = len(tensor.raw_data), expected_bytes(tensor)
        except ValueError as exc:
            raise RelgraphError(f"invalid ONNX model {path}: {exc}") from None
        if raw != expected:
            raise RelgraphError(f"invalid ONNX model {path}: tensor '{tensor.name}' holds {raw} bytes, its shape "
                                f"{list(tensor.dims)} and type declare {expected}")
    for value in proto.graph.input:
        kind = value.type.WhichOneof("value")
        elem = value.type.tensor_type.elem_type if kind == "tensor_type" else None
        if elem in _NON_NUMERIC_INPUTS or kind != "tensor_type":
            what = onnx.TensorProto.DataType.Name(elem) if elem is not None else kind
            raise RelgraphError(f"input '{value.name}' of {path} is {what}: relgraph explains numeric tensor "
                                f"inputs only")


def to_proto(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    proto.ir_version = EXPORT_IR_VERSION
    return proto


# ---------------------------------------------------------------------------------------------- constants


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array of a constant value (initializer or folded constant), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def is_const(value: ir.Value | None) -> bool:
    return value is not None and ir.convenience.get_const_tensor(value) is not None


FIXED = "relgraph.fixed"  # value.meta key: the explained input does not reach this value


def is_fixed(value: ir.Value | None) -> bool:
    """Whether ``value`` is constant for the explanation: a constant of the model, or a *run-time constant*,
    a value the explained input does not reach (an attention mask, position embeddings, RoPE's cos and sin,
    anything computed from other inputs or from shapes alone). Relevance stops at such values; added to an
    activation, they are biases. The relevance pass marks run-time constants (``relevance_nodes``)."""
    return value is not None and (bool(value.meta.get(FIXED)) or is_const(value))


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


# ---------------------------------------------------------------------------------------------- shapes


def rank(value: ir.Value) -> int:
    if value.shape is None:
        raise RelgraphError(f"shape of '{value.name}' is unknown; relgraph needs static ranks")
    return len(value.shape)


def dims(value: ir.Value) -> list:
    """Dimensions of a value: ints where static, None where symbolic (the batch axis)."""
    if value.shape is None:
        raise RelgraphError(f"shape of '{value.name}' is unknown; relgraph needs static ranks")
    return [d if isinstance(d, int) else None for d in value.shape]


def static_dims(value: ir.Value, what: str = "") -> list[int]:
    """All but the batch axis must be static; the batch axis (0) is returned as -1."""
    out = dims(value)
    if any(d is None for d in out[1:]):
        raise RelgraphError(
            f"'{value.name}'{' (' + what + ')' if what else ''} has dynamic non-batch dimensions {out}; "
            "fix the input's with --input-shape NAME=Nx3x224x224 (a letter keeps a dimension dynamic)"
        )
    return [-1 if d is None else d for d in out[:1]] + out[1:]


# ---------------------------------------------------------------------------------------------- builder


def stabilized(op, z, epsilon, minus_epsilon, zero):
    """stab(z) = z + ε·s, s = +1 where z ≥ 0 and −1 where z < 0 (sign(0) = +1), as ``op(op_type, *inputs)`` writes
    it: Add(z, Where(GreaterOrEqual(z, 0), ε, −ε)). The one ONNX spelling of the stabilizer, for the builder and
    for the model-local functions' text alike, and the lowering's pattern for it (``lowering/rewrites.py``), which
    fuses the division into a kernel."""
    return op("Add", z, op("Where", op("GreaterOrEqual", z, zero), epsilon, minus_epsilon))


class Builder:
    """Appends nodes to a graph and returns their outputs: ``b.op("Mul", x, y)``.

    Node and value names carry a prefix (the forward node they serve) so that an explainer graph reads
    as forward nodes followed by their relevance steps.
    """

    def __init__(self, graph: ir.Graph, prefix: str = "relevance"):
        self.graph = graph
        self.prefix = prefix
        self._count = 0
        self._scalars: dict[tuple, ir.Value] = {}
        self.functions: set[str] = set()  # model-local functions the emitted nodes call
        # where the batch is in the values the current rule reads (``relgraph.passes.layout``): None for
        # [N, …]; ("outer", k) for k elements before the batch in memory order ([S, N, E], a Gemm's [N·S, D]
        # with k = 1); ("unknown", why)
        self.layout = None
        self.explained: ir.Value | None = None  # the explained value x, whose leading axis is the batch
        self._rows: dict[int, ir.Value] = {}
        self.opset = graph.opset_imports.get("", MIN_OPSET)

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def op(self, op_type: str, *inputs, domain: str = "", outputs: int = 1, **attributes):
        attributes = {k: v for k, v in attributes.items() if v is not None}
        node = ir.node(
            op_type, list(inputs), attributes=attributes, domain=domain, num_outputs=outputs,
            name=self._name(op_type),
        )
        for i, out in enumerate(node.outputs):
            out.name = f"{node.name}:{i}"
        self.graph.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)

    def const(self, array, name: str | None = None) -> ir.Value:
        array = np.asarray(array)
        value = ir.Value(
            name=name or self._name("const"),
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(array),
        )
        self.graph.register_initializer(value)
        return value

    def scalar(self, x: float, dtype=np.float32) -> ir.Value:
        key = (float(x), np.dtype(dtype).str)
        if key not in self._scalars:
            self._scalars[key] = self.const(np.array(x, dtype=dtype), name=self._name("scalar"))
        return self._scalars[key]

    def ints(self, values) -> ir.Value:
        return self.const(np.asarray(values, dtype=np.int64))

    # --- small composite helpers used by many rules

    def stabilize(self, z: ir.Value, epsilon: float) -> ir.Value:
        """stab(z) = z + ε·s with s = +1 where z ≥ 0 and −1 where z < 0 (so sign(0) = +1)."""
        if epsilon == 0:
            return z
        return stabilized(self.op, z, self.scalar(epsilon), self.scalar(-epsilon), self.scalar(0.0))

    def total(self, values) -> ir.Value | None:
        """Σ values, left to right (None for none)."""
        total = None
        for v in values:
            total = v if total is None else self.op("Add", total, v)
        return total

    def sum_per_sample(self, v: ir.Value, rank_: int) -> ir.Value:
        """Σ over every axis but the batch axis: [N, ...] → [N] (for another layout, see ``layout``)."""
        if self.layout is None:
            if rank_ == 1:
                return v
            return self.op("ReduceSum", v, self.ints(list(range(1, rank_))), keepdims=0)
        return self.per_sample_rows(v)

    def per_sample_rows(self, v: ir.Value) -> ir.Value:
        """Σ of each sample's values in v, read as [outer, N, −1] in memory order (``layout``) → [N]."""
        if self.layout is not None and self.layout[0] == "unknown":
            raise RelgraphError(self.layout[1])
        outer = self.layout[1] if self.layout is not None else 1
        if outer not in self._rows:  # [outer, N, −1], N read off the explained value
            self._rows[outer] = self.op("Concat", self.ints([outer]), self.op("Shape", self.explained, start=0, end=1),
                                        self.ints([-1]), axis=0)
        return self.op("ReduceSum", self.op("Reshape", v, self._rows[outer]), self.ints([0, 2]), keepdims=0)

    def zeros_like(self, v: ir.Value) -> ir.Value:
        return self.op("ConstantOfShape", self.op("Shape", v), value=ir.tensor(np.zeros(1, np.float32)))

    def positive(self, v):
        return self.op("Relu", v)

    def negative(self, v):
        return self.op("Min", v, self.scalar(0.0))


# ---------------------------------------------------------------------------------------------- editing


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    array = np.asarray(array)
    base, k = name, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}_{k}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), const_value=ir.tensor(array))
    graph.register_initializer(value)
    return value


def replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Every use of ``old``, graph outputs included, now reads ``new``; ``new`` takes old's name so that
    the outputs a user knows keep their names."""
    name = old.name
    # onnx_ir refuses to touch graph outputs unless asked to: without the flag, replacing a model's
    # output (a bias-free final MatMul that becomes a Gemm, say) raises instead.
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name = None
    new.name = name
