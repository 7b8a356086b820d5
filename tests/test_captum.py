"""LRP-ε against captum's ``LRP``.

captum's defaults put ``EpsilonRule(epsilon=1e-9)`` on convolutions, linear layers and max pooling
(x ⊙ ∂(z ⊘ stab(z))/∂x: the winner of each window takes the relevance) and pass relevance unchanged
through ReLU. Like relgraph it starts from the target logit (it multiplies the normalized relevance by
the output), so the two relevances are compared as they are: relgraph ``epsilon`` compiled with
ε = 1e-9 on a VGG-style network (captum's LRP supports no BatchNorm unless folded first).
"""

import copy

import numpy as np
import pytest
import torch
from captum.attr import LRP

import relgraph

try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

EPSILON = 1e-9  # captum's EpsilonRule default
THRESHOLD = 0.9999
FORMS = {"legacy": False, "dynamo": True}


@pytest.fixture(scope="module")
def small_vgg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small_vgg")
    model = tm.small(tm.SmallVGG, seed=4)
    explainers = {}
    for form, dynamo in FORMS.items():
        path = tm.export(model, torch.zeros(1, *tm.SmallVGG.input_shape), folder / f"small_vgg_{form}.onnx", dynamo)
        result = relgraph.compile(path, rule="epsilon", output=str(folder / f"small_vgg_{form}.epsilon.onnx"),
                                  epsilon=EPSILON, overwrite=True)
        explainers[form] = relgraph.Explainer(result.path)
    return model, explainers


def captum_relevance(model, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    double = copy.deepcopy(model).double().eval()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    return LRP(double).attribute(xt, target=torch.tensor(target)).detach().numpy()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("form", FORMS)
def test_epsilon_matches_captum(small_vgg, form, seed):
    model, explainers = small_vgg
    x = tm.random_input((4, *tm.SmallVGG.input_shape), seed)
    target = tm.pick_targets(tm.reference_logits(model, x), seed)
    out = explainers[form].explain(x, target=target)
    expected = captum_relevance(model, x, target)
    similarity = tm.cosine(out["relevance"], expected)
    assert np.all(similarity > THRESHOLD), f"cosine per sample {similarity}"
    # same starting point (the target logit): same scale, not only the same direction
    error = tm.relative_error(out["relevance"], expected)
    assert np.all(error < 1e-3), f"relative error per sample {error}"


def test_captum_and_relgraph_start_at_the_logit(small_vgg):
    """Both account for the whole target logit: input relevance + what the biases absorb."""
    model, explainers = small_vgg
    x = tm.random_input((4, *tm.SmallVGG.input_shape), 2)
    target = tm.pick_targets(tm.reference_logits(model, x), 2)
    out = explainers["legacy"].explain(x, target=target)
    logit = out["logits"][np.arange(len(x)), target]
    total = tm.per_sample(out["relevance"]).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(total, logit, rtol=1e-3, atol=1e-6)
    expected = captum_relevance(model, x, target)
    np.testing.assert_allclose(tm.per_sample(expected).sum(1), tm.per_sample(out["relevance"]).sum(1),
                               rtol=1e-3, atol=1e-5 * np.abs(logit).max())
