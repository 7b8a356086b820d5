"""Conservation: what the explainer hands out adds up to the explained logit.

With the bias treated as the weight of a constant-one input, a conservative rule splits the target
logit f_c(x) between the input and the biases: Σ relevance + bias_relevance = f_c(x), up to what the
stabilizer ε absorbs (negligible at ε = 1e-6). Checked on ResNet-18 with random weights (BatchNorm
folded, residual sums, max and average pooling) in both export forms.
"""

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch
from onnx import helper

import relgraph
from relgraph.cli import main

try:
    import reference as ref
    import torch_models as tm
    from onnx_models import save_model
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import reference as ref
    from tests import torch_models as tm
    from tests.onnx_models import save_model

TOLERANCE = 0.01  # relative, per sample
FORMS = {"legacy": False, "dynamo": True}
BOUNDS = (-3.0, 3.0)
# ResNet-18's conservative composites: ε on every layer, and zennit's composites (z⁺, αβ and γ are
# conservative like ε; z^B's bias terms cancel). flat and w² on every layer are not: they hand
# relevance to channels whose activations are all zero, which the ε of the average pooling drops.
RULES = ["epsilon", "epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"]


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resnet18")
    model = tm.resnet18(seed=1)
    return {form: tm.export(model, torch.zeros(1, 3, 64, 64), folder / f"resnet18_{form}.onnx", dynamo)
            for form, dynamo in FORMS.items()}


def _check(path, rule, x, target):
    with tm.compiled(path, rule=rule, epsilon=1e-6, bounds=BOUNDS) as result:
        out = relgraph.Explainer(result.path).explain(x, target=target)
    logit = out["logits"][np.arange(len(x)), out["target"]]
    total = tm.per_sample(out["relevance"]).sum(1) + out["bias_relevance"]
    error = np.abs(total - logit) / np.abs(logit)
    assert np.all(error < TOLERANCE), f"relative conservation error per sample {error} (logits {logit})"
    return error


@pytest.mark.parametrize("form", FORMS)
def test_epsilon_conserves_resnet18(resnet18, form):
    x = tm.random_input((4, 3, 64, 64), 0, *BOUNDS)
    _check(resnet18[form], "epsilon", x, None)                                      # predicted class
    _check(resnet18[form], "epsilon", x, np.array([0, 10, 500, 999], np.int64))      # other classes


@pytest.mark.parametrize("rule", RULES[1:])
@pytest.mark.parametrize("form", FORMS)
def test_composites_conserve_resnet18(resnet18, form, rule):
    x = tm.random_input((2, 3, 64, 64), 1, *BOUNDS)
    _check(resnet18[form], rule, x, np.array([3, 700], np.int64))


def test_bias_relevance_is_not_zero(resnet18):
    """The biases (folded BatchNorm shifts) take a real share: conservation is not vacuous."""
    x = tm.random_input((2, 3, 64, 64), 2, *BOUNDS)
    path = resnet18["legacy"]
    with tm.compiled(path, rule="epsilon") as result:
        out = relgraph.Explainer(result.path).explain(x)
    logit = out["logits"][np.arange(len(x)), out["target"]]
    assert np.all(np.abs(out["bias_relevance"]) > 1e-3 * np.abs(logit))


@pytest.mark.parametrize("form", FORMS)
def test_epsilon_conserves_every_op_model(tmp_path, form):
    """ε through every supported op (gates, pools, BatchNorm after a ReLU, constants, reshapes)."""
    model = tm.small(tm.ConvZoo, seed=0)
    path = tm.export(model, torch.zeros(1, *tm.ConvZoo.input_shape), tmp_path / f"conv_zoo_{form}.onnx", FORMS[form])
    x = tm.random_input((3, *tm.ConvZoo.input_shape), 3)
    _check(path, "epsilon", x, tm.pick_targets(tm.reference_logits(model, x), 3))


@pytest.mark.parametrize("opset, form", [(11, "legacy"), (20, "legacy"), (23, "dynamo")])
def test_old_and_new_opsets(tmp_path, opset, form):
    """The op zoo exported at opset 11 (hard swish as x·HardSigmoid(x), Clip's bounds as inputs, the output
    Softmax of opset < 13, upgraded on the way in) and at 20 and 23: torch's logits, torch's float64 gradient,
    ε conservation, and an explainer at the model's opset or above."""
    model = tm.small(tm.ConvZoo, seed=0)
    path = tm.export(model, torch.zeros(1, *tm.ConvZoo.input_shape), tmp_path / f"conv_zoo_{opset}.onnx",
                     FORMS[form], opset=opset)
    x = tm.random_input((3, *tm.ConvZoo.input_shape), 4)
    target = tm.pick_targets(tm.reference_logits(model, x), 4)
    with tm.compiled(path, rule="gradient") as result:
        out = relgraph.Explainer(result.path).explain(x, target=target)
        explainer_opset = next(o.version for o in onnx.load(result.path).opset_import if o.domain in ("", "ai.onnx"))
    assert explainer_opset >= opset
    assert np.all(tm.relative_error(out["logits"], tm.reference_logits(model, x)) < 1e-5)
    assert np.all(tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target)) < 1e-4)
    _check(path, "epsilon", x, target)


@pytest.mark.parametrize("form", FORMS)
def test_residual_shares_equal_the_fused_form(resnet18, form):
    """On the onnx target the ε layers that feed a residual sum take their share q unmultiplied and divide
    by (|z| + ε) ⊘ |z|; the triton target keeps R_z = z ⊙ q and stab(z) with its sign test. Same relevance,
    same bias relevance, fewer sign tests."""
    x = tm.random_input((2, 3, 64, 64), 4, *BOUNDS)
    path, outs, sign_tests = resnet18[form], {}, {}
    for target in ("onnx", "triton"):
        with tm.compiled(path, rule="epsilon", target=target) as result:
            outs[target] = relgraph.Explainer(result.path).explain(x)
            graph = onnx.inliner.inline_local_functions(onnx.load(result.path)).graph
        sign_tests[target] = sum(n.op_type == "GreaterOrEqual" for n in graph.node)
    for key in ("relevance", "bias_relevance"):
        assert np.all(tm.relative_error(outs["onnx"][key], outs["triton"][key]) < 1e-5), key
    assert sign_tests["onnx"] == sign_tests["triton"] - 11  # 8 blocks' last convs and 3 downsampling convs


# ------------------------------------------------------------------------------------------ relgraph check

CHECK_EPSILON = 0.25  # large enough that every ε layer leaks a visible part


def _residual_cnn(path, rng):
    """x → conv1 → relu1 → (relu1 + conv2(relu1)) → relu2 → flatten → fc: ε layers, a ReLU whose output
    bounds the first denominator, a residual sum (norm) that hands conv2 its share, biases everywhere."""
    params = dict(W1=rng.normal(size=(3, 2, 3, 3)) * 0.5, B1=rng.normal(size=3) * 0.3,
                  W2=rng.normal(size=(3, 3, 3, 3)) * 0.3, B2=rng.normal(size=3) * 0.3,
                  W3=rng.normal(size=(4, 3 * 5 * 5)) * 0.3, B3=rng.normal(size=4) * 0.3)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "W2", "B2"], ["z2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a1", "z2"], ["s"], name="sum"),
             helper.make_node("Relu", ["s"], ["a2"], name="relu2"),
             helper.make_node("Flatten", ["a2"], ["h"], name="flatten", axis=1),
             helper.make_node("Gemm", ["h", "W3", "B3"], ["logits"], name="fc", transB=1)]
    save_model(path, nodes, params, (2, 5, 5), 4)
    return {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}


def _check_reference(p, x, eps):
    """node → (R in, R out, R bias, leak) summed over the batch, by dense float64 matrices (tests/reference.py),
    for the target = the predicted class."""
    n, stabilizer = len(x), 1e-6
    M1, _ = ref.conv_matrix(p["W1"], (2, 5, 5), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    M2, _ = ref.conv_matrix(p["W2"], (3, 5, 5), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    M3 = ref.gemm_matrix(p["W3"])
    b1, b2 = ref.bias_vector(p["B1"], (3, 5, 5)), ref.bias_vector(p["B2"], (3, 5, 5))
    x = x.reshape(n, -1).astype(np.float64)
    z1 = x @ M1 + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ M2 + b2
    s = a1 + z2
    h = np.maximum(s, 0)
    logits = h @ M3 + p["B3"]
    r_out = np.zeros_like(logits)
    r_out[np.arange(n), logits.argmax(1)] = logits.max(1)
    r_h, bias3 = ref.epsilon(h, M3, p["B3"], r_out, eps)
    # the residual sum: norm, the fixed stabilizer; both terms' shares of R_s
    share_a1, share_z2 = ref.norm(np.concatenate([a1, z2], 1), np.vstack([np.eye(75), np.eye(75)]), r_h, stabilizer)[0] \
        .reshape(n, 2, 75).transpose(1, 0, 2)
    r_a1_conv, bias2 = ref.epsilon(a1, M2, b2, share_z2, eps)
    r_a1 = share_a1 + r_a1_conv
    r_x, bias1 = ref.epsilon(x, M1, b1, r_a1, eps)
    rows = {"fc": (r_out, r_h, bias3), "flatten": (r_h, r_h, 0.0), "relu2": (r_h, r_h, 0.0),
            "sum": (r_h, np.concatenate([share_a1, share_z2], 1), 0.0), "conv2": (share_z2, r_a1_conv, bias2),
            "relu1": (r_a1, r_a1, 0.0), "conv1": (r_a1, r_x, bias1)}
    out = {}
    for name, (r_in, r_to_inputs, bias) in rows.items():
        r_in, r_to_inputs, bias = float(np.sum(r_in)), float(np.sum(r_to_inputs)), float(np.sum(bias))
        out[name] = (r_in, r_to_inputs, bias, r_in - r_to_inputs - bias)
    return out, float(r_out.sum()), float(r_x.sum()), float(bias1.sum() + bias2.sum() + bias3.sum())


def test_check_numbers_equal_a_float64_account(tmp_path, capsys):
    """``relgraph check``'s per-layer R in, R out, R bias and leak, and its totals, at ε = 0.25 equal the same
    account computed with dense float64 matrices; the leaks are visible, so a sign error in any column shows."""
    rng = np.random.default_rng(0)
    params = _residual_cnn(tmp_path / "m.onnx", rng)
    x = rng.normal(size=(3, 2, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    explainer = relgraph.compile(tmp_path / "m.onnx", rule="epsilon", epsilon=CHECK_EPSILON,
                                 output=str(tmp_path / "e.onnx")).path
    capsys.readouterr()
    assert main(["check", explainer, str(tmp_path / "x.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: [float(v) for v in line.split()[3:]] for line in lines[1:] if line.split()[:1]
            and line.split()[0] in ("fc", "flatten", "relu2", "sum", "conv2", "relu1", "conv1")}
    expected, r_out, relevance, bias = _check_reference(params, x, CHECK_EPSILON)
    assert set(rows) == set(expected)
    scale = abs(r_out)
    for name, values in rows.items():  # printed with 5 significant digits
        np.testing.assert_allclose(values, expected[name], rtol=2e-4, atol=2e-5 * scale, err_msg=name)
    leaks = {name: v[3] for name, v in expected.items()}
    assert abs(leaks["fc"]) > 0.01 * scale and abs(leaks["conv1"]) > 0.01 * scale and abs(leaks["conv2"]) > 1e-3 * scale
    total = next(line for line in lines if line.startswith("R_out")).split()
    np.testing.assert_allclose([float(total[i]) for i in (1, 5, 9, 12)],
                               [r_out, relevance, bias, r_out - relevance - bias], rtol=2e-4, atol=2e-5 * scale)
