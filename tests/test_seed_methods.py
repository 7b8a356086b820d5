"""LRP read as back-propagation with one rule per layer type (a post building on Samek et al. 2016,
"Evaluating the visualization of what a deep neural network has learned", arXiv:1509.06321): its rules
(radial max, slope, repeat), its named methods as rule combinations, and the Q = R/a formulation of LRP-0.
References: float64 numpy written here from the post's formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import relgraph
from onnx_models import save_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "models" / "digits" / "digits_cnn.onnx")
X = np.load(ROOT / "models" / "digits" / "test_x.npy")[:12]


def run(tmp_path, model, x, target, name="e", **kw):
    res = relgraph.compile(model, output=str(tmp_path / f"{name}.onnx"), overwrite=True, **kw)
    return relgraph.Explainer(res.path).explain(x, target)


def rule_map(tmp_path, text, name="map"):
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------------------------------------- radial max


def radial_reference(x, R, k, s):
    """The post's radial rule per window, float64, loops (no padding)."""
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.zeros_like(x, dtype=np.float64)
    for b in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    win = x[b, ch, i * s:i * s + k, j * s:j * s + k].astype(np.float64)
                    m = win.max()
                    if m > 0:
                        share = np.where(win > 0, win, 0) / win[win > 0].sum()
                    else:
                        share = (1 / win) / (1 / win).sum()
                    out[b, ch, i * s:i * s + k, j * s:j * s + k] += share * R[b, ch, i, j]
    return out


@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 1)])
def test_radial_max_against_reference(tmp_path, seed, k, s):
    rng = np.random.default_rng(seed)
    shape = (2, 7, 7)
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    x[0, 1] = -np.abs(x[0, 1]) - 0.1  # an all-negative channel: every window takes the 1/a branch
    ho = (7 - k) // s + 1
    head = rng.normal(size=(4, 2 * ho * ho)).astype(np.float32)
    model = save_model(tmp_path / "m.onnx", [
        helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[k, k], strides=[s, s]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "V"], ["logits"], name="head", transB=1)], {"V": head}, shape, 4)
    target = np.array([0, 1, 3])
    rmap = rule_map(tmp_path, 'base = "gradient"\n[op_types]\nMaxPool = "radial"\n')
    out = run(tmp_path, model, x, target, rule_map=rmap)
    R = head[target].reshape(3, 2, ho, ho).astype(np.float64)
    expected = radial_reference(x, R, k, s)
    np.testing.assert_allclose(out["relevance"], expected, rtol=1e-4, atol=1e-5)
    # shares sum to one per window: relevance is conserved through the pool
    np.testing.assert_allclose(out["relevance"].sum((1, 2, 3)), R.sum((1, 2, 3)), rtol=1e-4)


# ------------------------------------------------------------------------------------------- nonlinearities


def _act_model(tmp_path, op, **attrs):
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(6, 5)).astype(np.float32)
    w2 = rng.normal(size=(3, 6)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1", transB=1),
             helper.make_node(op, ["h"], ["a"], name="act", **attrs),
             helper.make_node("Gemm", ["a", "W2"], ["logits"], name="fc2", transB=1)]
    return save_model(tmp_path / f"{op}.onnx", nodes, {"W1": w1, "W2": w2}, (5,), 3), w1, w2


ACTS = {"Relu": lambda h: np.maximum(h, 0), "Tanh": np.tanh, "LeakyRelu": lambda h: np.where(h > 0, h, 0.01 * h)}


@pytest.mark.parametrize("op", sorted(ACTS))
def test_slope_and_repeat(tmp_path, op):
    """Gradient matmul rules around the activation, so the references are plain matrix products."""
    model, w1, w2 = _act_model(tmp_path, op)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    target = np.array([0, 1, 2, 1])
    f = ACTS[op]
    h = x.astype(np.float64) @ w1.T.astype(np.float64)
    Ra = w2[target].astype(np.float64)  # gradient from the head, R_out = 1
    for rule, Rh in (("slope", f(h) / h * Ra), ("repeat", f(Ra))):
        rmap = rule_map(tmp_path, f'base = "gradient"\n[op_types]\n{op} = "{rule}"\n', rule)
        out = run(tmp_path, model, x, target, name=rule, rule_map=rmap)
        np.testing.assert_allclose(out["relevance"], Rh @ w1.astype(np.float64), rtol=1e-4, atol=1e-6)


def test_named_methods_are_rule_combinations(tmp_path):
    """The post's tables: gradient = (gradient, gradient, gradient); DeconvNet = (gradient max, gradient matmul,
    repeat at the rectifier); LRP = (gradient max, normalized matmul, ignore)."""
    combos = {
        "gradient": 'base = "gradient"\n[op_types]\nMaxPool = "gradient"\nConv = "gradient"\nGemm = "gradient"\n'
                    'Relu = "gradient"\n',
        "deconvnet": 'base = "gradient"\n[op_types]\nMaxPool = "gradient"\nConv = "gradient"\nGemm = "gradient"\n'
                     'Relu = "repeat"\n',
        "lrp": 'base = "lrp"\n[op_types]\nMaxPool = "gradient"\nConv = "normalized"\nGemm = "normalized"\n'
               'Relu = "ignore"\n',
    }
    for name, text in combos.items():
        named = run(tmp_path, DIGITS, X, 3, name=f"{name}-named", rule=name)
        combo = run(tmp_path, DIGITS, X, 3, name=f"{name}-combo", rule_map=rule_map(tmp_path, text, name))
        np.testing.assert_allclose(combo["relevance"], named["relevance"], rtol=1e-5, atol=1e-7)
        assert np.abs(named["relevance"]).sum() > 0


# ------------------------------------------------------------------------------------------- Q formulation


def test_q_equals_r_where_well_conditioned(tmp_path):
    r = run(tmp_path, DIGITS, X, None, name="r", rule="zero")
    q = run(tmp_path, DIGITS, X, None, name="q", rule="zero", formulation="q")
    err = np.linalg.norm(q["relevance"] - r["relevance"]) / np.linalg.norm(r["relevance"])
    assert err < 1e-4
    np.testing.assert_allclose(q["bias_relevance"], r["bias_relevance"], rtol=1e-3, atol=1e-4)
    # conservation of Σ a·Q: input relevance plus the biases' share is the logit
    logit = q["logits"][np.arange(len(X)), q["target"]]
    np.testing.assert_allclose(q["relevance"].reshape(len(X), -1).sum(1) + q["bias_relevance"], logit, rtol=1e-4)


def test_q_stays_finite_where_r_divides_by_zero(tmp_path):
    """A hidden unit with z = 0 exactly (no bias, orthogonal input) and a logit of exactly 0: LRP-0 in the R
    formulation divides 0 by 0; the Q formulation never divides."""
    w1 = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, 1.0], [0.0, 0.0, 1.0]], np.float32)
    w2 = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]], np.float32)
    model = save_model(tmp_path / "z.onnx", [helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1", transB=1),
                                       helper.make_node("Gemm", ["h", "W2"], ["logits"], name="fc2", transB=1)],
                 {"W1": w1, "W2": w2}, (3,), 2)
    x = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, -1.0]], np.float32)  # h0 = 0; sample 2 has logit 1 = 0
    r = run(tmp_path, model, x, np.array([0, 1]), name="r", rule="zero")
    q = run(tmp_path, model, x, np.array([0, 1]), name="q", rule="zero", formulation="q")
    assert not np.all(np.isfinite(r["relevance"]))
    assert np.all(np.isfinite(q["relevance"]))
    grad = np.stack([w2[0] @ w1, w2[1] @ w1])  # a linear model: x ⊙ ∂f/∂x is LRP-0's answer
    np.testing.assert_allclose(q["relevance"], x * grad, rtol=1e-6, atol=1e-6)


def test_scaling_equivalence(tmp_path):
    """The post's consistency property: a constant factor α read as a matrix (Gemm with αI) or as an
    elementwise nonlinearity (Mul by α) gets the same relevance, in the R and in the Q formulation."""
    alpha = 2.5
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    as_matrix = save_model(tmp_path / "mat.onnx", [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "A"], ["s"], name="scale", transB=1),
        helper.make_node("Gemm", ["s", "W"], ["logits"], name="fc", transB=1)],
        {"A": alpha * np.eye(4), "W": w}, (4,), 3)
    as_elementwise = save_model(tmp_path / "ew.onnx", [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "a"], ["s"], name="scale"),
        helper.make_node("Gemm", ["s", "W"], ["logits"], name="fc", transB=1)],
        {"a": np.array(alpha), "W": w}, (4,), 3)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    for formulation in ("r", "q"):  # ε guards R's division where the ReLU gave 0; Q has no division
        a = run(tmp_path, as_matrix, x, 1, name=f"m{formulation}", rule="epsilon", formulation=formulation)
        b = run(tmp_path, as_elementwise, x, 1, name=f"e{formulation}", rule="epsilon", formulation=formulation)
        np.testing.assert_allclose(a["relevance"], b["relevance"], rtol=1e-5, atol=1e-6)


def test_q_refuses_non_lrp0_rules(tmp_path):
    with pytest.raises(relgraph.RelgraphError, match="formulation q"):
        relgraph.compile(DIGITS, rule="zplus", formulation="q", output=str(tmp_path / "x.onnx"))


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_q_shares_a_constant_added_or_subtracted(tmp_path, op):
    """LRP-0 in the Q formulation on f(x) = W(x ± c) + b, linear: the input gets x ⊙ W_t, and the constant c is a
    bias whose share is ±⟨W_t, c⟩, so the biases hold b_t ± ⟨W_t, c⟩ (a sign error on c shows here)."""
    rng = np.random.default_rng(5)
    w, b, c = rng.normal(size=(3, 4)), rng.normal(size=3), rng.normal(size=4)
    model = save_model(tmp_path / f"{op}.onnx", [
        helper.make_node(op, ["x", "c"], ["shifted"], name="shift"),
        helper.make_node("Gemm", ["shifted", "W", "b"], ["logits"], name="fc", transB=1)],
        {"W": w, "b": b, "c": c}, (4,), 3)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    target = np.array([0, 1, 2, 0, 1])
    q = run(tmp_path, model, x, target, name=f"q{op}", rule="zero", formulation="q")
    sign = 1.0 if op == "Add" else -1.0
    np.testing.assert_allclose(q["relevance"], x * w[target], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q["bias_relevance"], b[target] + sign * w[target] @ c, rtol=1e-5, atol=1e-6)
