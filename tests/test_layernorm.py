"""LayerNormalization and GELU (ConvNeXt's ops) against independent references.

- ``gradient`` equals torch autograd (float64) through LayerNorm and both GELU forms (erf, tanh), in both
  export forms;
- ``epsilon`` equals a float64 numpy re-implementation of the LN rule (Ali et al. 2022: σ held fixed, the
  centering map is linear) with GELU as a gate (all relevance to the signal x of x·Φ(x)), and conserves.
"""

import numpy as np
import pytest
import torch
from torch import nn

import relgraph

try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

FORMS = {"legacy": False, "dynamo": True}
EPS = 1e-6


class LayerNormMLP(nn.Module):
    """Linear → LayerNorm → GELU → Linear, with non-trivial LayerNorm affine parameters."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 8), nn.LayerNorm(8, eps=1e-5), nn.Linear(8, 5)
        self.act = nn.GELU(approximate=approximate)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0.0, 0.2)

    def forward(self, x):
        return self.fc2(self.act(self.norm(self.fc1(x))))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block on channels-last LayerNorm: depthwise conv, permute, LN, MLP with GELU, layer scale,
    permute back, residual sum; a head with a global pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm, self.up, self.act, self.down = nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0.0, 0.2)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(self.act(self.up(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.scale * y
        return self.head(x.mean((2, 3)))


def _export(model, shape, path, form):
    torch.manual_seed(0)
    return tm.export(model.eval(), torch.zeros(1, *shape), path, FORMS[form])


def _stab(z):
    return z + EPS * np.where(z >= 0, 1.0, -1.0)


def epsilon_reference(model: LayerNormMLP, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """ε-LRP of LayerNormMLP in float64: R_out = the target logit, ε on both linear layers and the LN's
    affine map with σ fixed, GELU's gate passing R to its signal."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    x = x.astype(np.float64)
    z1 = x @ p["fc1.weight"].T + p["fc1.bias"]
    mu = z1.mean(1, keepdims=True)
    sigma = np.sqrt(((z1 - mu) ** 2).mean(1, keepdims=True) + model.norm.eps)
    h = p["norm.weight"] * (z1 - mu) / sigma + p["norm.bias"]
    g = model.act(torch.tensor(h)).numpy()
    z2 = g @ p["fc2.weight"].T + p["fc2.bias"]
    R = np.zeros_like(z2)
    R[np.arange(len(x)), target] = z2[np.arange(len(x)), target]
    R = g * ((R / _stab(z2)) @ p["fc2.weight"])                         # fc2, ε
    u = p["norm.weight"] * (R / _stab(h)) / sigma                       # GELU gate: R_h = R_g; LN rule
    R = z1 * (u - u.mean(1, keepdims=True))
    return x * ((R / _stab(z1)) @ p["fc1.weight"])                       # fc1, ε


def _explain_mlp(tmp_path, form, approximate, rule):
    """(model, input, predicted class, relevance) of LayerNormMLP under ``rule``."""
    torch.manual_seed(1)
    model = LayerNormMLP(approximate).eval()
    path = _export(model, (6,), tmp_path / "mlp.onnx", form)
    x = tm.random_input((4, 6), 3)
    target = tm.reference_logits(model, x).argmax(1)
    result = relgraph.compile(path, rule=rule, output=str(tmp_path / f"{rule}.onnx"), epsilon=EPS)
    return model, x, target, relgraph.Explainer(result.path).explain(x, target=target)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("form", FORMS)
def test_layernorm_gelu_gradient(tmp_path, form, approximate):
    model, x, target, out = _explain_mlp(tmp_path, form, approximate, "gradient")
    assert np.all(tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target)) < 1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("form", FORMS)
def test_layernorm_epsilon_matches_reference(tmp_path, form, approximate):
    model, x, target, out = _explain_mlp(tmp_path, form, approximate, "epsilon")
    expected = epsilon_reference(model, x, target)
    assert np.all(tm.relative_error(out["relevance"], expected) < 1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_convnext_block_gradient_and_conservation(tmp_path, form):
    torch.manual_seed(2)
    model = ConvNeXtBlock().eval()
    path = _export(model, (3, 8, 8), tmp_path / "block.onnx", form)
    x = tm.random_input((3, 3, 8, 8), 4)
    target = tm.reference_logits(model, x).argmax(1)
    result = relgraph.compile(path, rule="gradient", output=str(tmp_path / "g.onnx"))
    out = relgraph.Explainer(result.path).explain(x, target=target)
    assert np.all(tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target)) < 1e-5)
    result = relgraph.compile(path, rule="epsilon", output=str(tmp_path / "e.onnx"))
    out = relgraph.Explainer(result.path).explain(x, target=target)
    logit = out["logits"][np.arange(len(x)), target]
    np.testing.assert_allclose(tm.per_sample(out["relevance"]).sum(1) + out["bias_relevance"], logit, rtol=1e-3)
