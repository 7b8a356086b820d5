"""Conservation: what the explainer hands out adds up to the explained logit.

With the bias treated as the weight of a constant-one input, a conservative rule splits the target
logit f_c(x) between the input and the biases: Σ relevance + bias_relevance = f_c(x), up to what the
stabilizer ε absorbs (negligible at ε = 1e-6). Checked on ResNet-18 with random weights (BatchNorm
folded, residual sums, max and average pooling) in both export forms.
"""

import numpy as np
import pytest
import torch

import relgraph

try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

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
    out_path = str(path).replace(".onnx", f".{rule}.onnx")
    result = relgraph.compile(path, rule=rule, output=out_path, overwrite=True, epsilon=1e-6, bounds=BOUNDS)
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
    result = relgraph.compile(path, rule="epsilon", output=str(path).replace(".onnx", ".eps.onnx"), overwrite=True)
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


@pytest.mark.parametrize("form", FORMS)
def test_residual_shares_equal_the_fused_form(resnet18, form):
    """On the onnx target the ε layers that feed a residual sum take their share q unmultiplied and divide
    by (|z| + ε) ⊘ |z|; the triton target keeps R_z = z ⊙ q and stab(z) with its sign test. Same relevance,
    same bias relevance, fewer sign tests."""
    import onnx
    import onnx.inliner

    x = tm.random_input((2, 3, 64, 64), 4, *BOUNDS)
    path, outs, sign_tests = resnet18[form], {}, {}
    for target in ("onnx", "triton"):
        result = relgraph.compile(path, rule="epsilon", output=str(path).replace(".onnx", f".{target}.onnx"),
                                  overwrite=True, target=target)
        outs[target] = relgraph.Explainer(result.path).explain(x)
        graph = onnx.inliner.inline_local_functions(onnx.load(result.path)).graph
        sign_tests[target] = sum(n.op_type == "GreaterOrEqual" for n in graph.node)
    for key in ("relevance", "bias_relevance"):
        assert np.all(tm.relative_error(outs["onnx"][key], outs["triton"][key]) < 1e-5), key
    assert sign_tests["onnx"] == sign_tests["triton"] - 11  # 8 blocks' last convs and 3 downsampling convs
