"""Fold shape-computing subgraphs to constants.

Three cases, all produced by torch exports:

* a node whose inputs are all constants is evaluated once (onnx's reference evaluator) and replaced
  by an initializer;
* a Reshape whose target shape is computed at run time from ``Shape(x)`` (``x.view(x.size(0), -1)``,
  the dynamo export's ``sym_size``) gets the constant target ``[-1, d1, …]`` when shape inference
  proves every non-batch output dimension, or else when evaluating the target with the batch set to two
  sizes shows that only its first entry follows the batch (the legacy export's
  ``x.view(x.size(0), -1)`` next to a dynamic batch, whose −1 onnx's inference cannot resolve);
* a lookup of static dimensions, ``Shape(x)`` or ``Gather(Shape(x), i)`` where every dimension it reads
  is static (the legacy export's ``torch.chunk`` computes its slice bounds from ``x.size(1)``), becomes a
  constant, so that the arithmetic on it folds by the first rule.

Folding one value can prove the shapes another case needs (constant pads give a Pad its output shape,
which a later ``Shape`` reads), so the pass sweeps the graph, infers shapes again and repeats until a
sweep changes nothing; ``skipped`` reports the last sweep.

Contract: after this pass every Reshape on the relevance path has a constant shape, or the pass says
why not in ``skipped``. Requires shapes inferred on the model; leaves them inferred.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper
import onnx_ir.passes.common as common
from onnx.reference import ReferenceEvaluator

from .base import ReportingPass
from .match import Emitter
from ..graph import add_initializer, attr, const_array, is_const, replace_value
from .shapes import EXPORT_BATCH, InferShapesPass

_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


class FoldConstantsPass(ReportingPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        while True:
            self.skipped = []
            if not self._sweep(model):
                return ir.passes.PassResult(model, modified)
            modified = True
            common.RemoveUnusedNodesPass()(model)
            InferShapesPass()(model)

    def _sweep(self, model: ir.Model) -> bool:
        """One pass over the graph in order; True when something was folded."""
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type in _NEVER_FOLD or node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Reshape":
                modified |= self._fold_reshape_target(graph, node, model.opset_imports.get("", 17))
            elif node.op_type in ("Expand", "ConstantOfShape") and node.inputs[-1] is not None:
                modified |= self._fold_shape_operand(graph, node, model.opset_imports.get("", 17))
            if node.op_type in ("Shape", "Gather") and self._fold_static_dims(graph, node):
                modified = True
                continue
            if node.inputs and all(v is None or is_const(v) for v in node.inputs) \
                    and not any(o.is_graph_output() for o in node.outputs):
                modified |= self._evaluate(graph, node, model.opset_imports.get("", 17))
        return modified

    def _evaluate(self, graph, node, opset) -> bool:
        arrays = [None if v is None else const_array(v) for v in node.inputs]
        proto = ir.serde.serialize_node(node)
        names = [v.name if v is not None else "" for v in node.inputs]
        proto.input[:] = names
        try:
            fn_graph = helper.make_graph(
                [proto], "fold",
                [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                 for n, a in zip(names, arrays) if a is not None],
                [helper.make_tensor_value_info(o.name, onnx.TensorProto.UNDEFINED, None) for o in node.outputs],
            )
            m = helper.make_model(fn_graph, opset_imports=[helper.make_opsetid("", opset)])
            results = ReferenceEvaluator(m).run(None, {n: a for n, a in zip(names, arrays) if a is not None})
        except Exception as exc:  # an op the reference evaluator lacks: leave it to run time
            self.skipped.append(f"{node.op_type} '{node.name}': not evaluated at compile time ({exc})")
            return False
        for out, arr in zip(node.outputs, results):
            replace_value(graph, out, add_initializer(graph, f"{out.name}/folded", np.asarray(arr)))
        graph.remove(node, safe=True)
        return True

    def _fold_static_dims(self, graph, node) -> bool:
        """Shape(x)[start:end], or Gather of it with constant indices, when the dimensions read are static."""
        if node.outputs[0].is_graph_output():
            return False
        shape_node = node if node.op_type == "Shape" else node.inputs[0].producer()
        if shape_node is None or shape_node.op_type != "Shape" or shape_node.domain not in ("", "ai.onnx"):
            return False
        source = shape_node.inputs[0]
        if source is None or source.shape is None:
            return False
        read = list(source.shape)[attr(shape_node, "start", 0):attr(shape_node, "end", len(source.shape))]
        if node.op_type == "Gather":
            indices = const_array(node.inputs[1])
            if indices is None or attr(node, "axis", 0) != 0:
                return False
            flat = [read[int(i)] for i in np.asarray(indices).reshape(-1)]
            if not all(isinstance(d, int) for d in flat):
                return False
            value = np.asarray(flat, dtype=np.int64).reshape(np.shape(indices))
        else:
            if not all(isinstance(d, int) for d in read):
                return False
            value = np.asarray(read, dtype=np.int64)
        out = node.outputs[0]
        replace_value(graph, out, add_initializer(graph, f"{out.name}/folded", value))
        graph.remove(node, safe=True)
        return True

    def _fold_reshape_target(self, graph, node, opset) -> bool:
        if is_const(node.inputs[1]):
            return self._batch_in_target(graph, node)
        out = node.outputs[0]
        if out.shape is not None and all(isinstance(d, int) for d in list(out.shape)[1:]):
            target = np.array([-1] + [int(d) for d in list(out.shape)[1:]], dtype=np.int64)
        else:
            target = self._target_per_batch(graph, node, opset)
            if target is None:
                self.skipped.append(f"Reshape '{node.name}': output shape not proven static beyond the batch axis")
                return False
        node.replace_input_with(1, add_initializer(graph, f"{node.name}/target_shape", target))
        return True

    def _batch_in_target(self, graph, node) -> bool:
        """A constant target that spells out the batch size the model was exported with, [B, S, −1, d] (an
        export with a static batch), on an input whose batch axis is now symbolic: B becomes 0 (copy the
        input's batch) and the −1 is resolved from the input's per-sample size, so that shapes stay static
        beyond the batch axis."""
        batch = graph.meta.get(EXPORT_BATCH)
        target, x = const_array(node.inputs[1]), node.inputs[0]
        if batch is None or target is None or target.ndim != 1 or len(target) < 1 or target[0] != batch \
                or x.shape is None or len(x.shape) < 1 \
                or isinstance(x.shape[0], int) or not all(isinstance(d, int) for d in list(x.shape)[1:]):
            return False
        target = target.astype(np.int64).copy()
        per_sample, rest = int(np.prod(list(x.shape)[1:])), target[1:]
        known = int(np.prod(rest[rest != -1])) if np.any(rest != -1) else 1
        if np.sum(rest == -1) > 1 or np.any(rest == 0) or known == 0 or per_sample % known:
            return False
        rest[rest == -1] = per_sample // known
        if int(np.prod(rest)) != per_sample:
            return False
        target[0] = 0
        node.replace_input_with(1, add_initializer(graph, f"{node.name}/target_shape", target))
        # no zero was in the target: allowzero (the dynamo export sets it) changed nothing, and the 0 must copy
        node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)
        return True

    def _target_per_batch(self, graph, node, opset) -> np.ndarray | None:
        """The target shape of a Reshape computed from ``Shape`` of values static beyond the batch axis (the
        legacy export's ``x.view(x.size(0), -1)``: Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])), from
        :func:`_per_batch`: an entry that stays is a constant, the one that follows the batch becomes −1, and a
        −1 of the target is resolved from the input's per-sample size (one −1 at most may remain).
        """
        x = node.inputs[0]
        runs = _per_batch(graph, node.inputs[1], opset)
        if runs is None or x.shape is None or any(not isinstance(d, int) for d in list(x.shape)[1:]):
            return None
        (two, three), _ = runs
        if len(two) != len(three):
            return None
        follows = (two == 2) & (three == 3)
        if not np.all((two == three) | follows) or follows.sum() != 1 or not follows[0] \
                or np.any(two[1:] == 0) or np.sum(two[1:] == -1) > 1:
            return None
        target = two.astype(np.int64)
        target[0] = -1
        per_sample, known = int(np.prod(list(x.shape)[1:])), int(np.prod([d for d in target[1:] if d != -1]))
        if -1 in target[1:]:
            if known == 0 or per_sample % known:
                return None
            target[1:][target[1:] == -1] = per_sample // known
        return target

    def _fold_shape_operand(self, graph, node, opset) -> bool:
        """The shape an Expand or ConstantOfShape reads, computed at run time from ``Shape`` of values static
        beyond the batch axis (the legacy export's ``cls_token.expand(n, -1, -1)``: a Where over
        Equal(shape, −1)), rewritten as Concat(Shape(x)[0:1], constants): the entries that follow the batch
        read it, the rest are constants, and ONNX's shape inference then proves every other dimension."""
        shape = node.inputs[1] if node.op_type == "Expand" else node.inputs[0]
        if shape is None or is_const(shape) or _batch_and_constants(shape):
            return False
        runs = _per_batch(graph, shape, opset)
        if runs is None:
            return False
        (two, three), sources = runs
        follows = (two == 2) & (three == 3)
        if two.shape != three.shape or not np.all((two == three) | follows):
            return False
        batched = next((v for v in sources if v.shape is not None and len(v.shape) and
                        not isinstance(v.shape[0], int)), None)
        if follows.any() and batched is None:
            return False
        emit = Emitter(graph, node)
        pieces = []
        for entry, batch in zip(two.tolist(), follows.tolist()):
            if batch:
                piece = emit("Shape", batched, start=0, end=1)
            else:
                piece = emit.constant(np.array([entry], np.int64))
            piece.shape, piece.type = ir.Shape([1]), ir.TensorType(ir.DataType.INT64)
            pieces.append(piece)
        operand = emit("Concat", *pieces, axis=0) if len(pieces) > 1 else pieces[0]
        operand.shape, operand.type = ir.Shape([len(pieces)]), ir.TensorType(ir.DataType.INT64)
        node.replace_input_with(1 if node.op_type == "Expand" else 0, operand)
        return True


def _batch_and_constants(value) -> bool:
    """Whether ``value`` already is the form :meth:`_fold_shape_operand` writes: Shape(x)[0:1], or a Concat of
    it and constants."""
    producer = value.producer()
    pieces = producer.inputs if producer is not None and producer.op_type == "Concat" else [value]
    for piece in pieces:
        source = piece.producer() if piece is not None else None
        if not (is_const(piece) or source is not None and source.op_type == "Shape"
                and attr(source, "start", 0) == 0 and attr(source, "end", None) == 1):
            return False
    return True


def _per_batch(graph, value, opset):
    """An int tensor computed from ``Shape`` of values static beyond the batch axis, evaluated twice with every
    Shape replaced by its dimensions, the batch set to 2 and then 3: ((at 2, at 3), the values whose Shape it
    reads), or None when it reads anything else or an op the reference evaluator lacks."""
    shapes, inside, stack = [], set(), [value]
    while stack:
        v = stack.pop()
        if v is None or is_const(v) or id(v) in inside:
            continue
        producer = v.producer()
        if producer is None or producer.op_type in _NEVER_FOLD or producer.domain not in ("", "ai.onnx"):
            return None
        inside.add(id(v))
        if producer.op_type == "Shape":
            dims = list(producer.inputs[0].shape or [None])
            if any(not isinstance(d, int) for d in dims[1:]):
                return None
            shapes.append(producer)
        else:
            stack.extend(producer.inputs)
    sub = [n for n in graph if any(id(o) in inside for o in n.outputs)]
    runs = []
    for batch in (2, 3):
        protos = []
        for n in sub:
            if n.op_type == "Shape":
                dims = [batch] + list(n.inputs[0].shape)[1:]
                dims = dims[attr(n, "start", 0):attr(n, "end", len(dims))]
                protos.append(onnx.helper.make_node("Constant", [], [n.outputs[0].name],
                                                    value=onnx.numpy_helper.from_array(np.array(dims, np.int64))))
            else:
                protos.append(ir.serde.serialize_node(n))
        consts = {v.name: const_array(v) for n in sub for v in n.inputs if v is not None and is_const(v)}
        try:
            fn_graph = onnx.helper.make_graph(
                protos, "per_batch",
                [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                 for k, a in consts.items()],
                [onnx.helper.make_tensor_value_info(value.name, onnx.TensorProto.INT64, None)])
            m = onnx.helper.make_model(fn_graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
            runs.append(np.asarray(ReferenceEvaluator(m).run(None, consts)[0]).reshape(-1))
        except Exception:  # an op the reference evaluator lacks
            return None
    return tuple(runs), [n.inputs[0] for n in shapes]
