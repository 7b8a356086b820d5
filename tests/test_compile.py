"""The explainer as a product: its interface, its validity, conservation, and rule maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import relgraph

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "models" / "digits" / "digits_cnn.onnx")
X = np.load(ROOT / "models" / "digits" / "test_x.npy")[:16]


def compile_(tmp_path, rule="epsilon", **kw):
    return relgraph.compile(MODEL, rule=rule, output=str(tmp_path / f"{rule}.onnx"), overwrite=True, **kw)


def test_explainer_interface(tmp_path):
    res = compile_(tmp_path, "epsilon", bias_relevance="per-layer", keep_functions=True)
    proto = onnx.load(res.path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 10
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert {"EpsilonConvUnitStride", "EpsilonGemm"} <= {f.name for f in proto.functions}
    assert all(f.domain == "relgraph" for f in proto.functions)
    inputs = {i.name: i for i in proto.graph.input}
    assert set(inputs) == {"input", "target"}
    assert inputs["target"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    outputs = [o.name for o in proto.graph.output]
    assert outputs[0] == "logits" and "relevance" in outputs and "bias_relevance" in outputs
    per_layer = [o for o in outputs if o.startswith("bias_relevance/")]
    assert len(per_layer) == 4  # three convs and the dense head carry biases
    session = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    for n in (1, 5, 16):  # dynamic batch
        values = dict(zip(outputs, session.run(None, {"input": X[:n], "target": np.full(n, -1, np.int64)})))
        np.testing.assert_allclose(values["logits"], plain.run(None, {"input": X[:n]})[0], rtol=1e-5, atol=1e-5)
        assert values["relevance"].shape == X[:n].shape
        total = sum(values[o] for o in per_layer)
        np.testing.assert_allclose(values["bias_relevance"], total, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["zero", "epsilon", "flat", "w-square", "zplus", "epsilon-plus-flat"])
def test_conservation_with_biases_as_inputs(tmp_path, rule):
    """Σ R_input + Σ R_bias = R_out = f_c(x): exact up to float32 and the 1e-6 stabilizer."""
    out = relgraph.Explainer(compile_(tmp_path, rule, epsilon=1e-9).path).explain(X)
    logit = out["logits"][np.arange(len(X)), out["target"]]
    total = out["relevance"].reshape(len(X), -1).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(total, logit, rtol=1e-3)


def test_target_selects_class_and_scales_relevance(tmp_path):
    ex = relgraph.Explainer(compile_(tmp_path, "epsilon").path)
    predicted = ex.explain(X)
    assert np.array_equal(predicted["target"], predicted["logits"].argmax(1))
    t = (predicted["target"] + 1) % 10
    other = ex.explain(X, t)
    assert np.array_equal(other["target"], t)
    logit = other["logits"][np.arange(len(X)), t]
    np.testing.assert_allclose(other["relevance"].reshape(len(X), -1).sum(1) + other["bias_relevance"], logit,
                               rtol=1e-3, atol=1e-4)


def test_lrp0_equals_input_times_gradient_on_relu_networks(tmp_path):
    """With Q = R/a, LRP-0 propagates Q exactly as the gradient through affine layers, ReLUs and max pooling
    (the Q = R/a reformulation), and Q_out = f_c/f_c = 1: so LRP-0 from R_out = f_c equals x ⊙ ∂f_c/∂x, biases or not."""
    zero = relgraph.Explainer(compile_(tmp_path, "zero").path).explain(X, 2)
    ixg = relgraph.Explainer(compile_(tmp_path, "input-x-gradient").path).explain(X, 2)
    err = np.linalg.norm(zero["relevance"] - ixg["relevance"]) / np.linalg.norm(ixg["relevance"])
    assert err < 1e-4


def test_rule_map_precedence(tmp_path):
    rmap = tmp_path / "m.toml"
    rmap.write_text(
        'base = "epsilon"\nfirst = "flat"\n[params]\nepsilon = 0.01\n'
        '[op_types]\nConv = { rule = "gamma", gamma = 0.5 }\n[names]\n"/6/*" = "zplus"\n'
    )
    res = relgraph.compile(MODEL, rule_map=str(rmap), output=str(tmp_path / "o.onnx"))
    rules = res.relevance.rules()
    assert rules["/0/Conv"] == "flat"          # first layer beats op type
    assert rules["/3/Conv"] == "gamma"         # op type
    assert rules["/6/Conv"] == "zplus"         # name glob beats op type
    assert rules["/9/Gemm"] == "epsilon"       # base
    assert res.relevance.choices["/3/Conv"].params.gamma == 0.5
    assert res.relevance.choices["/9/Gemm"].params.epsilon == 0.01


def test_compile_time_and_canonical_form(tmp_path):
    res = compile_(tmp_path, "epsilon")
    ops = [n.op_type for n in onnx.load(res.path).graph.node]
    assert "BatchNormalization" not in ops  # folded into the first conv
    assert res.seconds < 5


def test_every_composite_default_fits_its_kind():
    """A composite's per-kind defaults must be rules of that kind (a typo would otherwise only surface when a
    model with that kind of op is compiled)."""
    from relgraph.rules import COMPOSITES, KIND_RULES

    for name, make in COMPOSITES.items():
        composite = make()
        assert set(composite.kinds) == set(KIND_RULES), name
        for kind, rule in composite.kinds.items():
            assert rule in KIND_RULES[kind], (name, kind, rule)


def test_inner_value_named_like_an_output(tmp_path):
    """A softmax model whose pre-softmax value is called 'logits' (and an inner 'relevance'): the explainer
    still returns outputs of those names, and they carry the explainer's values."""
    rng = np.random.default_rng(3)
    w, w2 = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["relevance"], transB=1),
         helper.make_node("Relu", ["relevance"], ["h"]),
         helper.make_node("Gemm", ["h", "W2"], ["logits"], transB=1),
         helper.make_node("Softmax", ["logits"], ["prob"], axis=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3])],
        [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "m.onnx")
    relgraph.compile(str(tmp_path / "m.onnx"), rule="zero", output=str(tmp_path / "e.onnx"))
    x = rng.normal(size=(2, 4)).astype(np.float32)
    out = relgraph.Explainer(str(tmp_path / "e.onnx")).explain(x, target=1)
    logits = np.maximum(x @ w.T, 0) @ w2.T
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5)
    # LRP-0 without biases conserves: Σ R_x = the target logit
    np.testing.assert_allclose(out["relevance"].sum(1), logits[:, 1], rtol=1e-4)
