"""A square weight read as W by one product and as Wᵀ by another (an explainer's forward and backward pass).

OpenVINO's CPU plugin computes the second of such products as if it read the weight the other way round. The
portable explainer rewrites it with the weight as the left operand (:mod:`relgraph.shared_weights`):

- the rewrite computes the same values as the original graph on onnxruntime, for MatMul with a 2-d and a 3-d
  left operand and Gemm with transA, alpha and β·C;
- on OpenVINO, the rewritten graph equals onnxruntime, where the original did not;
- an MLP with a square layer, explained with ε and gradient, gives OpenVINO's numbers equal to onnxruntime's.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import relgraph
from relgraph.runtimes import installed_runtimes, open_session
from relgraph.shared_weights import read_one_way

import torch_models as tm

D = 16
HEAD = '<ir_version: 10, opset_import: ["" : 17]>\n'
FORMS = {  # the second product reads W the other way round from the first
    "matmul": "float[4,16] x, float[4,16] s) => (float[4,16] y, float[4,16] z) "
              "{ y = Gemm <transB = 1> (x, W) \n z = MatMul (s, W) }",
    "matmul-3d": "float[4,16] x, float[2,3,16] s) => (float[4,16] y, float[2,3,16] z) "
                 "{ y = Gemm <transB = 1> (x, W) \n z = MatMul (s, W) }",
    "gemm-transposed": "float[4,16] x, float[16,4] s) => (float[4,16] y, float[4,16] z) "
                       "{ y = MatMul (x, W) \n z = Gemm <transA = 1, transB = 1, alpha = 0.5, beta = 2.0> (s, W, C) }",
    "transpose": "float[4,16] x, float[4,16] s) => (float[4,16] y, float[4,16] z) "
                 "{ t = Transpose (W) \n y = MatMul (x, t) \n z = MatMul (s, W) }",
    "gemm": "float[4,16] x, float[4,16] s) => (float[4,16] y, float[4,16] z) "
            "{ y = MatMul (x, W) \n z2 = Gemm <transB = 1> (s, W, C) \n z = Gemm (z2, W) }",
}


def _model(form: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEAD + "g (" + FORMS[form])
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([numpy_helper.from_array(rng.normal(size=(D, D)).astype(np.float32), "W"),
                                    numpy_helper.from_array(rng.normal(size=D).astype(np.float32), "C")])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _feed(model: onnx.ModelProto) -> dict:
    rng = np.random.default_rng(1)
    return {i.name: rng.normal(size=[d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _run(model: onnx.ModelProto, runtime: str, feed: dict, tmp_path) -> dict:
    path = tmp_path / f"{runtime}.onnx"
    onnx.save(model, str(path))
    return open_session(str(path), runtime).run(feed)


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("form", FORMS)
def test_rewrite_keeps_the_values(form, tmp_path):
    original = _model(form)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert read_one_way(rewritten)
    onnx.checker.check_model(rewritten, full_check=True)
    flipped = {n.output[0] for n in rewritten.graph.node if n.op_type == "Transpose" and n.input == ["W"]}
    products = [n for n in rewritten.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in {"W", *flipped}]
    assert len({(n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)) != (n.input[1] in flipped)
                for n in products}) == 1  # every product left that takes W on the right reads it one way
    feed = _feed(original)
    want = _run(original, "reference", feed, tmp_path)
    got = _run(rewritten, "onnxruntime", feed, tmp_path)
    for k in want:
        assert got[k].shape == want[k].shape
        assert _relative(got[k], want[k]) < 1e-6, k


@pytest.mark.skipif("openvino" not in installed_runtimes(), reason="OpenVINO is not installed")
@pytest.mark.parametrize("form", FORMS)
def test_openvino_agrees_once_rewritten(form, tmp_path):
    original = _model(form)
    feed = _feed(original)
    want = _run(original, "onnxruntime", feed, tmp_path)
    read_one_way(original)
    after = _run(original, "openvino", feed, tmp_path)
    for k in want:
        assert _relative(after[k], want[k]) < 1e-5, k


class SquareMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.skipif("openvino" not in installed_runtimes(), reason="OpenVINO is not installed")
@pytest.mark.parametrize("rule", ["gradient", "epsilon", "alpha-beta", "w-square"])
def test_square_layers_explained_on_openvino(rule, tmp_path):
    torch.manual_seed(0)
    path = tm.export(SquareMLP().eval(), torch.zeros(2, 8), tmp_path / "mlp.onnx", dynamo=False)
    explainer = relgraph.compile(str(path), rule, output=str(tmp_path / "e.onnx")).path
    x = tm.random_input((5, 8), seed=3)
    want = relgraph.Explainer(explainer).explain(x)
    got = relgraph.Explainer(explainer, runtime="openvino").explain(x, want["target"])
    for k in ("logits", "relevance", "bias_relevance"):
        assert _relative(got[k], want[k]) < 1e-5, k
