"""The facts a rule record declares, and the proofs that read them, against the float64 dense reference.

The relevance pass proves two things over the graph from facts declared next to each rule and op
(``relgraph.rules.registry``): which values are ≥ 0 (the γ/αβ steps then drop every x⁻ term), and which
values' relevance vanishes wherever the value does (an ε step then divides by the following ReLU's output
plus ε instead of stab(z)). A wrong fact gives wrong relevance without an error, so each case here builds a
graph where a wrong fact would apply, and compares the explainer with ``tests/reference.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import relgraph
from relgraph.rules.functions import FUNCTIONS
from relgraph.rules.registry import EPSILON_OF, KIND_RULES, RULES

import reference as ref
from onnx_models import save_model

RNG = np.random.default_rng(7)
W1, B1 = RNG.normal(size=(5, 6)), RNG.normal(size=5) * 0.5
W2, B2 = RNG.normal(size=(3, 7)), RNG.normal(size=3) * 0.5
X = RNG.normal(size=(4, 6)).astype(np.float32)


def _rel_l2(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _explain(tmp_path, nodes, inits, rule_map: str, target, ints=None, compiled=None):
    """Relevance and logits of the model ``nodes`` (float initializers ``inits``, int64 ones ``ints``);
    ``compiled``, a list, receives the compile result."""
    path = save_model(tmp_path / "m.onnx", nodes, inits, [6], 3)
    model = onnx.load(path)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v, np.int64), k)
                                   for k, v in (ints or {}).items())
    onnx.save(model, path)
    (tmp_path / "map.toml").write_text(rule_map)
    out = relgraph.compile(path, rule_map=str(tmp_path / "map.toml"), output=str(tmp_path / "e.onnx"))
    if compiled is not None:
        compiled.append(out)
    return relgraph.Explainer(out.path).explain(X, target)


def _first_layer():
    """(z1, the ReLU output) of the first layer, in float64."""
    z1 = X.astype(np.float64) @ W1.T + B1
    return z1, np.maximum(z1, 0)


def _target_logits(logits, target):
    """R at the output: the target logit, zero elsewhere."""
    R = np.zeros_like(logits)
    R[np.arange(len(target)), target] = logits[np.arange(len(target)), target]
    return R


@pytest.mark.parametrize("value", [-1.0, 0.0])
def test_pad_with_a_negative_value_is_not_proven_nonnegative(tmp_path, value):
    """Relu → Pad(constant) → Gemm under γ. Padding with −1 makes the Gemm's input negative at the padded
    positions: the γ step must keep its x⁻ terms there (before the sign facts read the pad value, it dropped
    them: 78 % relative L2 off). Padding with 0 keeps the input ≥ 0, and the step without x⁻ terms is exact."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Pad", ["a1", "pads", "value"], ["p1"], mode="constant"),
             helper.make_node("Gemm", ["p1", "W2", "B2"], ["logits"], transB=1, name="fc2")]
    inits = {"W1": W1, "B1": B1, "W2": W2, "B2": B2, "value": np.array(value)}
    target, compiled = np.array([0, 1, 2, 0]), []
    res = _explain(tmp_path, nodes, inits, 'base = "epsilon"\n[op_types]\nGemm = "gamma"\n', target,
                   ints={"pads": [0, 1, 0, 1]}, compiled=compiled)

    _, a1 = _first_layer()
    padded = np.pad(a1, ((0, 0), (1, 1)), constant_values=value)
    logits = padded @ W2.T + B2
    r_pad, _ = ref.gamma(padded, ref.gemm_matrix(W2), B2, _target_logits(logits, target), 0.25)
    r_x, _ = ref.gamma(X, ref.gemm_matrix(W1), B1, r_pad[:, 1:-1], 0.25)
    assert _rel_l2(res["logits"], logits) < 1e-5
    assert _rel_l2(res["relevance"], r_x) < 1e-4
    # the proof fires where it holds: fc2's γ step drops the x⁻ terms exactly when the pad keeps x ≥ 0
    assert set(compiled[0].relevance.functions) == {"GammaGemmOnNonnegative" if value >= 0 else "GammaGemm", "GammaGemm"}


def test_bias_add_under_gradient_does_not_keep_zeros(tmp_path):
    """Gemm(ε) → Relu → Add(c) → Gemm(ε), the Add given the gradient by a rule map. Its relevance passes
    unchanged, so the ReLU's output gets relevance where it is 0 (y + c ≠ 0): the first ε step must divide
    by stab(z), not by y + ε (before the gradient on a bias add stopped claiming to keep zeros, it divided by
    ε where z < 0: 206 % off)."""
    c = RNG.normal(size=5)
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Add", ["a1", "c"], ["s1"], name="shift"),
             helper.make_node("Gemm", ["s1", "W2s", "B2"], ["logits"], transB=1, name="fc2")]
    w2 = W2[:, :5]
    inits = {"W1": W1, "B1": B1, "c": c, "W2s": w2, "B2": B2}
    target = np.array([2, 0, 1, 1])
    eps = 0.25
    res = _explain(tmp_path, nodes, inits, f'base = "epsilon"\n[params]\nepsilon = {eps}\n[op_types]\n'
                                          'Add = "gradient"\n', target)
    z1, a1 = _first_layer()
    assert (z1 < 0).any()
    s1 = a1 + c
    logits = s1 @ w2.T + B2
    r_s1, _ = ref.epsilon(s1, ref.gemm_matrix(w2), B2, _target_logits(logits, target), eps)
    r_x, _ = ref.epsilon(X, ref.gemm_matrix(W1), B1, r_s1, eps)  # the ReLU passes R_y = R_{y + c}
    assert _rel_l2(res["logits"], logits) < 1e-5
    assert _rel_l2(res["relevance"], r_x) < 1e-4


def test_records_are_consistent():
    """Each (op, kind, rule) has one record; the ε family is the stabilized rules; every kind's names are
    those of its records; every model-local function names a kernel the lowering knows."""
    from relgraph.lowering.plan import KERNEL_OPS

    names = {kind: set() for kind in KIND_RULES}
    for op, records in RULES.items():
        for (kind, name), rule in records.items():
            assert (rule.op, rule.kind, rule.name) == (op, kind, name)
            assert not rule.stabilized or name in EPSILON_OF
            names[kind].add(name)
    assert names == {kind: set(v) for kind, v in KIND_RULES.items()}
    # every ε-family name is stabilized wherever it is registered
    assert all(rule.stabilized for records in RULES.values() for (_, name), rule in records.items()
               if name in EPSILON_OF)
    assert {f.kernel for f in FUNCTIONS.values()} <= set(KERNEL_OPS)


def test_every_rule_that_cannot_run_is_named_before_the_walk(tmp_path):
    """z^B without bounds, a pattern rule without patterns, the uniform rule on a quotient and a gate on a
    scaling: one error, raised before anything is emitted, naming each node and the rules that apply there;
    no explainer file is written."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Div", ["a1", "a1"], ["q"], name="ratio"),
             helper.make_node("Mul", ["a1", "q"], ["g"], name="gated"),
             helper.make_node("Mul", ["g", "half"], ["h"], name="scaled"),
             helper.make_node("Gemm", ["h", "W2s", "B2"], ["logits"], transB=1, name="fc2")]
    inits = {"W1": W1, "B1": B1, "half": np.array(0.5), "W2s": W2[:, :5], "B2": B2}
    rule_map = ('base = "epsilon"\n[names]\n"fc1" = "zbox"\n"fc2" = "pattern"\n"ratio" = "uniform"\n'
                '"scaled" = "gate"\n')
    with pytest.raises(relgraph.RelgraphError) as caught:
        _explain(tmp_path, nodes, inits, rule_map, np.zeros(4, np.int64))
    message = str(caught.value)
    assert "\n" not in message
    for part in ("'zbox' for Gemm 'fc1': needs input bounds", "'pattern' for Gemm 'fc2': needs fitted patterns",
                 "rule 'uniform' (name glob 'ratio') does not apply to Div 'ratio' (a product op: gradient, gate)",
                 "does not apply to Mul 'scaled' (a scale op: gradient, norm, epsilon, normalized, zero)"):
        assert part in message, message
    assert not (tmp_path / "e.onnx").exists()


def test_lrp_zero_before_a_relu_divides_by_z(tmp_path):
    """LRP-0 (ε = 0) on a layer whose output feeds a ReLU: the ReLU's output may stand in for z only with an
    ε > 0 (y + ε); at ε = 0, y is 0 wherever z ≤ 0 and the quotient would be 0/0."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2s", "B2"], ["logits"], transB=1, name="fc2")]
    w2 = W2[:, :5]
    target = np.array([1, 2, 0, 1])
    res = _explain(tmp_path, nodes, {"W1": W1, "B1": B1, "W2s": w2, "B2": B2}, 'base = "zero"\n', target)
    z1, a1 = _first_layer()
    assert (z1 < 0).any()
    logits = a1 @ w2.T + B2
    r_a1, _ = ref.epsilon(a1, ref.gemm_matrix(w2), B2, _target_logits(logits, target), 0.0)
    r_x, _ = ref.epsilon(X, ref.gemm_matrix(W1), B1, r_a1, 0.0)
    assert np.isfinite(res["relevance"]).all()
    assert _rel_l2(res["relevance"], r_x) < 1e-4


def test_an_op_check_names_its_node(tmp_path):
    """A node the op's check refuses (a constant divided by an activation) is listed with the reason."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Sigmoid", ["z1"], ["a1"]),
             helper.make_node("Div", ["one", "a1"], ["r"], name="reciprocal"),
             helper.make_node("Gemm", ["r", "W2s", "B2"], ["logits"], transB=1, name="fc2")]
    inits = {"W1": W1, "B1": B1, "one": np.ones(5), "W2s": W2[:, :5], "B2": B2}
    with pytest.raises(relgraph.RelgraphError, match="Div 'reciprocal'.*a reciprocal"):
        _explain(tmp_path, nodes, inits, 'base = "epsilon"\n', np.zeros(4, np.int64))


def test_layer_norm_with_its_statistics_outputs_explains_the_same(tmp_path):
    """Invariance: a LayerNormalization that also returns its mean and inverse deviation (unused) computes the
    same function as one that does not, and gets the same relevance: the rule reads the normalized output."""
    def nodes(outputs):
        return [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
                helper.make_node("LayerNormalization", ["z1", "gamma", "beta"], outputs, axis=-1, name="ln"),
                helper.make_node("Relu", ["n1"], ["a1"]),
                helper.make_node("Gemm", ["a1", "W2s", "B2"], ["logits"], transB=1, name="fc2")]
    inits = {"W1": W1, "B1": B1, "gamma": RNG.normal(size=5), "beta": RNG.normal(size=5), "W2s": W2[:, :5],
             "B2": B2}
    target = np.array([0, 2, 1, 2])
    plain = _explain(tmp_path, nodes(["n1"]), inits, 'base = "epsilon"\n', target)
    (tmp_path / "e.onnx").unlink()
    with_stats = _explain(tmp_path, nodes(["n1", "mean", "inv_std"]), inits, 'base = "epsilon"\n', target)
    assert _rel_l2(with_stats["relevance"], plain["relevance"]) < 1e-6
    assert np.allclose(with_stats["bias_relevance"], plain["bias_relevance"], rtol=1e-5, atol=1e-6)


def test_a_rule_outside_the_eps_family_cannot_be_declared_stabilized():
    """The registry refuses a record whose facts contradict the rule's name (γ does not divide by stab(z))."""
    from relgraph.rules.registry import AFFINE, defrule

    with pytest.raises(AssertionError, match="the ε family"):
        defrule("Gemm", AFFINE, "gamma", stabilized=True)


def test_eps_step_before_a_relu_reads_the_relu_output(tmp_path):
    """At ε > 0, fc1's denominator is the ReLU's output + ε (its relevance vanishes where z ≤ 0): one sign
    test in the explainer, the output layer's, instead of two; the numbers are those of stab(z)."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["z1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2s", "B2"], ["logits"], transB=1, name="fc2")]
    w2, target, compiled = W2[:, :5], np.array([1, 0, 2, 2]), []
    res = _explain(tmp_path, nodes, {"W1": W1, "B1": B1, "W2s": w2, "B2": B2},
                   'base = "epsilon"\n[params]\nepsilon = 0.25\n', target, compiled=compiled)
    signs = [n for n in onnx.load(compiled[0].path).graph.node if n.op_type == "GreaterOrEqual"]
    assert len(signs) == 1
    z1, a1 = _first_layer()
    logits = a1 @ w2.T + B2
    r_a1, _ = ref.epsilon(a1, ref.gemm_matrix(w2), B2, _target_logits(logits, target), 0.25)
    r_x, _ = ref.epsilon(X, ref.gemm_matrix(W1), B1, r_a1, 0.25)
    assert _rel_l2(res["relevance"], r_x) < 1e-4


def test_eps_layers_feeding_a_residual_sum_take_their_share(tmp_path):
    """Two ε layers summed (a residual connection): the sum hands each its share q = R ⊘ stab(z₁ + z₂)
    unmultiplied (``Share``), and each layer divides z ⊙ q by stab(z) without a sign test. The numbers are
    the plain ε split followed by each layer's ε step."""
    w1b, b1b = RNG.normal(size=(5, 6)), RNG.normal(size=5) * 0.5
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Gemm", ["x", "W1b", "B1b"], ["z2"], transB=1, name="fc1b"),
             helper.make_node("Add", ["z1", "z2"], ["s"], name="residual"),
             helper.make_node("Relu", ["s"], ["a"]),
             helper.make_node("Gemm", ["a", "W2s", "B2"], ["logits"], transB=1, name="fc2")]
    w2, target, eps = W2[:, :5], np.array([2, 1, 0, 0]), 0.25
    res = _explain(tmp_path, nodes, {"W1": W1, "B1": B1, "W1b": w1b, "B1b": b1b, "W2s": w2, "B2": B2},
                   f'base = "epsilon"\n[params]\nepsilon = {eps}\n', target)
    x = X.astype(np.float64)
    z1, z2 = x @ W1.T + B1, x @ w1b.T + b1b
    a = np.maximum(z1 + z2, 0)
    logits = a @ w2.T + B2
    r_a, _ = ref.epsilon(a, ref.gemm_matrix(w2), B2, _target_logits(logits, target), eps)
    q = r_a / ref.stab(z1 + z2, 1e-6)  # the sum's norm rule: the fixed stabilizer
    r_x = ref.epsilon(x, ref.gemm_matrix(W1), B1, z1 * q, eps)[0] + ref.epsilon(x, ref.gemm_matrix(w1b), b1b, z2 * q,
                                                                                  eps)[0]
    assert _rel_l2(res["relevance"], r_x) < 1e-4
