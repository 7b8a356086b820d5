"""What every canonicalization pass shares: it says why it left something alone."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

STANDARD = ("", "ai.onnx")


class ReportingPass(ir.passes.InPlacePass):
    """An in-place pass that collects, in ``skipped``, one line per node it declined to rewrite and why
    (``relgraph inspect`` prints them)."""

    def __init__(self):
        super().__init__()
        self.skipped: list[str] = []


class NodeRewritePass(ReportingPass):
    """A pass that rewrites each node of ``op_types`` on its own: :meth:`rewrite` returns None when it rewrote
    the node, else why it did not (reported in ``skipped``). What a rewrite leaves unused is removed."""

    op_types: tuple[str, ...] = ()

    def rewrite(self, graph: ir.Graph, node: ir.Node, opset: int) -> str | None:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, opset = model.graph, model.opset_imports.get("", 17)
        modified = False
        for node in list(graph):
            if node.domain not in STANDARD or node.graph is None or node.op_type not in self.op_types:
                continue
            why = self.rewrite(graph, node, opset)
            if why:
                self.skipped.append(f"{node.op_type} '{node.name}' kept: {why}")
            else:
                modified = True
        if modified:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
