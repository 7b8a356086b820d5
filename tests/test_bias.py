"""Blame the bias: a layer's bias is its input, and bias relevance is what flows into it.

A Conv or Gemm followed by an Add of one constant per output channel takes that constant as its bias
(``BiasAsInputPass``). The ε step then stabilizes z = x ⋆ W + c once, as the rule reads; without the fold the
Add would take its own ε split, and at a visible ε the relevance differs. Each case checks the fold in the
compiled graph and the numbers against the float64 dense reference (``tests/reference.py``), per layer.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import relgraph

import reference as ref
from onnx_models import save_model

EPS = 0.25
RNG = np.random.default_rng(11)


def _rel_l2(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _compile(tmp_path, nodes, inits, x_shape):
    path = save_model(tmp_path / "m.onnx", nodes, inits, x_shape, 3)
    (tmp_path / "map.toml").write_text(f'base = "epsilon"\n[params]\nepsilon = {EPS}\n')
    return relgraph.compile(path, rule_map=str(tmp_path / "map.toml"), output=str(tmp_path / "e.onnx"),
                            bias_relevance="per-layer")


def _layer_inputs(result, name: str) -> int:
    return next(len(n.input) for n in result.proto.graph.node if n.name == name)


def _check(result, x, target, M1, c, W2, B2):
    """The explainer against ε on layer 1 (matrix M1, bias c, then a ReLU) and layer 2 (W2, B2)."""
    out = relgraph.Explainer(result.path).explain(x, target)
    xf = x.reshape(len(x), -1).astype(np.float64)
    z1 = xf @ M1 + c
    a1 = np.maximum(z1, 0)
    logits = a1 @ W2.T + B2
    R = np.zeros_like(logits)
    R[np.arange(len(x)), target] = logits[np.arange(len(x)), target]
    r_a1, bias2 = ref.epsilon(a1, ref.gemm_matrix(W2), B2, R, EPS)
    r_x, bias1 = ref.epsilon(xf, M1, c, r_a1, EPS)
    assert _rel_l2(out["logits"], logits) < 1e-5
    assert _rel_l2(out["relevance"].reshape(len(x), -1), r_x) < 1e-4
    assert _rel_l2(out["outputs"]["bias_relevance/fc1"], bias1) < 1e-4
    assert _rel_l2(out["bias_relevance"], bias1 + bias2) < 1e-4


def test_gemm_then_add_takes_the_constant_as_its_bias(tmp_path):
    W1, c = RNG.normal(size=(5, 6)), RNG.normal(size=5)
    W2, B2 = RNG.normal(size=(3, 5)), RNG.normal(size=3) * 0.5
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["z"], transB=1, name="fc1"),
             helper.make_node("Add", ["z", "c"], ["z1"], name="shift"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2", "B2"], ["logits"], transB=1, name="fc2")]
    result = _compile(tmp_path, nodes, {"W1": W1, "c": c, "W2": W2, "B2": B2}, [6])
    assert _layer_inputs(result, "fc1") == 3 and not any(n.name == "shift" for n in result.proto.graph.node)
    x = RNG.normal(size=(4, 6)).astype(np.float32)
    _check(result, x, np.array([0, 1, 2, 1]), ref.gemm_matrix(W1), c, W2, B2)


@pytest.mark.parametrize("c_shape", [(4, 1, 1), (1, 4, 1, 1)])
def test_conv_then_add_takes_the_constant_as_its_bias(tmp_path, c_shape):
    W1, c = RNG.normal(size=(4, 2, 3, 3)) * 0.5, RNG.normal(size=4)
    W2, B2 = RNG.normal(size=(3, 4 * 3 * 3)) * 0.3, RNG.normal(size=3) * 0.5
    nodes = [helper.make_node("Conv", ["x", "W1"], ["z"], name="fc1"),
             helper.make_node("Add", ["z", "c"], ["z1"], name="shift"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Flatten", ["a1"], ["f"]),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["logits"], transB=1, name="fc2")]
    result = _compile(tmp_path, nodes, {"W1": W1, "c": c.reshape(c_shape), "W2": W2, "B2": B2}, [2, 5, 5])
    assert _layer_inputs(result, "fc1") == 3 and not any(n.name == "shift" for n in result.proto.graph.node)
    x = RNG.normal(size=(3, 2, 5, 5)).astype(np.float32)
    M1, _ = ref.conv_matrix(W1, (2, 5, 5))
    _check(result, x, np.array([2, 0, 1]), M1, ref.bias_vector(c, (4, 3, 3)), W2, B2)
