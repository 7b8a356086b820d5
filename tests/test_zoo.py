"""torchvision's other classifiers and timm's HRNet, PoolFormer and ResNeSt, checked as VGG-16 and ResNet-18 are.

For each architecture (random weights, randomized BatchNorm statistics, small inputs) and export form:

- the explainer's logits equal torch's;
- ``gradient`` equals torch autograd (float64);
- ``epsilon`` conserves: Σ relevance + Σ bias relevance = the target logit within 1 %;
- the composites match zennit's in direction and scale (per-sample cosine > 0.9999 and relative L2 ≤ 1e-3, or
  2× zennit's own float32-vs-float64 difference where float32 limits it, after dividing by the target logit),
  with zennit given the canonizers of ``zennit_canonizers`` so that it sees the residual sums, head pools,
  gates and exactly merged BatchNorms as relgraph does.

The explained class is the predicted one: a near-zero target logit would amplify float32 round-off of
relgraph against zennit's float64 (see test_zennit). Architectures built from ops relgraph does not
support (attention) are refused at compile time, every node listed. ConvNeXt (LayerNormalization, GELU) is
checked for its gradient and ε conservation; zennit has no LayerNorm rule to compare composites with.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import timm
import torch
import torchvision
from torch import nn
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat
from zennit.rules import Epsilon

import relgraph
from relgraph.errors import RelgraphError

try:
    import torch_models as tm
    import zennit_canonizers as zc
    from test_zennit import HIGH, LOW, assert_same_relevance, relgraph_relevance, zennit_relevance
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm
    from tests import zennit_canonizers as zc
    from tests.test_zennit import HIGH, LOW, assert_same_relevance, relgraph_relevance, zennit_relevance


def _densenet121():
    """DenseNet-121 with each BatchNorm that follows a conv (the stem's, and the second of every dense layer)
    folded into it: zennit's BatchNorm merging does not apply to DenseNet's module layout, and relgraph folds
    them, so zennit must see them folded too (left as modules, zennit gives them ε of their own and loses 2 %
    more of the logit to their shifts: a uniform 2 % scale against relgraph). The other BatchNorms follow a
    concatenation: ε on both sides."""
    model = torchvision.models.densenet121(weights=None)
    tm.randomize_batchnorm(model, 0).eval()
    f = model.features
    fuse = torch.nn.utils.fusion.fuse_conv_bn_eval
    f.conv0, f.norm0 = fuse(f.conv0, f.norm0), nn.Identity()
    for layer in model.modules():  # each dense layer's second BatchNorm follows its 1×1 conv
        if isinstance(layer, torchvision.models.densenet._DenseLayer):
            layer.conv1, layer.norm2 = fuse(layer.conv1, layer.norm2), nn.Identity()
    return model


# name → (input side, export forms); the inception models take torch's default init (their own blows
# activations up by ~5× per layer, which leaves the float32 gradient at the mercy of round-off)
ZOO = {
    "alexnet": (224, ("legacy",)),
    "squeezenet1_1": (96, ("legacy",)),
    "mobilenet_v2": (96, ("legacy", "dynamo")),
    "mobilenet_v3_small": (96, ("legacy",)),
    "efficientnet_b0": (96, ("legacy", "dynamo")),
    "mnasnet0_5": (96, ("legacy",)),
    "shufflenet_v2_x0_5": (96, ("legacy",)),
    "regnet_x_400mf": (96, ("legacy",)),
    "regnet_y_400mf": (96, ("dynamo",)),
    "densenet121": (96, ("legacy",)),
    "googlenet": (96, ("legacy",)),
    "inception_v3": (96, ("legacy",)),
    "resnext50_32x4d": (64, ("legacy",)),
    "convnext_tiny": (64, ("legacy",)),  # its dynamo export computes an as_strided view at run time
    # timm: HRNet (parallel resolutions fused by nearest upsampling, Resize), PoolFormer (GroupNorm of one
    # group, exported as InstanceNormalization between reshapes; pooling minus its input as the token mixer),
    # ResNeSt (split attention: a Softmax over the radix inside the network)
    "timm/hrnet_w18_small": (64, ("legacy",)),
    "timm/poolformer_s12": (64, ("legacy",)),
    "timm/resnest14d": (64, ("legacy",)),
}
CASES = [(name, form) for name, (_, forms) in ZOO.items() for form in forms]
# zennit has no rule for LayerNormalization, nor canonizers for timm's blocks: the composites of ConvNeXt and
# the timm models are checked against no one
ZENNIT_CASES = [(name, form) for name, form in CASES if name != "convnext_tiny" and not name.startswith("timm/")]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "densenet121":
        model = _densenet121()
    elif name.startswith("timm/"):
        model = tm.randomize_batchnorm(timm.create_model(name.removeprefix("timm/"), pretrained=False,
                                                         num_classes=10), 0)
    else:
        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        model = tm.randomize_batchnorm(getattr(torchvision.models, name)(weights=None, **kwargs), 0)
    with torch.no_grad():  # ConvNeXt, PoolFormer: norms' affine parameters and layer scales away from their init
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            for scale in ("layer_scale", "scale"):  # torchvision's CNBlock, timm's LayerScale2d
                if isinstance(getattr(m, scale, None), nn.Parameter):
                    getattr(m, scale).uniform_(0.5, 1.0)
    return tm.randomize_biases(model, 0).eval()


def canonizers(name: str):
    if name.startswith("resne"):
        from zennit.torchvision import ResNetCanonizer

        return [ResNetCanonizer()]
    return [zc.canonizer(merge_batchnorm=name != "densenet121")]


_CACHE: dict = {}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(model, ONNX path, input) per (name, form), built on first use."""
    def get(name, form):
        if (name, form) not in _CACHE:
            side = ZOO[name][0]
            model = _CACHE.setdefault(name, build(name))
            stem = name.replace("/", "_")
            folder = tmp_path_factory.mktemp(stem)
            path = tm.export(model, torch.zeros(1, 3, side, side), folder / f"{stem}_{form}.onnx", form == "dynamo")
            _CACHE[name, form] = (model, path, tm.random_input((2, 3, side, side), 11, LOW, HIGH))
        return _CACHE[name, form]
    yield get
    _CACHE.clear()


def _predicted(model, x):
    return tm.reference_logits(model, x).argmax(1)


def _explain(zoo, name, form, rule):
    """(model, input, predicted class, the explainer's outputs) for ``rule``."""
    model, path, x = zoo(name, form)
    target = _predicted(model, x)
    with tm.compiled(path, rule=rule) as result:
        return model, x, target, relgraph.Explainer(result.path).explain(x, target=target)


@pytest.mark.parametrize("name, form", CASES)
def test_zoo_gradient_and_logits(zoo, name, form):
    model, x, target, out = _explain(zoo, name, form, "gradient")
    assert np.all(tm.relative_error(out["logits"], tm.reference_logits(model, x)) < 1e-5)
    exact = tm.reference_gradient(model, x, target)
    error = tm.relative_error(out["relevance"], exact)
    # where the gradient is ill-conditioned at x (GoogLeNet's max pooling of max-pooled features), float32
    # cannot do better than float32: the bound widens to 10× torch's own float32 error there
    round_off = tm.relative_error(tm.reference_gradient(model, x, target, dtype=torch.float32), exact)
    assert np.all(error < np.maximum(1e-4, 10 * round_off)), f"relative error per sample {error} ({round_off})"


@pytest.mark.parametrize("name, form", CASES)
def test_zoo_epsilon_conserves(zoo, name, form):
    _, x, target, out = _explain(zoo, name, form, "epsilon")
    logit = out["logits"][np.arange(len(x)), target]
    total = tm.per_sample(out["relevance"]).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(total, logit, rtol=1e-2)


def _zennit_composite(rule, name, shape):
    # DenseNet's BatchNorms after concatenations: ε, as relgraph's composites give an unfolded BatchNorm
    extra = {"layer_map": [(nn.BatchNorm2d, Epsilon())]} if name == "densenet121" else {}
    box = {"low": torch.full(shape, LOW, dtype=torch.float64), "high": torch.full(shape, HIGH, dtype=torch.float64)}
    return {
        "epsilon-plus-flat": lambda: EpsilonPlusFlat(canonizers=canonizers(name), **extra),
        "epsilon-gamma-box": lambda: EpsilonGammaBox(**box, canonizers=canonizers(name), **extra),
        "epsilon-alpha2-beta1-flat": lambda: EpsilonAlpha2Beta1Flat(canonizers=canonizers(name), **extra),
    }[rule]()


@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat"])
@pytest.mark.parametrize("name, form", ZENNIT_CASES)
def test_zoo_composites_match_zennit(zoo, name, form, rule):
    model, path, x = zoo(name, form)
    target = _predicted(model, x)
    relevance, _ = relgraph_relevance(path, rule, x, target, bounds=(LOW, HIGH))
    composite = _zennit_composite(rule, name, x.shape)
    expected = zennit_relevance(copy.deepcopy(model), composite, x, target)
    assert_same_relevance(relevance, expected, lambda: zennit_relevance(
        copy.deepcopy(model), _zennit_composite(rule, name, x.shape), x, target, dtype=torch.float32))


class _Attention(nn.Module):
    """Patch embedding, one self-attention layer, a linear head: attention multiplies two activations."""

    def __init__(self):
        super().__init__()
        self.embed, self.attention, self.head = nn.Conv2d(3, 16, 4, stride=4), nn.MultiheadAttention(16, 2), \
            nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).permute(2, 0, 1)
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(mixed.mean(0))


def test_sequence_first_attention(tmp_path):
    """nn.MultiheadAttention (sequence first: the batch is axis 1 of [S, N, E], then merged into [S·N, E]) behind a
    patch embedding: ``gradient`` equals torch autograd, and under ``attnlrp`` the input, the biases and what the
    softmax absorbs add up to the logit in every sample (the bias sums follow the batch through the reshapes)."""
    torch.manual_seed(0)
    model = _Attention().eval()
    for p in model.parameters():  # biases start at zero: give them values so that their shares are tested
        if p.dim() == 1:
            torch.nn.init.normal_(p, std=0.5)
    path = tm.export(model, torch.zeros(1, 3, 16, 16), tmp_path / "attention.onnx", False)
    x = torch.randn(3, 3, 16, 16)
    target = np.array([0, 2, 4])
    gradient = relgraph.compile(path, rule="gradient", output=str(tmp_path / "gradient.onnx"))
    got = relgraph.Explainer(gradient.path).explain(x.numpy(), target)["relevance"]
    xg = x.double().requires_grad_(True)
    logits = copy.deepcopy(model).double()(xg)
    expected, = torch.autograd.grad(logits[torch.arange(3), torch.from_numpy(target)].sum(), xg)
    assert tm.relative_error(got, expected.numpy()).max() < 1e-4
    lrp = relgraph.compile(path, rule="attnlrp", output=str(tmp_path / "attnlrp.onnx"))
    out = relgraph.Explainer(lrp.path).explain(x.numpy(), target)
    total = out["relevance"].reshape(3, -1).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(total, out["logits"][np.arange(3), target], rtol=1e-4, atol=1e-5)
