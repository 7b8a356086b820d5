"""An explainer of a model exported for one batch size, made to take any batch in standard ONNX.

A model exported for batches of B (the dynamo export's default, or a legacy export without ``dynamic_axes``)
spells B out in its attention masks, Reshape targets and Expand shapes, and so does its explainer. Here that
explainer's graph becomes the body of a ``Scan`` over chunks of B samples (:func:`any_batch`):

    K = ⌈N / B⌉,   rows = min(0, 1, …, K·B − 1;  N − 1)
    each batched input v:   v[rows] reshaped [K, B, …]   (the last chunk filled with copies of sample N − 1)
    each output y:          Scan's [K, B, …] reshaped [K·B, …], rows 0 … N − 1 kept

This is exact: a sample's logits and relevance depend on that sample alone. The weights stay in the outer
graph, which the body reads by name, so nothing is copied. :func:`fixed_part` gives the graph back as it was
(``relgraph check`` adds its per-layer values to it).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SCAN = "batch/scan"
CHUNK = "/chunk"  # the body's names of the values the outer graph takes and returns under their own names
DIM = "N"


def first_dim(value: onnx.ValueInfoProto) -> int | None:
    """The static size of ``value``'s first axis, or None."""
    dims = value.type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) and dims[0].HasField("dim_value") else None


def fixed_batch(graph: onnx.GraphProto) -> int | None:
    """The batch size an explainer's graph is fixed to (its ``target`` input's length), or None."""
    target = next((i for i in graph.input if i.name == "target"), None)
    return first_dim(target) if target is not None else None


def filled_rows(n: int, batch: int) -> np.ndarray:
    """The rows the Scan runs for ``n`` samples in chunks of ``batch``: 0 … n − 1, then copies of n − 1 up to
    a whole number of chunks (in numpy, for callers that run the fixed graph themselves)."""
    return np.minimum(np.arange(-(-n // batch) * batch), n - 1)


def any_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` (an explainer fixed to batches of B) as a Scan over chunks of B that takes any batch N (see
    the module docstring); ``proto`` itself when its batch is not fixed. Every input is scanned; one with a
    default (DeepLIFT's baseline: one row for all samples, or one per sample) is expanded to N rows first.
    Every other input and every output has B rows, or a symbolic first axis that is B at run time."""
    graph = proto.graph
    batch = fixed_batch(graph)
    if batch is None:
        return proto
    defaults = {t.name for t in graph.initializer}
    scanned = [i for i in graph.input if i.name not in defaults] + [i for i in graph.input if i.name in defaults]
    fed = [v for v in scanned if v.name not in defaults]
    # the relevance half types its values with a symbolic batch: a first axis that is B at run time
    other = [v.name for v in [*fed, *graph.output] if first_dim(v) not in (batch, None)
             or not len(v.type.tensor_type.shape.dim)]
    if other:
        raise RuntimeError(f"explainer values without a first axis of {batch} samples: {', '.join(other)}")
    inner = {v.name: v.name + CHUNK for v in [*scanned, *graph.output]}
    body = helper.make_graph([_renamed(n, inner) for n in graph.node], "chunk",
                             [_named(v, inner[v.name]) for v in scanned],
                             [_named(v, inner[v.name]) for v in graph.output], value_info=graph.value_info)
    emit = _Emitter()
    count = emit("Shape", fed[0].name, end=1)                                        # [N]
    chunks = emit("Div", emit("Add", count, emit.const(batch - 1)), emit.const(batch))  # [K]
    padded = emit("Mul", chunks, emit.const(batch))                                  # [K·B]
    last = emit("Squeeze", emit("Sub", count, emit.const(1)), emit.const(0))
    rows = emit("Min", emit("Range", emit.const(0, scalar=True), emit("Squeeze", padded, emit.const(0)),
                            emit.const(1, scalar=True)), last)
    feeds = []
    for v in scanned:
        rows_of_v = v.name
        if v.name in defaults:  # one row for all samples (the default) or one per sample: N rows either way
            rows_of_v = emit("Expand", v.name, emit("Concat", count, emit("Shape", v.name, start=1), axis=0))
        feeds.append(emit("Reshape", emit("Gather", rows_of_v, rows, axis=0),
                          emit("Concat", chunks, emit.const(batch), emit("Shape", v.name, start=1), axis=0)))
    stacked = [o.name + "/chunks" for o in graph.output]
    emit.nodes.append(helper.make_node("Scan", feeds, stacked, SCAN, body=body, num_scan_inputs=len(feeds)))
    for o, s in zip(graph.output, stacked):
        flat = emit("Reshape", s, emit("Concat", padded, emit("Shape", s, start=2), axis=0))
        emit.nodes.append(helper.make_node("Slice", [flat, emit.const(0), count, emit.const(0)], [o.name],
                                           f"batch/{o.name}"))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:], out.graph.value_info[:], out.graph.input[:], out.graph.output[:]
    out.graph.node.extend(emit.nodes)
    out.graph.input.extend(_batched(v, DIM) if v in fed else v for v in graph.input)
    out.graph.output.extend(_batched(v, DIM) for v in graph.output)
    return out


def fixed_part(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int] | None:
    """The graph :func:`any_batch` wrapped, as it was (its inputs and outputs fixed to B rows), and B; None for
    an explainer that was not wrapped."""
    scan = next((n for n in proto.graph.node if n.name == SCAN and n.op_type == "Scan"), None)
    if scan is None:
        return None
    body = next(a.g for a in scan.attribute if a.name == "body")
    outer = {v.name[:-len(CHUNK)]: v.name for v in [*body.input, *body.output]}
    plain = {v: k for k, v in outer.items()}
    batch = first_dim(body.input[0])
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    del graph.node[:], graph.value_info[:], graph.output[:]
    # the body's inferred shapes are left out: they hold B for the baseline's path, which may have 1 row
    graph.node.extend(_renamed(n, plain) for n in body.node)
    defaults = {t.name for t in proto.graph.initializer}
    declared = {v.name: v for v in proto.graph.input}  # an input with a default keeps its own batch
    inputs = [declared[plain[v.name]] if plain[v.name] in defaults else _named(v, plain[v.name])
              for v in body.input]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.output.extend(_named(v, plain[v.name]) for v in body.output)
    return out, batch


def _renamed(node: onnx.NodeProto, names: dict) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    out.input[:] = [names.get(n, n) for n in node.input]
    out.output[:] = [names.get(n, n) for n in node.output]
    return out


def _named(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    return out


def _batched(value: onnx.ValueInfoProto, dim: str) -> onnx.ValueInfoProto:
    """``value`` with its first axis symbolic."""
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    first = out.type.tensor_type.shape.dim[0]
    first.Clear()
    first.dim_param = dim
    return out


class _Emitter:
    """Nodes of the outer graph, named ``batch/…``, and their int64 constants."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []

    def __call__(self, op: str, *inputs, **attributes) -> str:
        name = f"batch/{len(self.nodes)}_{op}"
        self.nodes.append(helper.make_node(op, list(inputs), [name], name, **attributes))
        return name

    def const(self, value: int, scalar: bool = False) -> str:
        name = f"batch/{len(self.nodes)}_const"
        array = np.array(value if scalar else [value], np.int64)
        self.nodes.append(helper.make_node("Constant", [], [name], name, value=numpy_helper.from_array(array)))
        return name
