"""Write a GatherND with constant single-axis indices as a Gather along axis 0.

    y[i…] = x[k(i…), …]   with batch_dims = 0 and indices k of shape [I…, 1]
          = Gather(x, k[…, 0], axis=0)

Both pick whole rows of x along its first axis by the same constant indices: one function, and the Gather has
its rules (the adjoint that sums R back into the picked rows, exact under every rule). torch's dynamo export
writes a 1-d ``F.interpolate`` (``nn.Upsample(mode="linear"|"nearest")`` on [N, C, L]) as Transpose → GatherND
→ Transpose, the gathered axis moved first.

Skipped: indices computed at run time, ``batch_dims`` ≠ 0, indices that address more than one axis.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import NodeRewritePass
from .match import Emitter
from ..graph import attr, const_array


class GatherNDAsGatherPass(NodeRewritePass):
    op_types = ("GatherND",)

    def rewrite(self, graph: ir.Graph, node: ir.Node, opset: int) -> str | None:
        indices = const_array(node.inputs[1])
        if indices is None:
            return "its indices are computed at run time"
        if int(attr(node, "batch_dims", 0)) != 0:
            return "it gathers per batch (batch_dims ≠ 0)"
        if indices.ndim == 0 or indices.shape[-1] != 1:
            return "its indices address more than one axis"
        emit = Emitter(graph, node)
        rows = emit.constant(np.ascontiguousarray(indices[..., 0]).astype(np.int64))
        gathered = emit("Gather", node.inputs[0], rows, axis=0)
        gathered.shape = node.outputs[0].shape
        emit.replace(node.outputs[0], gathered)
        graph.remove(node, safe=True)
        return None
