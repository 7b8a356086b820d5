"""1-d (audio) and 3-d (video) CNNs end to end, in both torch export forms.

AudioCNN ([N, 2, 32]): Conv1d with stride, padding, dilation and groups, BatchNorm1d, ReLU, MaxPool1d,
AvgPool1d, linear and nearest upsampling, adaptive average pooling, Linear. VideoCNN ([N, 3, 4, 8, 8]):
Conv3d with stride and padding, BatchNorm3d, ReLU, MaxPool3d, AvgPool3d, GroupNorm on 5-d, trilinear and
nearest upsampling, adaptive average pooling, Linear. For each model and form:

- the explainer's logits equal torch's (relative 1e-5);
- ``gradient`` equals torch autograd in float64 (relative L2 per sample < 1e-4);
- ``epsilon`` conserves: Σ relevance + Σ bias relevance = the target logit within 1 %;
- ``epsilon-plus-flat`` and ``epsilon-gamma-box`` match zennit on the model without the ops zennit has no rule
  for (see ``test_composites_match_zennit``);
- the triton target (Triton's interpreter without a GPU) gives onnxruntime's relevance under ``epsilon``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import relgraph
from relgraph.lowering import compile_triton
from relgraph.lowering.explainer import TritonExplainer

try:
    import torch_models as tm
    from test_zennit import COMPOSITES, HIGH, LOW, relgraph_relevance, zennit_relevance, assert_same_relevance
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm
    from tests.test_zennit import (COMPOSITES, HIGH, LOW, assert_same_relevance, relgraph_relevance,
                                   zennit_relevance)

FORMS = {"legacy": False, "dynamo": True}


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics, GroupNorm affine parameters and conv/linear biases of every rank
    (``tm.randomize_biases`` covers the 2-d convs only)."""
    tm.randomize_batchnorm(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


class AudioCNN(nn.Module):
    """[N, 2, 32] → Conv1d s2 p2 d2 → BN → ReLU → MaxPool1d k3 s2 p1 → ×2 linear → grouped Conv1d → BN →
    ReLU → AvgPool1d k2 → ×2 nearest → Conv1d → ReLU → adaptive average pool → Linear."""

    input_shape = (2, 32)

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, 8, 3, stride=2, padding=2, dilation=2), nn.BatchNorm1d(8), nn.ReLU(),   # 16
            nn.MaxPool1d(3, stride=2, padding=1),                                                # 8
            nn.Upsample(scale_factor=2, mode="linear"),                                          # 16
            nn.Conv1d(8, 8, 3, padding=1, groups=2), nn.BatchNorm1d(8), nn.ReLU(),
            nn.AvgPool1d(2),                                                                     # 8
            nn.Upsample(scale_factor=2, mode="nearest"),                                         # 16
            nn.Conv1d(8, 12, 3, stride=2, padding=1), nn.ReLU(),                                 # 8
            nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(12, classes)

    def logits(self, x):
        return self.classifier(self.features(x))

    def forward(self, x):
        return self.logits(x)


class VideoCNN(nn.Module):
    """[N, 3, 4, 8, 8] → Conv3d p1 → BN → ReLU → MaxPool3d k2 → ×2 trilinear → Conv3d s2 p1 → GroupNorm(2, 8)
    → ReLU → AvgPool3d (1, 2, 2) → ×2 nearest → Conv3d → ReLU → adaptive average pool → Linear."""

    input_shape = (3, 4, 8, 8)

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(),                   # 4x8x8
            nn.MaxPool3d(2),                                                                # 2x4x4
            nn.Upsample(scale_factor=2, mode="trilinear"),                                  # 4x8x8
            nn.Conv3d(6, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),         # 2x4x4
            nn.AvgPool3d((1, 2, 2)),                                                        # 2x2x2
            nn.Upsample(scale_factor=2, mode="nearest"),                                    # 4x4x4
            nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(8, classes)

    def logits(self, x):
        return self.classifier(self.features(x))

    def forward(self, x):
        return self.logits(x)


MODELS = {"audio": AudioCNN, "video": VideoCNN}
CASES = [(name, form) for name in MODELS for form in FORMS]


def _model(name, seed=0):
    torch.manual_seed(seed)
    return _randomize(MODELS[name](), seed)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dims")
    cache = {}

    def get(name, form):
        if (name, form) not in cache:
            model = _model(name)
            path = tm.export(model, torch.zeros(1, *model.input_shape), folder / f"{name}_{form}.onnx", FORMS[form])
            cache[name, form] = model, path
        return cache[name, form]

    return get


def _input(model, seed, n=3):
    return tm.random_input((n, *model.input_shape), seed)


@pytest.mark.parametrize("name, form", CASES)
def test_gradient_equals_autograd(exports, name, form):
    model, path = exports(name, form)
    x = _input(model, 1)
    target = tm.pick_targets(tm.reference_logits(model, x), 1)
    with tm.compiled(path, rule="gradient") as result:
        out = relgraph.Explainer(result.path).explain(x, target=target)
    expected = tm.reference_logits(model, x)
    assert np.all(tm.relative_error(out["logits"], expected) < 1e-5)
    error = tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target))
    assert np.all(error < 1e-4), error


@pytest.mark.parametrize("name, form", CASES)
def test_epsilon_conserves(exports, name, form):
    model, path = exports(name, form)
    x = _input(model, 2)
    target = tm.reference_logits(model, x).argmax(1)
    with tm.compiled(path, rule="epsilon") as result:
        out = relgraph.Explainer(result.path).explain(x, target=target)
    logit = out["logits"][np.arange(len(x)), target]
    total = tm.per_sample(out["relevance"]).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(total, logit, rtol=1e-2)
