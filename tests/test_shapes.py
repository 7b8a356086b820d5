"""Shapes a model states loosely: dynamic height and width fixed with ``--input-shape``, slices of every axis.

- A CNN exported by torch with dynamic H and W (its flattened size depends on them; flattened by Flatten or by
  ``x.view(x.size(0), -1)``, computed from Shape at run time) compiles with ``--input-shape input=Nx3x8x8`` into an explainer equal to that of the same network
  exported with static H and W, under ``gradient`` and ``epsilon``; its gradient equals torch autograd's.
- Without the flag, the refusal is one line that names it; a bad flag is one line too.
- A Slice of part of the batch axis is refused by ``inspect`` and ``compile`` alike (one covers what the other
  compiles; the slice of all of it, as Keras's Cropping2D through tf2onnx, is in tests/test_spelling.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import relgraph

try:
    import torch_models as tm
    from test_cli import assert_one_line_error, run
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm
    from tests.test_cli import assert_one_line_error, run


class FlattenCNN(nn.Module):
    """Conv → ReLU → max pool → strided conv → ReLU → flatten → dense: the dense layer's input size depends on
    H and W, and the strided conv's transpose needs them. ``view``: flatten as ``x.view(x.size(0), -1)``, which
    the legacy export computes from Shape at run time."""

    def __init__(self, view: bool = False):
        super().__init__()
        self.view = view
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)))
        return self.fc(x.view(x.size(0), -1) if self.view else torch.flatten(x, 1))


def export(model: nn.Module, path, dynamic_hw: bool) -> str:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    example = torch.randn(2, 3, 8, 8)
    torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=tm.LEGACY_OPSET,
                      input_names=[tm.INPUT], output_names=[tm.OUTPUT],
                      dynamic_axes={tm.INPUT: axes, tm.OUTPUT: {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = tm.IR_VERSION
    onnx.save(proto, str(path))
    return str(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """form → (torch model, dynamic-H/W export, static export), for both ways of flattening."""
    folder = tmp_path_factory.mktemp("shapes")
    out = {}
    for form in ("flatten", "view"):
        torch.manual_seed(0)
        model = FlattenCNN(view=form == "view")
        dynamic = export(model, folder / f"{form}_dynamic.onnx", True)
        static = export(model, folder / f"{form}_static.onnx", False)
        dims = onnx.load(dynamic).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
        out[form] = model, dynamic, static
    return out


def explain(path: str, rule: str, x: np.ndarray, **kw) -> dict:
    result = relgraph.compile(path, rule=rule, write=False, **kw)
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {tm.INPUT: x, "target": np.full(len(x), 2, np.int64)})))


@pytest.mark.parametrize("form", ["flatten", "view"])
@pytest.mark.parametrize("rule", ["gradient", "epsilon"])
def test_dynamic_height_width_fixed_equals_static_export(exports, form, rule):
    model, dynamic, static = exports[form]
    x = tm.random_input((3, 3, 8, 8), seed=1)
    fixed = explain(dynamic, rule, x, input_shapes={tm.INPUT: ["N", 3, 8, 8]})
    reference = explain(static, rule, x)
    np.testing.assert_allclose(fixed[tm.OUTPUT], reference[tm.OUTPUT], rtol=1e-6, atol=1e-6)
    assert np.all(tm.relative_error(fixed["relevance"], reference["relevance"]) <= 1e-6)
    if rule == "gradient":
        exact = tm.reference_gradient(model, x, np.full(len(x), 2))
        assert np.all(tm.relative_error(fixed["relevance"], exact) < 1e-5)
    for n in (1, 5):  # the batch stays dynamic
        assert explain(dynamic, rule, tm.random_input((n, 3, 8, 8), seed=n),
                       input_shapes={tm.INPUT: ["N", 3, 8, 8]})["relevance"].shape == (n, 3, 8, 8)


def test_input_shape_on_the_command_line(exports, tmp_path):
    _, dynamic, static = exports["view"]
    code, out, err = run("inspect", dynamic, "--input-shape", "input=Nx3x8x8")
    assert code == 0, err
    assert "[" in out and "3, 8, 8]" in out.splitlines()[0]
    code, _, err = run("compile", dynamic, "--rule", "epsilon", "-o", tmp_path / "e.onnx",
                       "--input-shape", "input=Bx3x8x8")
    assert code == 0, err
    x = tm.random_input((2, 3, 8, 8), seed=2)
    ours = relgraph.Explainer(str(tmp_path / "e.onnx")).explain(x, 1)
    reference = relgraph.Explainer(relgraph.compile(static, rule="epsilon", output=str(tmp_path / "s.onnx")).path) \
        .explain(x, 1)
    assert np.all(tm.relative_error(ours["relevance"], reference["relevance"]) <= 1e-6)


@pytest.mark.parametrize("form", ["flatten", "view"])
def test_dynamic_dimensions_refused_naming_the_flag(exports, form, tmp_path):
    """The strided conv's refusal (flatten) or the Reshape's that did not fold (view) names the flag."""
    _, dynamic, _ = exports[form]
    code, _, err = run("compile", dynamic, "-o", tmp_path / "e.onnx")
    assert_one_line_error(code, err, "--input-shape")
    code, out, _ = run("inspect", dynamic)
    assert "--input-shape input=" in out


class PooledCNN(nn.Module):
    """Fully convolutional, pooled by GlobalAveragePool: nothing but the pool's transpose needs H and W. Its
    third channel is taken by a scalar Gather (``[:, 2]``) in front of the dynamic H and W."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(1, 5, 3, padding=1)

    def forward(self, x):
        picked = torch.relu(self.conv1(x))[:, 2]
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv2(picked.unsqueeze(1)), 1), 1)


@pytest.mark.parametrize("rule", ["gradient", "epsilon"])
def test_pool_over_dynamic_height_width(tmp_path, rule):
    """A pool over a dynamic H and W is refused before the walk, in one line naming the flag (it used to fail
    inside the walk with an internal error); with the flag, the gradient is torch's at that size."""
    torch.manual_seed(0)
    model = PooledCNN()
    dynamic = export(model, tmp_path / "pooled.onnx", True)
    code, _, err = run("compile", dynamic, "--rule", rule, "-o", tmp_path / "e.onnx")
    assert_one_line_error(code, err, "GlobalAveragePool", "--input-shape")
    assert not (tmp_path / "e.onnx").exists()
    for size in (8, 11):
        x = tm.random_input((3, 3, size, size), seed=size)
        fixed = explain(dynamic, rule, x, input_shapes={tm.INPUT: ["N", 3, size, size]})
        if rule == "gradient":
            exact = tm.reference_gradient(model, x, np.full(len(x), 2))
            assert np.all(tm.relative_error(fixed["relevance"], exact) < 1e-5)
        else:  # ε conserves the target logit up to the biases' share
            total = fixed["relevance"].reshape(len(x), -1).sum(1) + fixed["bias_relevance"]
            np.testing.assert_allclose(total, fixed[tm.OUTPUT][:, 2], rtol=1e-3, atol=1e-5)


class SequenceFirstHead(nn.Module):
    """Tokens turned sequence-first ([S, N, E], as torchvision's MultiheadAttention wants them), a dense layer
    per token, then the first token (``[0]``, a scalar Gather on axis 0) into the head: the dynamic batch lies
    after the gathered axis."""

    def __init__(self):
        super().__init__()
        self.mix, self.head = nn.Linear(6, 7), nn.Linear(7, 4)

    def forward(self, x):
        return self.head(torch.relu(self.mix(x.permute(1, 0, 2)))[0])


def explain_one_gather(tmp_path, model: nn.Module, shape: tuple, rule: str, seed: int) -> np.ndarray | None:
    """Export ``model`` (batch dynamic; its one Gather kept), explain class 2 of random inputs of ``shape``:
    under ``gradient`` the relevance must be torch's gradient (returned), under ``epsilon`` it must conserve."""
    torch.manual_seed(0)
    path = tmp_path / "gather.onnx"
    torch.onnx.export(model.eval(), (torch.randn(2, *shape[1:]),), str(path), dynamo=False,
                      opset_version=tm.LEGACY_OPSET, input_names=[tm.INPUT], output_names=[tm.OUTPUT],
                      dynamic_axes={tm.INPUT: {0: "batch"}, tm.OUTPUT: {0: "batch"}})
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node if n.op_type == "Gather"] == ["Gather"]
    proto.ir_version = tm.IR_VERSION
    onnx.save(proto, str(path))
    x = tm.random_input(shape, seed=seed)
    out = explain(str(path), rule, x)
    if rule == "gradient":
        exact = tm.reference_gradient(model, x, np.full(len(x), 2))
        assert np.all(tm.relative_error(out["relevance"], exact) < 1e-5)
        return exact
    total = out["relevance"].reshape(len(x), -1).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(total, out[tm.OUTPUT][:, 2], rtol=1e-4, atol=1e-5)
    return None


@pytest.mark.parametrize("rule", ["gradient", "epsilon"])
def test_scalar_gather_before_the_dynamic_batch(tmp_path, rule):
    """A scalar Gather may pick a row in front of dynamic dimensions (only a vector of indices needs them
    static): the first token of a sequence-first batch compiles, and its gradient is torch's; ε conserves."""
    torch.manual_seed(0)
    explain_one_gather(tmp_path, SequenceFirstHead(), (3, 5, 6), rule, seed=4)


class TokenPairs(nn.Module):
    """Pairs of tokens picked by a 2-d constant index (``x[:, pairs]``, a Gather whose indices are [2, 2], one
    token picked twice), a dense layer per picked token, then the head: the adjoint must reshape R from the
    indices' shape back to one axis of picks and sum the repeated token's two shares."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pairs", torch.tensor([[0, 3], [5, 3]]))
        self.mix, self.head = nn.Linear(5, 6), nn.Linear(24, 4)

    def forward(self, x):
        return self.head(torch.relu(self.mix(x[:, self.pairs])).flatten(1))


@pytest.mark.parametrize("rule", ["gradient", "epsilon"])
def test_gather_with_a_matrix_of_indices(tmp_path, rule):
    torch.manual_seed(0)
    exact = explain_one_gather(tmp_path, TokenPairs(), (3, 6, 5), rule, seed=5)
    if exact is not None:  # token 3 is picked twice; tokens 1, 2 and 4 never
        assert np.abs(exact[:, 3]).sum() > 0 and np.all(exact[:, [1, 2, 4]] == 0)


@pytest.mark.parametrize("flag, needle", [
    ("input=Nx3x8", "rank 4"),            # wrong rank
    ("input=Nx4x8x8", "axis 1"),          # a static dimension given otherwise
    ("pixels=Nx3x8x8", "no input 'pixels'"),
    ("input=Nx3x8x8.5", "NAME=DIMS"),
    ("Nx3x8x8", "NAME=DIMS"),
    ("input=Nx3x99999999999x99999999999", "past the 4 GiB"),  # a sample that cannot fit in memory
])
def test_bad_input_shape(exports, flag, needle):
    _, dynamic, _ = exports["flatten"]
    with pytest.raises(relgraph.RelgraphError, match=needle):
        relgraph.compile(dynamic, write=False, input_shapes=[flag])


def test_bad_input_shape_on_the_command_line(exports, tmp_path):
    _, dynamic, _ = exports["view"]
    code, _, err = run("compile", dynamic, "-o", tmp_path / "e.onnx", "--input-shape", "input=Nx4x8x8")
    assert_one_line_error(code, err, "--input-shape", "axis 1")
    assert not (tmp_path / "e.onnx").exists()


def test_slice_of_part_of_the_batch_refused_by_inspect_and_compile(tmp_path):
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[M, 3] logits) {
       st = Constant <value = int64[2] {1, 0}> ()
       en = Constant <value = int64[2] {2147483647, 2147483647}> ()
       ax = Constant <value = int64[2] {0, 1}> ()
       s = Slice (x, st, en, ax)
       logits = Gemm <transB = 1> (s, W, B)
    }
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "W"),
                                    numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "B")])
    onnx.save(model, str(tmp_path / "m.onnx"))
    for command in ("inspect", "compile"):
        code, out, err = run(command, tmp_path / "m.onnx")
        assert code == 2
        assert "Slice" in err and "part of the batch axis" in err, err


class EndPadded(nn.Module):
    """Zero padding at the end of H and W only (right 2, bottom 1), then a conv and a head: the Pad's adjoint
    must crop an axis padded at one end."""

    def __init__(self):
        super().__init__()
        self.pad, self.conv, self.head = nn.ZeroPad2d((0, 2, 0, 1)), nn.Conv2d(3, 4, 3), nn.Linear(4 * 7 * 8, 5)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.conv(self.pad(x))), 1))


def test_pad_at_one_end_of_an_axis(tmp_path):
    """Relevance through a Pad that pads only the end of H and W has the input's shape, and equals torch's
    gradient."""
    torch.manual_seed(0)
    model = EndPadded().eval()
    path = export(model, tmp_path / "padded.onnx", False)
    assert "Pad" in [n.op_type for n in onnx.load(path).graph.node]
    x = tm.random_input((3, 3, 8, 8), seed=5)
    out = explain(path, "gradient", x)
    exact = tm.reference_gradient(model, x, np.full(len(x), 2))
    assert out["relevance"].shape == x.shape
    assert np.all(tm.relative_error(out["relevance"], exact) < 1e-5)
