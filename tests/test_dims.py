"""1-d (audio) and 3-d (video) CNNs end to end, in both torch export forms.

AudioCNN ([N, 2, 32]): Conv1d with stride, padding, dilation and groups, BatchNorm1d, ReLU, MaxPool1d,
AvgPool1d, linear and nearest upsampling, adaptive average pooling, Linear. VideoCNN ([N, 3, 4, 8, 8]):
Conv3d with stride and padding, BatchNorm3d, ReLU, MaxPool3d, AvgPool3d, GroupNorm on 5-d, trilinear and
nearest upsampling, adaptive average pooling, Linear. For each model and form:

- canonicalization leaves the ops the rules expect (BatchNorms folded, the GroupNorm a LayerNormalization, every
  upsampling a Resize, the gathers and lerp torch's dynamo form writes a 1-d linear one with included);
- the explainer's logits equal torch's (relative 1e-5);
- ``gradient`` equals torch autograd in float64 (relative L2 per sample < 1e-4);
- ``epsilon`` conserves: Σ relevance + Σ bias relevance = the target logit (relative 1e-3);
- ``epsilon-plus-flat`` and ``epsilon-gamma-box`` match zennit (float64; relative L2 ≤ 1e-4), given rules for
  the two modules it has none for (:func:`zennit_composite`);
- the triton target (Triton's interpreter without a GPU) gives onnxruntime's relevance under ``epsilon``;
- the two forms of AudioCNN give the same relevance (relative L2 1e-6) under ``gradient``, ``epsilon``,
  ``epsilon-plus-flat`` and ``epsilon-gamma-box``: the dynamo form's lerp explained as the legacy form's Resize.

GatherNDAsGatherPass, which folds the dynamo form's GatherND to a Gather, keeps the function (onnxruntime before
and after) and says why it skips the GatherNDs it cannot fold.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.rules import Epsilon, Norm

import relgraph
from relgraph.frontend import prepare
from relgraph.lowering import compile_triton, load
from relgraph.passes import GatherNDAsGatherPass, InferShapesPass
from relgraph.lowering.explainer import TritonExplainer

try:
    import torch_models as tm
    from test_zennit import COMPOSITES, HIGH, LOW, assert_same_relevance, relgraph_relevance, zennit_relevance
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm
    from tests.test_zennit import (COMPOSITES, HIGH, LOW, assert_same_relevance, relgraph_relevance,
                                   zennit_relevance)

FORMS = {"legacy": False, "dynamo": True}


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics, conv/linear biases of every rank and GroupNorm affine parameters."""
    tm.randomize_batchnorm(model, seed)
    tm.randomize_biases(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for m in model.modules():
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
    """[N, 3, 4, 8, 8] → Conv3d p1 → BN → ReLU → MaxPool3d k(2, 3, 3) s2 p(0, 1, 1) (windows overlap in space, not
    in time) → ×2 trilinear → Conv3d s2 p1 → GroupNorm(2, 8)
    → ReLU → AvgPool3d (1, 2, 2) → ×2 nearest → Conv3d → ReLU → adaptive average pool → Linear."""

    input_shape = (3, 4, 8, 8)

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(),                   # 4x8x8
            nn.MaxPool3d((2, 3, 3), stride=2, padding=(0, 1, 1)),                           # 2x4x4
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


# what the rules see after canonicalization: the BatchNorms folded into the convolutions, the GroupNorm a
# LayerNormalization between reshapes, upsampling a Resize of each mode (the dynamo form's 1-d linear upsampling,
# written out as two row gathers mixed by constant weights, a + (b − a)·w, folded by LerpAsResizePass)
CANONICAL = {
    ("audio", "legacy"): {"Resize": ["linear", "nearest"], "Gather": 0, "LayerNormalization": 0},
    ("audio", "dynamo"): {"Resize": ["linear", "nearest"], "Gather": 0, "LayerNormalization": 0},
    ("video", "legacy"): {"Resize": ["linear", "nearest"], "Gather": 0, "LayerNormalization": 1},
    ("video", "dynamo"): {"Resize": ["linear", "nearest"], "Gather": 0, "LayerNormalization": 1},
}


@pytest.mark.parametrize("name, form", CASES)
def test_canonical_form(exports, name, form):
    model, path = exports(name, form)
    graph = prepare(path)[0].graph
    ops = [n.op_type for n in graph]
    expected = CANONICAL[name, form]
    assert sorted(str(n.attributes["mode"].value) for n in graph if n.op_type == "Resize") == expected["Resize"]
    assert ops.count("Gather") == expected["Gather"] and "GatherND" not in ops
    assert ops.count("LayerNormalization") == expected["LayerNormalization"]
    assert "BatchNormalization" not in ops and "InstanceNormalization" not in ops
    assert (ops.count("Conv"), ops.count("MaxPool"), ops.count("AveragePool")) == (3, 1, 1)
    rank = 1 + len(model.input_shape)  # the batch and the input_shape
    assert all(len(n.inputs[0].shape) == rank for n in graph if n.op_type in ("Conv", "MaxPool", "AveragePool"))


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
    np.testing.assert_allclose(total, logit, rtol=1e-3)  # measured 3e-5


class FixedSigmaGroupNorm(nn.Module):
    """GroupNorm whose σ autograd sees as a constant: y = γ ⊙ (h − mean_g h) / σ_g + β with σ_g detached, the
    same function as ``norm``. Its gradient is the linear map A = diag(γ/σ)(I − M) of the LN rule (σ constant),
    so zennit's ``Epsilon`` on it is that rule: R_h = h ⊙ Aᵀ(R ⊘ stab(y)). zennit has no rule of its own for
    GroupNorm (its default, the gradient, differentiates σ too)."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, h):
        g = h.reshape(h.shape[0], self.groups, -1)
        centered = g - g.mean(2, keepdim=True)
        sigma = (centered.pow(2).mean(2, keepdim=True) + self.eps).sqrt().detach()
        shape = (1, -1) + (1,) * (h.dim() - 2)
        return (centered / sigma).reshape(h.shape) * self.weight.reshape(shape) + self.bias.reshape(shape)


def zennit_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every GroupNorm written as :class:`FixedSigmaGroupNorm` (the same function)."""
    copied = copy.deepcopy(model)
    for name, module in list(copied.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, child_name, FixedSigmaGroupNorm(child))
    return copied


def zennit_composite(rule: str, shape):
    """zennit's composite with the BatchNorms merged into the convolutions (``SequentialMergeBatchNorm``, every
    rank), and rules for the two modules it has none for: ``Norm`` on upsampling (relgraph's ``norm`` on a
    linear Resize, x ⊙ Aᵀ(R ⊘ stab(Ax)); on nearest upsampling it is the adjoint AᵀR but for the 1e-6
    stabilizer, as relgraph's) and ``Epsilon`` on the GroupNorm with σ held fixed (the LN rule)."""
    composite = COMPOSITES[rule](SequentialMergeBatchNorm(), shape)
    composite.layer_map[:0] = [(nn.Upsample, Norm()), (FixedSigmaGroupNorm, Epsilon())]
    return composite


@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box"])
@pytest.mark.parametrize("name, form", CASES)
def test_composites_match_zennit(exports, name, form, rule):
    model, path = exports(name, form)
    x = tm.random_input((3, *model.input_shape), 3, LOW, HIGH)
    target = tm.reference_logits(model, x).argmax(1)
    relevance, _ = relgraph_relevance(path, rule, x, target, bounds=(LOW, HIGH))
    reference = zennit_model(model)
    expected = zennit_relevance(reference, zennit_composite(rule, x.shape), x, target)
    assert_same_relevance(relevance, expected,  # measured ≤ 2e-5
                          lambda: zennit_relevance(reference, zennit_composite(rule, x.shape), x, target,
                                                   torch.float32), tolerance=1e-4)


@pytest.mark.parametrize("name, form", CASES)
def test_triton_matches_onnxruntime(exports, tmp_path, name, form):
    """The launch plan (Triton's interpreter without a GPU) gives the ONNX explainer's outputs under ε: the dense
    head on its kernels, the 1-d and 3-d convolutions, pools and max-pool routes as torch steps."""
    model, path = exports(name, form)
    folder = compile_triton(path, tmp_path / "epsilon.triton", rule="epsilon").path
    reference, lowered = relgraph.Explainer(folder), relgraph.open_explainer(folder)
    assert isinstance(lowered, TritonExplainer)
    plan = load(folder)[0]
    assert {s.op for s in plan.kernel_steps()} == {"linear", "epsilon_linear"}
    assert "ScatterElements" in {s.op for s in plan.steps}  # the max-pool route, expanded
    x = _input(model, 4, n=2)
    want, got = reference.explain(x), lowered.explain(x)
    for key in ("logits", "bias_relevance"):
        scale = max(np.abs(want[key]).max(), 1e-30)
        np.testing.assert_allclose(got[key] / scale, want[key] / scale, atol=1e-5, err_msg=key)
    assert tm.relative_error(got["relevance"], want["relevance"]).max() < 1e-4


@pytest.mark.parametrize("rule", ["gradient", "epsilon", "epsilon-plus-flat", "epsilon-gamma-box"])
def test_audio_forms_give_equal_relevance(exports, rule):
    """Relevance does not depend on how the exporter spelled the linear upsampling (a Resize, or gathers and a
    lerp); without the fold the two differ by 1.4e-5 under ε."""
    model, legacy = exports("audio", "legacy")
    _, dynamo = exports("audio", "dynamo")
    x = tm.random_input((3, *model.input_shape), 5, LOW, HIGH)
    target = tm.reference_logits(model, x).argmax(1)
    params = {"bounds": (LOW, HIGH)} if rule == "epsilon-gamma-box" else {}
    want, _ = relgraph_relevance(legacy, rule, x, target, **params)
    got, _ = relgraph_relevance(dynamo, rule, x, target, **params)
    error = tm.relative_error(got, want)
    assert np.all(error < 1e-6), error  # measured ≤ 5e-7; 1.4e-5 under ε without the fold


def _gather_nd_model(indices: np.ndarray, batch_dims: int = 0) -> onnx.ModelProto:
    """y = GatherND(x, indices) on x [L, N, C] with a dynamic N (the batch behind torch's Transpose)."""
    graph = helper.make_graph(
        [helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8, "N", 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(indices.astype(np.int64), "i")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("shape", [(16, 1), (4, 5, 1)])
def test_gather_nd_as_gather_keeps_the_function(shape):
    indices = np.random.default_rng(1).integers(-8, 8, shape)
    proto = _gather_nd_model(indices)
    model = ir.from_proto(proto)
    InferShapesPass()(model)
    fold = GatherNDAsGatherPass()
    assert fold(model).modified and not fold.skipped
    assert [n.op_type for n in model.graph] == ["Gather"]
    x = tm.random_input((8, 2, 3), 11)

    def run(p):
        return ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    np.testing.assert_array_equal(run(ir.serde.serialize_model(model)), run(proto))


@pytest.mark.parametrize("indices, batch_dims, why", [
    (np.zeros((4, 2)), 0, "more than one axis"),
    (np.zeros((8, 4, 1)), 1, "batch_dims"),
])
def test_gather_nd_as_gather_skips(indices, batch_dims, why):
    model = ir.from_proto(_gather_nd_model(indices, batch_dims))
    fold = GatherNDAsGatherPass()
    assert not fold(model).modified
    assert len(fold.skipped) == 1 and why in fold.skipped[0]
