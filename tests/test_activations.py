"""PRelu, Elu, Softplus, Neg, Max/Min with a constant, ReduceSum, and Selu, Celu, Softsign, ThresholdedRelu,
Shrink and Mish (written as their ONNX ops) against independent references.

- ``gradient`` equals torch autograd in float64 (torch's export writes each as its ONNX op; Softsign as
  x / (|x| + 1), folded to the op; Mish as the op by the dynamo export), within ten times torch's own float32
  round-off;
- ``epsilon-plus-flat`` and ``epsilon-gamma-box`` equal zennit's composites (which pass relevance through
  every activation module, ``Pass``), to a relative L2 of 1e-4 per sample (zennit runs in float64);
- Neg spelled as a Mul by −1 gives the same relevance under every rule (tests/test_spelling.py's check; so
  does ReduceSum against n · ReduceMean, there);
- the ops torch does not write as such (Softsign, ThresholdedRelu, Shrink, Mish of opset 18) in a small MLP
  written in ONNX, against the same MLP in torch float64: ``gradient`` by autograd, ``slope``, ``repeat``,
  DeepLIFT's ``rescale``, DeconvNet and guided backprop, and ε (relevance passed through; Mish a gate) from
  their formulas.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
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


class SmoothCNN(nn.Module):
    """conv → SELU → conv → CELU → max pool → conv → Softsign → dense → dense; ``mish`` puts a Mish between the
    dense layers (zennit has no rule for it: for the gradient check only; the dynamo export writes the Mish op)."""

    input_shape = (3, 8, 8)

    def __init__(self, mish: bool = False):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 6, 3, padding=1), nn.SELU()
        self.conv2, self.act2 = nn.Conv2d(6, 6, 3, padding=1), nn.CELU(alpha=0.6)
        self.conv3, self.act3 = nn.Conv2d(6, 4, 3, padding=1), nn.Softsign()
        self.fc1, self.act4, self.fc2 = nn.Linear(4 * 4 * 4, 12), nn.Mish() if mish else nn.Identity(), nn.Linear(12, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.act2(self.conv2(self.act1(self.conv1(x)))), 2)
        x = self.act3(self.conv3(x))
        return self.fc2(self.act4(self.fc1(torch.flatten(x, 1))))


# name → (network, its flag, dynamo export, ops the export must write)
NETWORKS = {"activations": (ActivationsCNN, False, False, {"PRelu", "Elu", "Softplus"}),
            "activations-negated": (ActivationsCNN, True, False, {"PRelu", "Elu", "Softplus", "Neg"}),
            "smooth": (SmoothCNN, False, False, {"Selu", "Celu"}),
            "smooth-mish": (SmoothCNN, True, True, {"Selu", "Celu", "Mish"})}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("activations")
    out = {}
    for name, (network, flag, dynamo, ops) in NETWORKS.items():
        torch.manual_seed(4)
        model = network(flag).eval()
        path = tm.export(model, torch.zeros(1, *network.input_shape), folder / f"{name}.onnx", dynamo)
        assert ops <= tm.op_types(path), tm.op_types(path)
        out[name] = model, str(path)
    return out


def explain(path, rule, x, target, **kw):
    result = relgraph.compile(path, rule=rule, write=False, **kw)
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {tm.INPUT: x, "target": target.astype(np.int64)})))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_gradient_equals_torch(exported, name):
    model, path = exported[name]
    x = tm.random_input((4, *model.input_shape), seed=5)
    target = np.array([0, 1, 2, 3])
    out = explain(path, "gradient", x, target)
    np.testing.assert_allclose(out["logits"], tm.reference_logits(model, x), rtol=1e-5, atol=1e-5)
    exact = tm.reference_gradient(model, x, target)
    round_off = tm.relative_error(tm.reference_gradient(model, x, target, dtype=torch.float32), exact)
    error = tm.relative_error(out["relevance"], exact)
    assert np.all(error < np.maximum(1e-5, 10 * round_off)), (error, round_off)


@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box"])
@pytest.mark.parametrize("name", ["activations", "smooth"])
def test_composites_equal_zennit(exported, name, rule):
    model, path = exported[name]
    shape = (4, *model.input_shape)
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


# ------------------------------------------------------------------- activations written as their ONNX op

# name → (ONNX op, attributes, opset, the same function in torch): Mish has its op from opset 18
OPS = {
    "Selu": ("Selu", {}, 17, F.selu),
    "Selu-attributes": ("Selu", {"alpha": 1.3, "gamma": 0.9}, 17,
                        lambda h: 0.9 * torch.where(h > 0, h, 1.3 * torch.expm1(h))),
    "Celu": ("Celu", {"alpha": 0.6}, 17, lambda h: F.celu(h, 0.6)),
    "Softsign": ("Softsign", {}, 17, F.softsign),
    "ThresholdedRelu": ("ThresholdedRelu", {"alpha": 0.3}, 17, lambda h: F.threshold(h, 0.3, 0.0)),
    "Shrink-hard": ("Shrink", {"lambd": 0.4}, 17, lambda h: F.hardshrink(h, 0.4)),
    "Shrink-soft": ("Shrink", {"lambd": 0.4, "bias": 0.4}, 17, lambda h: F.softshrink(h, 0.4)),
    "Mish": ("Mish", {}, 18, F.mish),
}
GATED = {"Mish"}  # a product x · g(x) after canonicalization: the gate rule, not an activation rule
FEATURES, HIDDEN, CLASSES = 6, 8, 4


def mlp(tmp_path, name: str, seed: int = 0):
    """x → dense → act → dense → act → dense: the ONNX file and its float64 parameters."""
    op, attrs, opset, _ = OPS[name]
    rng = np.random.default_rng(seed)
    params = {"W1": rng.normal(0, 0.7, (HIDDEN, FEATURES)), "B1": rng.normal(0, 0.3, HIDDEN),
              "W2": rng.normal(0, 0.5, (HIDDEN, HIDDEN)), "B2": rng.normal(0, 0.3, HIDDEN),
              "W3": rng.normal(0, 1.5, (CLASSES, HIDDEN)), "B3": rng.normal(0, 0.1, CLASSES)}
    params = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    nodes = [helper.make_node("Gemm", [tm.INPUT, "W1", "B1"], ["h1"], name="fc1", transB=1),
             helper.make_node(op, ["h1"], ["a1"], name="act1", **attrs),
             helper.make_node("Gemm", ["a1", "W2", "B2"], ["h2"], name="fc2", transB=1),
             helper.make_node(op, ["h2"], ["a2"], name="act2", **attrs),
             helper.make_node("Gemm", ["a2", "W3", "B3"], ["logits"], name="fc3", transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(tm.INPUT, TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return str(path), params


def _forward(params, x, f):
    """The MLP in torch float64: (pre-activations, activations, logits)."""
    p = {k: torch.tensor(v) for k, v in params.items()}
    h1 = x @ p["W1"].T + p["B1"]
    a1 = f(h1)
    h2 = a1 @ p["W2"].T + p["B2"]
    a2 = f(h2)
    return (h1, h2), (a1, a2), a2 @ p["W3"].T + p["B3"]


def _derivative(f, h):
    """f′(h) elementwise by torch autograd."""
    h = h.detach().requires_grad_(True)
    return torch.autograd.grad(f(h).sum(), h)[0]


def _inputs(seed):
    x = np.random.default_rng(seed).uniform(-2, 2, (5, FEATURES)).astype(np.float32)
    return x, np.array([0, 1, 2, 3, 1])



@pytest.mark.parametrize("name", sorted(OPS))
def test_op_gradient_equals_torch(tmp_path, name):
    """The exact derivative of each op (Mish through the product rule of its gate): float64 torch autograd."""
    path, params = mlp(tmp_path, name)
    for seed in (0, 1):
        x, target = _inputs(seed)
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        logits = _forward(params, xt, OPS[name][3])[2]
        exact = torch.autograd.grad(logits[np.arange(len(x)), target].sum(), xt)[0].numpy()
        out = explain(path, "gradient", x, target)
        np.testing.assert_allclose(out["logits"], logits.detach().numpy(), rtol=1e-5, atol=1e-5)
        error = tm.relative_error(out["relevance"], exact)
        assert np.all(error < 1e-5), error


def _activation_rule(rule, f, h, a, h_bar, a_bar, R):
    """R_h from R_a at y = f(h) under ``rule`` (the module docstring of relgraph.rules.elementwise), float64."""
    if rule == "slope":
        return a / h * R
    if rule == "repeat":
        return f(R)
    if rule == "rescale":
        dh = h - h_bar
        return torch.where(dh.abs() < 1e-10, _derivative(f, h), (a - a_bar) / dh) * R
    return _derivative(f, h) * R  # deconvnet and guided backprop: the gradient at a non-rectifier


NAMED = {"slope": {"rule_map": "slope"}, "repeat": {"rule_map": "repeat"},
         "rescale": {"rule": "deeplift", "baseline": "zeros"}, "deconvnet": {"rule": "deconvnet"},
         "guided-backprop": {"rule": "guided-backprop"}}


@pytest.mark.parametrize("rule", sorted(NAMED))
@pytest.mark.parametrize("name", sorted(set(OPS) - GATED))
def test_op_activation_rules_equal_float64_reference(tmp_path, name, rule):
    """Every activation rule on each op, the dense layers by the gradient (R_out = 1); rescale is DeepLIFT's
    with a zero baseline (then times the input)."""
    op, f = OPS[name][0], OPS[name][3]
    path, params = mlp(tmp_path, name)
    options = dict(NAMED[rule])
    if "rule_map" in options:
        rule_map = tmp_path / f"{rule}.toml"
        rule_map.write_text(f'base = "gradient"\n[op_types]\n{op} = "{rule}"\n')
        options = {"rule_map": str(rule_map)}
    x, target = _inputs(2)
    x64 = torch.tensor(x, dtype=torch.float64)
    hs, acts, _ = _forward(params, x64, f)
    hs_bar, acts_bar, _ = _forward(params, torch.zeros_like(x64), f)
    W = {k: torch.tensor(v) for k, v in params.items()}
    R = W["W3"][target]
    for k in (1, 0):
        R = _activation_rule(rule, f, hs[k], acts[k], hs_bar[k], acts_bar[k], R) @ W[f"W{k + 1}"]
    assert np.all(R.abs().sum(1).numpy() > 0)
    expected = (x64 * R if rule == "rescale" else R).numpy()
    out = explain(path, options.pop("rule", "gradient"), x, target, **options)
    error = tm.relative_error(out["relevance"], expected)
    assert np.all(error < 1e-5), error


@pytest.mark.parametrize("name", sorted(OPS))
def test_epsilon_passes_relevance_through_the_op(tmp_path, name):
    """ε = 0.25 on the dense layers (R_out = the target logit); each op hands its relevance on unchanged
    (``pass``), and Mish's gate takes none: the signal of x · tanh(softplus(x)) gets it all. Float64 numpy."""
    epsilon = 0.25
    path, params = mlp(tmp_path, name)
    x, target = _inputs(3)
    x64 = torch.tensor(x, dtype=torch.float64)
    hs, acts, logits = _forward(params, x64, OPS[name][3])
    (h1, h2), (a1, a2), logits = [h.numpy() for h in hs], [a.numpy() for a in acts], logits.numpy()

    def epsilon_step(a, W, z, R):
        return a * ((R / (z + np.where(z >= 0, epsilon, -epsilon))) @ W)

    R = np.zeros_like(logits)
    R[np.arange(len(x)), target] = logits[np.arange(len(x)), target]
    R = epsilon_step(a2, params["W3"], logits, R)
    R = epsilon_step(a1, params["W2"], h2, R)
    expected = epsilon_step(x.astype(np.float64), params["W1"], h1, R)
    out = explain(path, "epsilon", x, target, epsilon=epsilon)
    error = tm.relative_error(out["relevance"], expected)
    assert np.all(error < 1e-5), error
