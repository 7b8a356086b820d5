"""Small ONNX models written inline for the tests (helpers, not tests)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def save_model(path, nodes, inits, x_shape, classes) -> str:
    """A float32 model ``x [N, *x_shape] → logits [N, classes]`` from ``nodes`` and initializers ``inits``,
    opset 17, IR version 10 (what onnxruntime accepts)."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                          [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.save(m, str(path))
    return str(path)
