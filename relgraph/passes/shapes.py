"""Shape inference with a symbolic batch axis.

Contract: every value gets a shape where onnx's inference (with data propagation) can prove one; the
first axis of every graph input is made symbolic ("batch") so that the explainer keeps a dynamic batch; the
static batch size an export had is kept in ``graph.meta[EXPORT_BATCH]`` (its Reshape targets spell it out).
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

EXPORT_BATCH = "relgraph.export_batch"  # graph.meta: the static batch size the model was exported with


class InferShapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.inputs:
            if value.shape is not None and len(value.shape) > 0 and isinstance(value.shape[0], int):
                model.graph.meta.setdefault(EXPORT_BATCH, value.shape[0])
                value.shape = ir.Shape(["batch", *list(value.shape)[1:]])
        for node in model.graph:  # drop stale shapes (a fixed export batch) so inference recomputes them
            for out in node.outputs:
                out.shape = None
        return common.ShapeInferencePass(strict_mode=False)(model)
