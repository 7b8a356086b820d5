"""The ``gradient`` and ``input-x-gradient`` explainers against torch autograd.

relgraph's ``gradient`` starts at R_out = 1 on the target logit, so its relevance must be exactly
∂f_c/∂x, and ``input-x-gradient`` must be x ⊙ ∂f_c/∂x. The reference is torch autograd in float64 on
the model the ONNX file was exported from, in both of torch's export forms: the small models that
use every supported op between them, ResNet-18 and VGG-16 with random weights.
"""

import numpy as np
import pytest
import torch

import relgraph

try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

TOLERANCE = 1e-4  # relative L2 error per sample
SEEDS = [0, 1, 2]
FORMS = {"legacy": False, "dynamo": True}

# What the two small models must contain between them, per export form: every op relgraph supports.
COMMON_OPS = {
    "Gemm", "MatMul", "Conv", "MaxPool", "AveragePool", "ReduceMean", "Relu", "LeakyRelu", "Clip",
    "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Add", "Sub", "Mul", "Div", "Concat", "Split", "Slice",
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad", "BatchNormalization", "Softmax",
}
FORM_OPS = {"legacy": COMMON_OPS | {"GlobalAveragePool", "Flatten"}, "dynamo": COMMON_OPS}


class Compiled:
    """One exported model and its explainers, compiled on first use."""

    def __init__(self, model, path):
        self.model, self.path = model, path
        self._explainers = {}

    def explainer(self, rule: str) -> relgraph.Explainer:
        if rule not in self._explainers:
            out = self.path.with_name(f"{self.path.stem}.{rule}.onnx")
            self._explainers[rule] = relgraph.Explainer(relgraph.compile(self.path, rule=rule, output=str(out),
                                                                         overwrite=True).path)
        return self._explainers[rule]


def _exports(tmp_path_factory, name, build, shape, forms):
    folder = tmp_path_factory.mktemp(name)
    model = build()
    return {form: Compiled(model, tm.export(model, torch.zeros(1, *shape), folder / f"{name}_{form}.onnx",
                                            dynamo=FORMS[form]))
            for form in forms}


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    return {cls.__name__: _exports(tmp_path_factory, cls.__name__, lambda c=cls: tm.small(c, seed=0),
                                   cls.input_shape, FORMS)
            for cls in (tm.ConvZoo, tm.StructureZoo)}


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    return _exports(tmp_path_factory, "resnet18", lambda: tm.resnet18(seed=0), (3, 64, 64), FORMS)


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory):
    return _exports(tmp_path_factory, "vgg16", lambda: tm.vgg16(seed=0), (3, 224, 224), ["legacy"])


def _error(model, x, target, relevance, rule, dtype):
    grad = tm.reference_gradient(model, x, target, dtype)
    return tm.relative_error(relevance, x * grad if rule == "input-x-gradient" else grad)


def _check_gradient(compiled: Compiled, x: np.ndarray, target, rule: str = "gradient"):
    out = compiled.explainer(rule).explain(x, target=target)
    expected_logits = tm.reference_logits(compiled.model, x)
    scale = np.abs(expected_logits).max()
    np.testing.assert_allclose(out["logits"], expected_logits, rtol=1e-4, atol=1e-5 * scale)
    chosen = expected_logits.argmax(1) if target is None else np.broadcast_to(target, (len(x),))
    np.testing.assert_array_equal(out["target"], chosen)
    error = _error(compiled.model, x, chosen, out["relevance"], rule, torch.float64)
    if np.any(error >= TOLERANCE):
        # A ReLU whose pre-activation lies within float32 round-off of zero (VGG-16 has 13.5 M of them)
        # takes the other branch in float64; float32 autograd then sees what the explainer sees.
        error = np.minimum(error, _error(compiled.model, x, chosen, out["relevance"], rule, torch.float32))
    assert np.all(error < TOLERANCE), f"relative error per sample {error}"
    np.testing.assert_array_equal(out["bias_relevance"], np.zeros(len(x), np.float32))
    return error


# ------------------------------------------------------------------------------------------ small models


@pytest.mark.parametrize("form", FORMS)
def test_small_models_cover_every_supported_op(small_models, form):
    ops = set().union(*(tm.op_types(exports[form].path) for exports in small_models.values()))
    missing = FORM_OPS[form] - ops
    assert not missing, f"the {form} exports lack {sorted(missing)}"


def test_small_models_cover_conv_geometries(small_models):
    import onnx

    convs = [n for n in onnx.load(str(small_models["ConvZoo"]["legacy"].path)).graph.node if n.op_type == "Conv"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in convs]
    assert any(a.get("auto_pad") == b"SAME_UPPER" for a in attrs)
    assert any(a.get("group", 1) == 8 for a in attrs)          # depthwise
    assert any(1 < a.get("group", 1) < 8 for a in attrs)        # grouped
    assert any(max(a.get("dilations", [1])) > 1 for a in attrs)
    assert any(max(a.get("strides", [1])) > 1 for a in attrs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["ConvZoo", "StructureZoo"])
def test_gradient_small(small_models, name, form, seed):
    compiled = small_models[name][form]
    x = tm.random_input((3, *compiled.model.input_shape), seed)
    target = tm.pick_targets(tm.reference_logits(compiled.model, x), seed)
    _check_gradient(compiled, x, target)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["ConvZoo", "StructureZoo"])
def test_gradient_small_predicted_class(small_models, name, form):
    """target=None explains the arg-max class."""
    compiled = small_models[name][form]
    _check_gradient(compiled, tm.random_input((2, *compiled.model.input_shape), 7), None)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["ConvZoo", "StructureZoo"])
def test_input_x_gradient_small(small_models, name, form):
    compiled = small_models[name][form]
    x = tm.random_input((3, *compiled.model.input_shape), 11)
    target = tm.pick_targets(tm.reference_logits(compiled.model, x), 11)
    _check_gradient(compiled, x, target, rule="input-x-gradient")


# ------------------------------------------------------------------------------------------ torchvision


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("form", FORMS)
def test_gradient_resnet18(resnet18, form, seed):
    compiled = resnet18[form]
    x = tm.random_input((2, 3, 64, 64), seed)
    target = tm.pick_targets(tm.reference_logits(compiled.model, x), seed)
    _check_gradient(compiled, x, target)


@pytest.mark.parametrize("form", FORMS)
def test_input_x_gradient_resnet18(resnet18, form):
    compiled = resnet18[form]
    x = tm.random_input((2, 3, 64, 64), 5)
    target = tm.pick_targets(tm.reference_logits(compiled.model, x), 5)
    _check_gradient(compiled, x, target, rule="input-x-gradient")


def test_gradient_vgg16(vgg16):
    compiled = vgg16["legacy"]
    x = tm.random_input((1, 3, 224, 224), 3)
    target = tm.pick_targets(tm.reference_logits(compiled.model, x), 3)
    _check_gradient(compiled, x, target)
