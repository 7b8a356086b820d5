"""InstanceNormalization and GroupNormalization against independent references.

- ``gradient`` equals torch autograd (float64) through ``nn.InstanceNorm2d``/``1d`` (affine) and ``nn.GroupNorm``
  with one group, several and one per channel, in both torch export forms (both write GroupNorm as
  Reshape → InstanceNormalization → Reshape → Mul → Add), in a small CNN and a 1-d (audio) one;
- the LN rule (σ held fixed) at ε = 0.25 equals a float64 numpy re-implementation in dense matrix form:
  y = A h + β with A = diag(γ/σ)(I − M), M the mean over each group, R_h = h ⊙ Aᵀ (R ⊘ stab(y));
- ``epsilon`` conserves: Σ R_input + Σ R_bias = f_c(x);
- the triton target (Triton's interpreter without a GPU) gives onnxruntime's outputs on the GroupNorm CNN;
- FoldGroupNormPass keeps the function of every form it folds (onnxruntime before and after), GroupNormalization
  of opset 18 (γ per group; onnx's checker refuses it, onnxruntime runs it) and 21 included;
- torch's export of LayerNorm below opset 17, written out op by op, folds to the op: the gradient equals
  autograd and every rule gives the relevance of the opset-17 export, which writes the op.
"""

import warnings

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import relgraph
from relgraph.frontend import prepare
from relgraph.passes import FoldGroupNormPass, InferShapesPass
from relgraph.lowering import compile_triton
from relgraph.lowering.explainer import TritonExplainer

try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

FORMS = {"legacy": False, "dynamo": True}


def _randomize(norms, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=generator))


class GroupNormCNN(nn.Module):
    """Convolutions with GroupNorm of 2 groups of 3 channels, 1 group (a LayerNorm over C, H, W) and one group
    per channel (an InstanceNorm), each with its own γ and β, ReLUs, a global pool and a dense head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(2, 6)
        self.conv2, self.gn2 = nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.GroupNorm(1, 6)
        self.conv3, self.gn3 = nn.Conv2d(6, 6, 1), nn.GroupNorm(6, 6)
        self.head = nn.Linear(6, 5)
        _randomize([self.gn1, self.gn2, self.gn3], 0)

    def forward(self, x):
        x = torch.relu(self.gn1(self.conv1(x)))
        x = torch.relu(self.gn2(self.conv2(x)))
        x = torch.relu(self.gn3(self.conv3(x)))
        return self.head(x.mean((2, 3)))


class InstanceNormCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True)
        self.head = nn.Linear(4, 5)
        _randomize([self.norm], 1)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


class AudioCNN(nn.Module):
    """1-d: Conv1d → GroupNorm(2, 4) → ReLU → Conv1d → InstanceNorm1d (affine) → ReLU → mean over time."""

    def __init__(self):
        super().__init__()
        self.conv1, self.gn = nn.Conv1d(2, 4, 3, padding=1), nn.GroupNorm(2, 4)
        self.conv2, self.inorm = nn.Conv1d(4, 4, 3), nn.InstanceNorm1d(4, affine=True)
        self.head = nn.Linear(4, 3)
        _randomize([self.gn, self.inorm], 2)

    def forward(self, x):
        x = torch.relu(self.gn(self.conv1(x)))
        return self.head(torch.relu(self.inorm(self.conv2(x))).mean(2))


MODELS = {"group-norm": (GroupNormCNN, (3, 8, 8), 3), "instance-norm": (InstanceNormCNN, (3, 6, 6), 1),
          "audio": (AudioCNN, (2, 12), 2)}


def _export(name, form, tmp_path):
    cls, shape, norms = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    path = tm.export(model, torch.zeros(1, *shape), tmp_path / f"{name}.onnx", FORMS[form])
    return model, shape, norms, path


def _explain(path, tmp_path, x, target, **options) -> dict:
    result = relgraph.compile(path, output=str(tmp_path / "explainer.onnx"), overwrite=True, **options)
    return relgraph.Explainer(result.path).explain(x, target=target)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", MODELS)
def test_gradient_equals_autograd(tmp_path, name, form):
    model, shape, norms, path = _export(name, form, tmp_path)
    ops = [n.op_type for n in prepare(path)[0].graph]
    assert ops.count("LayerNormalization") == norms and "InstanceNormalization" not in ops
    x = tm.random_input((3, *shape), 5)
    target = tm.reference_logits(model, x).argmax(1)
    out = _explain(path, tmp_path, x, target, rule="gradient")
    np.testing.assert_allclose(out["logits"], tm.reference_logits(model, x), rtol=1e-4, atol=1e-5)
    assert np.all(tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target)) < 1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_epsilon_conserves(tmp_path, name):
    model, shape, _, path = _export(name, "legacy", tmp_path)
    x = tm.random_input((3, *shape), 6)
    out = _explain(path, tmp_path, x, None, rule="epsilon")
    logit = out["logits"][np.arange(len(x)), out["logits"].argmax(1)]
    np.testing.assert_allclose(tm.per_sample(out["relevance"]).sum(1) + out["bias_relevance"], logit, rtol=1e-3)


class GroupNormDense(nn.Module):
    """x [N, 6, 2] → 1×1 Conv1d (a dense map per position) → GroupNorm(3, 6) → flatten → Linear(12, 3)."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv1d(6, 6, 1), nn.GroupNorm(3, 6), nn.Linear(12, 3)
        _randomize([self.norm], 3)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).flatten(1))


def _stab(z, epsilon):
    return z + epsilon * np.where(z >= 0, 1.0, -1.0)


def epsilon_reference(model: GroupNormDense, x: np.ndarray, target: np.ndarray, epsilon: float):
    """(relevance, bias relevance) of ε-LRP on GroupNormDense in float64, the group norm as the affine map
    y = A h + β of its flattened input with σ fixed, built as a dense matrix per sample."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    groups, (n, c, length) = model.norm.num_groups, x.shape
    x = x.astype(np.float64)
    z1 = np.einsum("oi,nil->nol", p["conv.weight"][:, :, 0], x) + p["conv.bias"][:, None]
    h = z1.reshape(n, -1)                                               # element e = (channel, position)
    group = np.repeat(np.arange(c) // (c // groups), length)           # the group of each element
    same = (group[:, None] == group[None, :]).astype(np.float64)
    centering = np.eye(c * length) - same / same.sum(1, keepdims=True)  # I − M
    gamma, beta = np.repeat(p["norm.weight"], length), np.repeat(p["norm.bias"], length)
    relevance, bias = np.zeros_like(x), np.zeros(n)
    for i in range(n):
        centered = centering @ h[i]
        sigma = np.sqrt(np.array([centered[group == g] @ centered[group == g] / (group == g).sum()
                                  for g in group]) + model.norm.eps)
        a = np.diag(gamma / sigma) @ centering
        y = a @ h[i] + beta
        z2 = p["head.weight"] @ y + p["head.bias"]
        s2 = np.zeros_like(z2)
        s2[target[i]] = z2[target[i]] / _stab(z2[target[i]], epsilon)
        r_y = y * (p["head.weight"].T @ s2)                             # the head, ε
        s = r_y / _stab(y, epsilon)                                     # the group norm, σ fixed, ε
        r_h = (h[i] * (a.T @ s)).reshape(c, length)
        s1 = r_h / _stab(z1[i], epsilon)                                # the 1×1 conv, ε
        relevance[i] = x[i] * (p["conv.weight"][:, :, 0].T @ s1)
        bias[i] = s2 @ p["head.bias"] + s @ beta + (s1 * p["conv.bias"][:, None]).sum()
    return relevance, bias


@pytest.mark.parametrize("form", FORMS)
def test_epsilon_rule_matches_dense_reference(tmp_path, form):
    """At ε = 0.25 on every layer (the group norm included, by a rule map) and inputs of a size where ε
    changes the result: a wrong stabilizer, centering or group shows."""
    torch.manual_seed(0)
    model = GroupNormDense().eval()
    path = tm.export(model, torch.zeros(1, 6, 2), tmp_path / "dense.onnx", FORMS[form])
    rule_map = tmp_path / "map.toml"
    rule_map.write_text('base = "epsilon"\n[params]\nepsilon = 0.25\n[op_types]\nLayerNormalization = "epsilon"\n')
    x = tm.random_input((4, 6, 2), 7)
    target = tm.reference_logits(model, x).argmax(1)
    out = _explain(path, tmp_path, x, target, rule_map=str(rule_map))
    relevance, bias = epsilon_reference(model, x, target, 0.25)
    loose = epsilon_reference(model, x, target, 1e-6)[0]
    assert np.all(tm.relative_error(relevance, loose) > 1e-2)  # ε matters on these inputs
    assert np.all(tm.relative_error(out["relevance"], relevance) <= 1e-5)
    np.testing.assert_allclose(out["bias_relevance"], bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["gradient", "epsilon"])
def test_triton_lowering_matches_onnxruntime(tmp_path, rule):
    _, shape, _, path = _export("group-norm", "legacy", tmp_path)
    folder = compile_triton(path, tmp_path / f"{rule}.triton", rule=rule).path
    reference, lowered = relgraph.Explainer(folder), relgraph.open_explainer(folder)
    assert isinstance(lowered, TritonExplainer)
    x = tm.random_input((2, *shape), 8)
    want, got = reference.explain(x), lowered.explain(x)
    for name, value in want["outputs"].items():
        scale = max(np.abs(value).max(), 1e-30)
        np.testing.assert_allclose(got["outputs"][name] / scale, value / scale, atol=1e-5, err_msg=name)
    assert tm.relative_error(got["relevance"], want["relevance"]).max() < 1e-4


class LayerNormNet(nn.Module):
    """Linear → LayerNorm (γ, β) → ReLU → LayerNorm without γ and β → Linear."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm1, self.norm2 = nn.Linear(6, 8), nn.LayerNorm(8), nn.LayerNorm(8, elementwise_affine=False)
        self.fc2 = nn.Linear(8, 4)
        _randomize([self.norm1], 4)

    def forward(self, x):
        return self.fc2(self.norm2(torch.relu(self.norm1(self.fc1(x)))))


@pytest.mark.parametrize("opset", [11, 14])
def test_layer_norm_written_out_below_opset_17(tmp_path, opset):
    torch.manual_seed(0)
    model = LayerNormNet().eval()
    old = tmp_path / "old.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 6),), str(old), dynamo=False, opset_version=opset,
                          input_names=[tm.INPUT], output_names=[tm.OUTPUT],
                          dynamic_axes={tm.INPUT: {0: "batch"}, tm.OUTPUT: {0: "batch"}})
    assert "LayerNormalization" not in {n.op_type for n in onnx.load(str(old)).graph.node}
    ops = [n.op_type for n in prepare(old)[0].graph]
    assert ops.count("LayerNormalization") == 2 and not {"Sqrt", "Pow", "Div", "ReduceMean"} & set(ops)
    current = tm.export(model, torch.zeros(1, 6), tmp_path / "current.onnx", dynamo=False)
    x = tm.random_input((4, 6), 9)
    target = tm.reference_logits(model, x).argmax(1)
    out = _explain(old, tmp_path, x, target, rule="gradient")
    assert np.all(tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target)) < 1e-4)
    for rule in ("epsilon", "epsilon-plus-flat"):
        want = _explain(current, tmp_path, x, target, rule=rule)["relevance"]
        assert np.all(tm.relative_error(_explain(old, tmp_path, x, target, rule=rule)["relevance"], want) <= 1e-6)


RNG = np.random.default_rng(0)
FOLDS = {  # name → (opset, input shape, nodes, initializers)
    "group-norm-21": (21, [2, 6, 4, 3], [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3,
                                                           epsilon=0.01)],
                      {"s": RNG.uniform(0.5, 1.5, 6), "b": RNG.normal(0, 0.3, 6)}),
    "group-norm-18": (18, [2, 6, 4, 3], [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3,
                                                           epsilon=0.01)],
                      {"s": RNG.uniform(0.5, 1.5, 3), "b": RNG.normal(0, 0.3, 3)}),
    "instance-norm-3d": (17, [2, 3, 2, 3, 4], [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])],
                         {"s": RNG.uniform(0.5, 1.5, 3), "b": RNG.normal(0, 0.3, 3)}),
    # torch's chain with γ per group in the instance norm, then a division and a subtraction by constants
    "torch-chain": (17, [2, 6, 5], [
        helper.make_node("Reshape", ["x", "to"], ["g"]),
        helper.make_node("InstanceNormalization", ["g", "s", "b"], ["n"], epsilon=0.01),
        helper.make_node("Reshape", ["n", "back"], ["r"]),
        helper.make_node("Div", ["r", "k"], ["d"]), helper.make_node("Sub", ["d", "c"], ["y"])],
        {"to": np.array([0, 2, -1]), "back": np.array([-1, 6, 5]), "s": RNG.uniform(0.5, 1.5, 2),
         "b": RNG.normal(0, 0.3, 2), "k": RNG.uniform(0.5, 2, (6, 1)), "c": RNG.normal(0, 0.3, (1, 6, 1))}),
}


@pytest.mark.parametrize("case", FOLDS)
def test_fold_group_norm_keeps_the_function(case):
    opset, shape, nodes, inits = FOLDS[case]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N"] + shape[1:])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32 if v.dtype.kind == "f" else np.int64), k)
         for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    model = ir.from_proto(proto)
    InferShapesPass()(model)
    fold = FoldGroupNormPass()
    assert fold(model).modified and not fold.skipped
    ops = [n.op_type for n in model.graph]
    assert "LayerNormalization" in ops and not {"InstanceNormalization", "GroupNormalization", "Div", "Sub"} & set(ops)
    x = RNG.normal(0, 2, shape).astype(np.float32)

    def run(p):
        return ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    np.testing.assert_allclose(run(ir.serde.serialize_model(model)), run(proto), rtol=1e-5, atol=1e-5)
