"""LRP-ε, guided backprop and DeconvNet against captum (``LRP``, ``GuidedBackprop``, ``Deconvolution``).

captum's defaults put ``EpsilonRule(epsilon=1e-9)`` on convolutions, linear layers and max pooling
(x ⊙ ∂(z ⊘ stab(z))/∂x: the winner of each window takes the relevance) and pass relevance unchanged
through ReLU. Like relgraph it starts from the target logit (it multiplies the normalized relevance by
the output), so the two relevances are compared as they are: relgraph ``epsilon`` compiled with
ε = 1e-9 on a VGG-style network (captum's LRP supports no BatchNorm unless folded first).

Guided backprop and DeconvNet change only the backward pass of each ``nn.ReLU`` (captum hooks the modules):
the gradient, rectified after the ReLU's derivative (guided backprop) or instead of it (DeconvNet). Both
start from 1 at the target output in captum and in relgraph. The ReLU masks of guided backprop's relu(R)
flip in float32 where R is near zero, so the bound there is 2× captum's own float32-vs-float64 difference.
"""

import copy

import numpy as np
import pytest
import torch
from captum.attr import LRP, Deconvolution, GuidedBackprop
from torch import nn

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


# ------------------------------------------------------------------------------------------ guided backprop, DeconvNet

CAPTUM_METHODS = {"guided-backprop": GuidedBackprop, "deconvnet": Deconvolution}


def captum_modified_gradient(model, method: str, x: np.ndarray, target, dtype=torch.float64) -> np.ndarray:
    """captum's guided backprop or DeconvNet of ``target`` on a copy of ``model`` in ``dtype`` (ReLUs made
    out-of-place: captum's hooks cannot follow an in-place ReLU). float32 runs without oneDNN, as
    ``torch_models.reference_gradient``, so that it carries ordinary float32 round-off only."""
    cast = copy.deepcopy(model).to(dtype).eval()
    for m in cast.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn and dtype != torch.float32
    try:
        attribution = CAPTUM_METHODS[method](cast).attribute(xt, target=torch.tensor(np.asarray(target)))
    finally:
        torch.backends.mkldnn.enabled = onednn
    return attribution.detach().double().numpy()


def _torchvision(tmp_path_factory, name, model, side):
    folder = tmp_path_factory.mktemp(name)
    path = tm.export(model, torch.zeros(1, 3, side, side), folder / f"{name}.onnx", False)
    explainers = {}
    for method in CAPTUM_METHODS:
        with tm.compiled(path, rule=method) as result:  # the session holds the model: the file can go
            explainers[method] = relgraph.Explainer(result.path)
    return model, explainers, side


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory):
    return _torchvision(tmp_path_factory, "vgg16", tm.vgg16(seed=0), 224)


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    return _torchvision(tmp_path_factory, "resnet18", tm.resnet18(seed=0), 64)


def _check_modified_gradient(model, explainer, method, x, target):
    out = explainer.explain(x, target=target)
    expected = captum_modified_gradient(model, method, x, target)
    round_off = tm.relative_error(captum_modified_gradient(model, method, x, target, torch.float32), expected)
    error = tm.relative_error(out["relevance"], expected)
    assert np.all(error < np.maximum(1e-4, 2 * round_off)), f"relative L2 per sample {error} (captum's float32: " \
                                                           f"{round_off})"
    assert np.all(tm.cosine(out["relevance"], expected) > THRESHOLD)
    return error, round_off


@pytest.mark.parametrize("method", CAPTUM_METHODS)
@pytest.mark.parametrize("net", ["vgg16", "resnet18"])
def test_modified_gradients_match_captum(request, net, method):
    model, explainers, side = request.getfixturevalue(net)
    x = tm.random_input((2, 3, side, side), 21)
    target = tm.pick_targets(tm.reference_logits(model, x), 21)
    _check_modified_gradient(model, explainers[method], method, x, target)


@pytest.mark.parametrize("method", CAPTUM_METHODS)
@pytest.mark.parametrize("form", FORMS)
def test_modified_gradients_match_captum_small_vgg(tmp_path, form, method):
    """Both export forms; max pooling routes the rectified gradient to the winners."""
    model = tm.small(tm.SmallVGG, seed=4)
    path = tm.export(model, torch.zeros(1, *tm.SmallVGG.input_shape), tmp_path / f"v_{form}.onnx", FORMS[form])
    explainer = relgraph.Explainer(relgraph.compile(path, rule=method, output=str(tmp_path / "e.onnx")).path)
    x = tm.random_input((4, *tm.SmallVGG.input_shape), 22)
    target = tm.pick_targets(tm.reference_logits(model, x), 22)
    _check_modified_gradient(model, explainer, method, x, target)
    # not the gradient: the rectification changes the result
    relevance = explainer.explain(x, target=target)["relevance"]
    assert np.all(tm.relative_error(relevance, tm.reference_gradient(model, x, target)) > 0.05)
