"""Remove what carries no computation: Identity, Dropout (inference), Cast to the type a value already has,
Constant nodes (→ initializers), dead nodes.

Spellings: torch's legacy export leaves Identity nodes (on parameters, and between a module's output and the
graph output); tf2onnx ends graphs in an Identity to the output name the TensorFlow graph gives, and writes a
``tf.cast`` of a float tensor to float as Cast(to=FLOAT); exports of models left in training mode keep
Dropout.

An Identity or Dropout that produces a graph output hands the output's name to the value it passes on, so
the op before it (a Softmax, say) is at the output; it stays an Identity only where that value is a graph
input, a constant or another output already.

Contract: afterwards no Dropout, same-type Cast or Constant node remains, no Identity remains except the
ones named above, and every constant is an initializer readable with :func:`relgraph.graph.const_array`.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from ..graph import attr, replace_value


def _passes_through(node: ir.Node) -> bool:
    """Whether ``node`` returns its first input unchanged (Dropout at inference; a Cast to its input's type)."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in ("Dropout", "Identity"):
        return True
    source = node.inputs[0] if node.inputs else None
    if node.op_type == "Cast":
        return source is not None and source.dtype is not None and attr(node, "to") == source.dtype
    if node.op_type == "CastLike":
        return source is not None and source.dtype is not None and source.dtype == node.inputs[1].dtype
    return False


class CleanupPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        graph = model.graph
        for node in list(graph):
            if not _passes_through(node):
                continue
            source, out = node.inputs[0], node.outputs[0]
            if out.is_graph_output():
                if source.is_graph_input() or source.is_graph_output() or source.is_initializer() \
                        or source.producer() is None:
                    # Keep the output name the user knows; an Identity there is free.
                    if node.op_type == "Identity":
                        continue
                    identity = ir.node("Identity", [source], name=node.name)
                    graph.insert_before(node, identity)
                    source = identity.outputs[0]
                replace_value(graph, out, source)
            else:
                out.replace_all_uses_with(source)
            graph.remove(node, safe=True)
            modified = True
        for p in (common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                  common.RemoveUnusedNodesPass()):
            modified |= p(model).modified
        return ir.passes.PassResult(model, modified)
