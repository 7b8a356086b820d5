"""Shape inference with a symbolic batch axis.

Contract: every value gets a shape where onnx's inference (with data propagation) can prove one; the
first axis of every graph input is made symbolic ("batch") so that the explainer keeps a dynamic batch.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common


class InferShapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.inputs:
            if value.shape is not None and len(value.shape) > 0 and isinstance(value.shape[0], int):
                value.shape = ir.Shape(["batch", *list(value.shape)[1:]])
        for node in model.graph:  # drop stale shapes (a fixed export batch) so inference recomputes them
            for out in node.outputs:
                out.shape = None
        return common.ShapeInferencePass(strict_mode=False)(model)
