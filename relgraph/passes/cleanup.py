"""Remove what carries no computation: Identity, Dropout (inference), Constant nodes (→ initializers), dead nodes.

Contract: afterwards no Identity, Dropout or Constant node remains on a path from the inputs to the outputs,
and every constant is an initializer readable with :func:`relgraph.graph.const_array`.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from ..graph import replace_value


class CleanupPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        graph = model.graph
        for node in list(graph):
            if node.op_type in ("Dropout", "Identity") and node.domain == "":
                source, out = node.inputs[0], node.outputs[0]
                if out.is_graph_output():
                    # Keep the output name the user knows; an Identity there is free.
                    if node.op_type == "Identity":
                        continue
                    identity = ir.node("Identity", [source], name=node.name)
                    graph.insert_before(node, identity)
                    replace_value(graph, out, identity.outputs[0])
                else:
                    out.replace_all_uses_with(source)
                graph.remove(node, safe=True)
                modified = True
        for p in (common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                  common.RemoveUnusedNodesPass()):
            modified |= p(model).modified
        return ir.passes.PassResult(model, modified)

