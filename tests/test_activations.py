"""PRelu, Elu, Softplus, Neg, Max/Min with a constant and ReduceSum against independent references.

- ``gradient`` equals torch autograd in float64 (torch's export writes each as its ONNX op), within ten
  times torch's own float32 round-off;
- ``epsilon-plus-flat`` and ``epsilon-gamma-box`` equal zennit's composites (which pass relevance through
  every activation module, ``Pass``), to a relative L2 of 1e-4 per sample (zennit runs in float64);
- Neg spelled as a Mul by −1 gives the same relevance under every rule (tests/test_spelling.py's check; so
  does ReduceSum against n · ReduceMean, there).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

import relgraph

try:
    import torch_models as tm
    from test_spelling import assert_same_relevance, write_model
    from test_zennit import zennit_relevance
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm
    from tests.test_spelling import assert_same_relevance, write_model
    from tests.test_zennit import zennit_relevance

LOW, HIGH = -2.5, 2.5


class ActivationsCNN(nn.Module):
    """conv → PReLU (per channel) → conv → ELU → max pool → conv → Softplus → dense → PReLU (one slope) → dense;
    ``negate`` adds a −x before the second conv (an op, not a module: for the gradient check only)."""

    input_shape = (3, 8, 8)

    def __init__(self, negate: bool = False):
        super().__init__()
        self.negate = negate
        self.conv1, self.act1 = nn.Conv2d(3, 6, 3, padding=1), nn.PReLU(6)
        self.conv2, self.act2 = nn.Conv2d(6, 6, 3, padding=1), nn.ELU(alpha=0.7)
        self.conv3, self.act3 = nn.Conv2d(6, 4, 3, padding=1), nn.Softplus()
        self.fc1, self.act4, self.fc2 = nn.Linear(4 * 4 * 4, 12), nn.PReLU(), nn.Linear(12, 5)
        with torch.no_grad():
            self.act1.weight.uniform_(-0.5, 0.5)
            self.act4.weight.fill_(0.3)

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = -x if self.negate else x
        x = nn.functional.max_pool2d(self.act2(self.conv2(x)), 2)
        x = self.act3(self.conv3(x))
        return self.fc2(self.act4(self.fc1(torch.flatten(x, 1))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("activations")
    out = {}
    for negate in (False, True):
        torch.manual_seed(4)
        model = ActivationsCNN(negate).eval()
        path = tm.export(model, torch.zeros(1, *ActivationsCNN.input_shape), folder / f"m{int(negate)}.onnx", False)
        out[negate] = model, str(path)
    ops = tm.op_types(out[True][1])
    assert {"PRelu", "Elu", "Softplus", "Neg"} <= ops, ops
    return out


def explain(path, rule, x, target, **kw):
    result = relgraph.compile(path, rule=rule, write=False, **kw)
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {tm.INPUT: x, "target": target.astype(np.int64)})))


@pytest.mark.parametrize("negate", [False, True])
def test_gradient_equals_torch(exported, negate):
    model, path = exported[negate]
    x = tm.random_input((4, *ActivationsCNN.input_shape), seed=5)
    target = np.array([0, 1, 2, 3])
    out = explain(path, "gradient", x, target)
    np.testing.assert_allclose(out["logits"], tm.reference_logits(model, x), rtol=1e-5, atol=1e-5)
    exact = tm.reference_gradient(model, x, target)
    round_off = tm.relative_error(tm.reference_gradient(model, x, target, dtype=torch.float32), exact)
    error = tm.relative_error(out["relevance"], exact)
    assert np.all(error < np.maximum(1e-5, 10 * round_off)), (error, round_off)


@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_composites_equal_zennit(exported, rule):
    model, path = exported[False]
    shape = (4, *ActivationsCNN.input_shape)
    x = tm.random_input(shape, seed=6, low=LOW, high=HIGH)
    target = np.array([4, 3, 2, 1])
    box = dict(low=torch.full(shape, LOW, dtype=torch.float64), high=torch.full(shape, HIGH, dtype=torch.float64))
    composite = EpsilonPlusFlat() if rule == "epsilon-plus-flat" else EpsilonGammaBox(**box)
    out = explain(path, rule, x, target, bounds=(LOW, HIGH))
    logit = out["logits"][np.arange(len(x)), target].reshape(-1, 1, 1, 1)
    expected = zennit_relevance(model, composite, x, target)
    error = tm.relative_error(out["relevance"] / logit, expected)
    assert np.all(error < 1e-4), error


@pytest.mark.parametrize("seed", [0, 1])
def test_neg_as_a_scaling(tmp_path, seed):
    bodies = ["   a = Neg (h)", "   m = Constant <value = float {-1.0}> ()\n   a = Mul (h, m)",
              "   m = Constant <value = float {-1.0}> ()\n   a = Div (h, m)"]
    assert_same_relevance([write_model(tmp_path / f"n{i}.onnx", body, seed) for i, body in enumerate(bodies)], seed)


class SumHead(nn.Module):
    """conv → ReLU → x.sum((2, 3)) (ReduceSum) → dense."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).sum((2, 3)))


def _assert_gradient_equals_torch(model, path, x, target):
    """relgraph's gradient explainer against float64 torch autograd, logits against torch's."""
    out = explain(str(path), "gradient", x, target)
    np.testing.assert_allclose(out["logits"], tm.reference_logits(model, x), rtol=1e-5, atol=1e-5)
    error = tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target))
    assert np.all(error < 1e-5), error


def test_reduce_sum_gradient_equals_torch(tmp_path):
    torch.manual_seed(7)
    model = SumHead().eval()
    path = tm.export(model, torch.zeros(1, 3, 6, 6), tmp_path / "sum.onnx", False)
    assert "ReduceSum" in tm.op_types(path)
    x = tm.random_input((3, 3, 6, 6), seed=8)
    target = np.array([0, 2, 4])
    _assert_gradient_equals_torch(model, path, x, target)


class FloorCeiling(nn.Module):
    """conv → max(x, floor) → min(·, ceiling), both per channel (torch.maximum/minimum: Max and Min of a
    constant) → dense."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 5)
        self.register_buffer("floor", torch.tensor([-0.3, 0.0, 0.2, -1.0]).reshape(4, 1, 1))
        self.register_buffer("ceiling", torch.tensor([0.5, 1.0, 0.8, 0.1]).reshape(4, 1, 1))

    def forward(self, x):
        x = torch.minimum(torch.maximum(self.conv(x), self.floor), self.ceiling)
        return self.fc(torch.flatten(x, 1))


def test_max_min_with_a_constant_gradient_equals_torch(tmp_path):
    torch.manual_seed(9)
    model = FloorCeiling().eval()
    path = tm.export(model, torch.zeros(1, 3, 6, 6), tmp_path / "floor.onnx", False)
    assert {"Max", "Min"} <= tm.op_types(path)
    x = tm.random_input((3, 3, 6, 6), seed=10)
    target = np.array([1, 3, 4])
    _assert_gradient_equals_torch(model, path, x, target)
