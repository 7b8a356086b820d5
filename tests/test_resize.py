"""Resize (with Upsample and the Resize of opset 10, which reach the rules as Resize) and Tile against
independent references.

- ``gradient`` equals float64 torch autograd on torch models whose export writes Resize (F.interpolate and
  nn.Upsample: nearest, bilinear with and without aligned corners, a size that is no multiple of the input,
  bicubic, linear on 1-d and trilinear on 3-d signals, a UNet-like net), in both torch export forms, and Tile
  (``x.repeat``);
- ε conserves: in bias-free nets, Σ R_input + bias relevance = the logit;
- LRP-ε at ε = 0.25 on the resize equals a float64 numpy re-derivation in dense form, whose resize matrix is
  built by torch's ``interpolate`` on the unit images (no separability assumed);
- spelling invariance (tests/test_spelling.py's check): nearest ×2 as Resize, as Upsample of opset 9, as
  Reshape → Expand → Reshape; linear ×2 as Resize (asymmetric), Upsample of opset 9 and Resize of opset 10;
  Tile as Concat of copies and as Reshape → Expand → Reshape;
- the triton lowering of a Resize model matches onnxruntime (Triton's interpreter without a GPU), and the
  torch op of Resize matches onnxruntime in every mode;
- what the rules cannot take is refused in one line.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

import relgraph
from relgraph.frontend import prepare
from relgraph.errors import RelgraphError

try:
    import torch_models as tm
    from test_cli import assert_one_line_error, run
    from test_spelling import assert_same_relevance, write_model
    from test_zennit import zennit_relevance
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm
    from tests.test_cli import assert_one_line_error, run
    from tests.test_spelling import assert_same_relevance, write_model
    from tests.test_zennit import zennit_relevance

CLASSES = 5


def explain(path, rule, x, target, **kw):
    result = relgraph.compile(str(path), rule=rule, write=False, **kw)
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {session.get_inputs()[0].name: x, "target": np.asarray(target, np.int64)}
    return dict(zip(names, session.run(None, feeds)))


# ------------------------------------------------------------------------------------------- torch models


class Upsampler(nn.Module):
    """conv → F.interpolate(**resize) → ReLU → conv → flatten → dense, on 1-d, 2-d or 3-d signals."""

    SHAPES = {1: (3, 6), 2: (3, 5, 4), 3: (2, 3, 4, 3)}

    def __init__(self, spatial: int = 2, bias: bool = True, **resize):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial]
        self.input_shape, self.resize = self.SHAPES[spatial], resize
        channels = self.input_shape[0]
        self.conv1, self.conv2 = conv(channels, 4, 3, padding=1, bias=bias), conv(4, 3, 3, padding=1, bias=bias)
        out = F.interpolate(torch.zeros(1, 1, *self.input_shape[1:]), **resize)
        self.fc = nn.Linear(3 * out.numel(), CLASSES, bias=bias)

    def forward(self, x):
        x = torch.relu(F.interpolate(self.conv1(x), **self.resize))
        return self.fc(torch.flatten(self.conv2(x), 1))


class TinyUNet(nn.Module):
    """conv → ReLU → max pool → conv → ReLU → nn.Upsample(×2, bilinear) → concatenated with the skip → conv →
    ReLU → dense."""

    input_shape = (3, 6, 6)

    def __init__(self, bias: bool = True, mode: str = "bilinear"):
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.inner = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.up = nn.Upsample(scale_factor=2, mode=mode)
        self.out = nn.Conv2d(8, 3, 3, padding=1, bias=bias)
        self.fc = nn.Linear(3 * 6 * 6, CLASSES, bias=bias)

    def forward(self, x):
        skip = torch.relu(self.down(x))
        inner = torch.relu(self.inner(F.max_pool2d(skip, 2)))
        x = torch.relu(self.out(torch.cat([skip, self.up(inner)], dim=1)))
        return self.fc(torch.flatten(x, 1))


class Repeater(nn.Module):
    """conv → x.repeat(1, 2, 1, 3) (Tile) → ReLU → conv → dense."""

    input_shape = (3, 4, 3)

    def __init__(self, bias: bool = True):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 2, 3, padding=1, bias=bias), nn.Conv2d(4, 3, 1, bias=bias)
        self.fc = nn.Linear(3 * 4 * 9, CLASSES, bias=bias)

    def forward(self, x):
        x = torch.relu(self.conv1(x).repeat(1, 2, 1, 3))
        return self.fc(torch.flatten(self.conv2(x), 1))


class Einsummer(nn.Module):
    """conv → ReLU → (a reshape) → torch.einsum(equation, x, W) with a weight W → dense."""

    input_shape = (3, 4, 6)

    def __init__(self, equation: str, weight: tuple, reshape: tuple | None = None, bias: bool = True):
        super().__init__()
        self.equation, self.reshape = equation, reshape
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.weight = nn.Parameter(torch.randn(*weight) / 2)
        with torch.no_grad():
            size = self.mixed(torch.zeros(1, *self.input_shape)).numel()
        self.fc = nn.Linear(size, CLASSES, bias=bias)

    def mixed(self, x):
        x = torch.relu(self.conv(x))
        x = x.reshape(x.shape[0], *self.reshape) if self.reshape else x
        return torch.einsum(self.equation, x, self.weight)

    def forward(self, x):
        return self.fc(torch.flatten(self.mixed(x), 1))


MODELS = {
    "nearest": lambda bias=True: Upsampler(bias=bias, scale_factor=2, mode="nearest"),
    "nearest-size": lambda bias=True: Upsampler(bias=bias, size=(7, 6), mode="nearest"),
    "bilinear": lambda bias=True: Upsampler(bias=bias, scale_factor=2, mode="bilinear", align_corners=False),
    "bilinear-corners-size": lambda bias=True: Upsampler(bias=bias, size=(7, 5), mode="bilinear",
                                                         align_corners=True),
    "bicubic": lambda bias=True: Upsampler(bias=bias, scale_factor=1.5, mode="bicubic", align_corners=False),
    "linear-1d": lambda bias=True: Upsampler(1, bias=bias, scale_factor=1.5, mode="linear"),
    "trilinear": lambda bias=True: Upsampler(3, bias=bias, scale_factor=(1, 2, 1.5), mode="trilinear"),
    "unet": lambda bias=True: TinyUNet(bias),
    "unet-nearest": lambda bias=True: TinyUNet(bias, mode="nearest"),
    "tile": lambda bias=True: Repeater(bias),
    # a 1×1 conv; per-head weights (a label in x, W and the output); two labels contracted, the output reordered;
    # labels of x summed away; an ellipsis; a label of W alone summed
    "einsum-pointwise": lambda bias=True: Einsummer("nchw,oc->nohw", (5, 4), bias=bias),
    "einsum-heads": lambda bias=True: Einsummer("bhdn,hde->bhne", (2, 2, 3), (2, 2, 24), bias=bias),
    "einsum-contract-two": lambda bias=True: Einsummer("nchw,cwo->noh", (4, 6, 3), bias=bias),
    "einsum-sum": lambda bias=True: Einsummer("nchw,co->no", (4, 7), bias=bias),
    "einsum-ellipsis": lambda bias=True: Einsummer("...c,co->...o", (6, 3), bias=bias),
    "einsum-weight-sum": lambda bias=True: Einsummer("nchw,wck->nh", (6, 4, 2), bias=bias),
}
DYNAMO = {"nearest", "bilinear-corners-size", "unet", "tile", "einsum-heads"}  # the dynamo export too (slower)
EXPORTED_OP = {"tile": "Tile", **{name: "Einsum" for name in MODELS if name.startswith("einsum")}}


def build(name: str, bias: bool = True, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return tm.randomize_biases(MODELS[name](bias), seed) if bias else MODELS[name](bias).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resize")
    cache = {}

    def get(name: str, dynamo: bool = False, bias: bool = True):
        key = name, dynamo, bias
        if key not in cache:
            model = build(name, bias).eval()
            path = tm.export(model, torch.zeros(1, *model.input_shape), folder / f"{name}-{dynamo}-{bias}.onnx",
                             dynamo)
            assert EXPORTED_OP.get(name, "Resize") in tm.op_types(path)
            cache[key] = model, path
        return cache[key]

    return get


@pytest.mark.parametrize("name,dynamo", [(n, False) for n in MODELS] + [(n, True) for n in sorted(DYNAMO)])
def test_gradient_equals_torch(exported, name, dynamo):
    model, path = exported(name, dynamo)
    x = tm.random_input((3, *model.input_shape), seed=5)
    target = np.array([0, 2, 4])
    out = explain(path, "gradient", x, target)
    np.testing.assert_allclose(out["logits"], tm.reference_logits(model, x), rtol=1e-5, atol=1e-5)
    error = tm.relative_error(out["relevance"], tm.reference_gradient(model, x, target))
    assert np.all(error < 1e-5), error


@pytest.mark.parametrize("name", ["bilinear", "bicubic", "bilinear-corners-size", "trilinear", "unet",
                                  "unet-nearest", "tile", "einsum-heads", "einsum-sum"])
def test_epsilon_conserves(exported, name):
    """No biases anywhere: what reaches the input is the logit, up to what the 1e-6 stabilizers absorb (an input
    scaled up makes the logits, which scale with it in a bias-free ReLU net, large against that)."""
    model, path = exported(name, bias=False)
    x = 20 * tm.random_input((4, *model.input_shape), seed=6)
    out = explain(path, "epsilon", x, [-1] * 4)
    logit = out["logits"].max(1)
    total = out["relevance"].reshape(len(x), -1).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(out["bias_relevance"], 0, atol=1e-6)
    np.testing.assert_allclose(total, logit, rtol=1e-3)


LOW, HIGH = -2.5, 2.5


@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_nearest_unet_equals_zennit(exported, rule):
    """zennit passes the gradient through nn.Upsample (a module without a rule), which for nearest upsampling is
    every rule's result (a structural copy); the conv after it reads a concatenation of ReLU outputs, one of
    them upsampled, which relgraph proves ≥ 0 (z⁺ as one ε step with W⁺)."""
    model, path = exported("unet-nearest")
    shape = (4, *model.input_shape)
    x = tm.random_input(shape, seed=8, low=LOW, high=HIGH)
    target = np.array([4, 3, 2, 1])
    box = dict(low=torch.full(shape, LOW, dtype=torch.float64), high=torch.full(shape, HIGH, dtype=torch.float64))
    composite = EpsilonPlusFlat() if rule == "epsilon-plus-flat" else EpsilonGammaBox(**box)
    out = explain(path, rule, x, target, bounds=(LOW, HIGH))
    logit = out["logits"][np.arange(len(x)), target].reshape(-1, 1, 1, 1)
    error = tm.relative_error(out["relevance"] / logit, zennit_relevance(model, composite, x, target))
    assert np.all(error < 1e-4), error
    if rule == "epsilon-plus-flat":  # no x⁻ = min(x, 0) term: the upsampled ReLU output is proven ≥ 0
        proto = relgraph.compile(str(path), rule=rule, write=False).proto
        assert "Min" not in {n.op_type for n in proto.graph.node}


# ------------------------------------------------------------------------------------------- dense reference

DENSE_HEAD = """
<ir_version: 10, opset_import: ["" : 18]>
net (float[N, 2, {dims}] x) => (float[N, 5] logits) {{
{body}
   f = Flatten (r)
   logits = Gemm <transB = 1> (f, W, B)
}}
"""

# ONNX Resize → the torch interpolate that computes the same map
DENSE_CASES = {
    "linear-half-pixel": ((4, 3), 'sc = Constant <value = float[4] {1.0, 1.0, 2.0, 2.0}> ()\n'
                                  '   r = Resize <mode = "linear"> (x, , sc)',
                          dict(scale_factor=2, mode="bilinear", align_corners=False)),
    "linear-corners-axes": ((4, 3), 'sz = Constant <value = int64[2] {7, 5}> ()\n'
                                    '   r = Resize <mode = "linear", coordinate_transformation_mode = "align_corners",'
                                    ' axes = [2, 3]> (x, , , sz)',
                            dict(size=(7, 5), mode="bilinear", align_corners=True)),
    "cubic": ((4, 4), 'sc = Constant <value = float[4] {1.0, 1.0, 1.5, 2.0}> ()\n'
                      '   r = Resize <mode = "cubic", cubic_coeff_a = -0.75> (x, , sc)',
              dict(scale_factor=(1.5, 2.0), mode="bicubic", align_corners=False)),
    "linear-downsample": ((6, 5), 'sc = Constant <value = float[4] {1.0, 1.0, 0.5, 0.6}> ()\n'
                                  '   r = Resize <mode = "linear", coordinate_transformation_mode = '
                                  '"pytorch_half_pixel"> (x, , sc)',
                          dict(scale_factor=(0.5, 0.6), mode="bilinear", align_corners=False)),
    "linear-1d": ((5,), 'sc = Constant <value = float[3] {1.0, 1.0, 1.6}> ()\n'
                        '   r = Resize <mode = "linear"> (x, , sc)',
                  dict(scale_factor=1.6, mode="linear", align_corners=False)),
}
EPSILON = 0.25


def dense_resize(spatial: tuple, resize: dict) -> np.ndarray:
    """The resize of one channel as a dense [out, in] matrix: torch's interpolate on every unit image."""
    n = int(np.prod(spatial))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *spatial)
    return F.interpolate(basis, **resize).reshape(n, -1).numpy().T


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def dense_epsilon(x, A, W, B, target):
    """LRP-ε in float64, dense: z = A·x per channel, logits = W·z + B; R_z = z ⊙ Wᵀ(R ⊘ stab(logits)),
    R_x = x ⊙ Aᵀ(R_z ⊘ stab(z)), both at ε = 0.25."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1).astype(np.float64)
    z = flat @ A.T                                             # [N, C, out]
    logits = z.reshape(n, -1) @ W.T + B
    R = np.zeros_like(logits)
    R[np.arange(n), target] = logits[np.arange(n), target]
    Rz = z.reshape(n, -1) * ((R / stab(logits, EPSILON)) @ W)
    Rx = flat * ((Rz.reshape(z.shape) / stab(z, EPSILON)) @ A)
    return Rx.reshape(x.shape)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", sorted(DENSE_CASES))
def test_epsilon_equals_dense_float64(tmp_path, case, seed):
    spatial, body, resize = DENSE_CASES[case]
    A = dense_resize(spatial, resize)
    rng = np.random.default_rng(seed)
    W, B = rng.normal(0, 0.5, (CLASSES, 2 * A.shape[0])), rng.normal(0, 0.1, CLASSES)
    model = onnx.parser.parse_model(DENSE_HEAD.format(dims=", ".join(map(str, spatial)), body="   " + body))
    model.graph.initializer.extend([numpy_helper.from_array(W.astype(np.float32), "W"),
                                    numpy_helper.from_array(B.astype(np.float32), "B")])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{case}.onnx"
    onnx.save(model, str(path))
    rule_map = tmp_path / "resize.toml"
    rule_map.write_text('base = "epsilon"\n[op_types]\nResize = "epsilon"\n')
    x = rng.uniform(-1, 1, (3, 2, *spatial)).astype(np.float32)
    target = np.array([1, 3, 4])
    result = relgraph.compile(str(path), rule_map=str(rule_map), epsilon=EPSILON, write=False)
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x, "target": target})))
    expected = dense_epsilon(x, A, W.astype(np.float32).astype(np.float64), B.astype(np.float32), target)
    error = tm.relative_error(out["relevance"], expected)
    assert np.all(error <= 1e-5), error


# ------------------------------------------------------------------------------------------- spellings

SCALES = '   sc = Constant <value = float[4] {1.0, 1.0, 2.0, 2.0}> ()\n'
SPELLINGS = {
    "nearest-x2": [
        (13, SCALES + '   a = Resize <mode = "nearest"> (h, , sc)'),
        (9, SCALES + '   a = Upsample <mode = "nearest"> (h, sc)'),
        (18, '   sz = Constant <value = int64[2] {12, 12}> ()\n'
             '   a = Resize <mode = "nearest", axes = [2, 3]> (h, , , sz)'),
        (17, '   s1 = Constant <value = int64[6] {0, 4, 6, 1, 6, 1}> ()\n   r1 = Reshape (h, s1)\n'
             '   s2 = Constant <value = int64[6] {1, 4, 6, 2, 6, 2}> ()\n   e = Expand (r1, s2)\n'
             '   s3 = Constant <value = int64[4] {0, 4, 12, 12}> ()\n   a = Reshape (e, s3)'),
    ],
    # Upsample and Resize-10 map coordinates as Resize's asymmetric mode: onnx's version converter must not
    # leave them at half_pixel
    "linear-x2": [
        (13, SCALES + '   a = Resize <mode = "linear", coordinate_transformation_mode = "asymmetric"> (h, , sc)'),
        (9, SCALES + '   a = Upsample <mode = "linear"> (h, sc)'),
        (10, SCALES + '   a = Resize <mode = "linear"> (h, sc)'),
    ],
    "tile": [
        (17, '   rp = Constant <value = int64[4] {1, 1, 2, 1}> ()\n   a = Tile (h, rp)'),
        (17, '   a = Concat <axis = 2> (h, h)'),
        (17, '   s1 = Constant <value = int64[5] {0, 4, 1, 6, 6}> ()\n   r1 = Reshape (h, s1)\n'
             '   s2 = Constant <value = int64[5] {1, 4, 2, 6, 6}> ()\n   e = Expand (r1, s2)\n'
             '   s3 = Constant <value = int64[4] {0, 4, 12, 6}> ()\n   a = Reshape (e, s3)'),
    ],
}




def constant(name: str, shape: tuple, seed: int) -> str:
    values = np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)
    return (f"   {name} = Constant <value = float[{', '.join(map(str, shape))}] "
            f"{{{', '.join(repr(float(v)) for v in values.reshape(-1))}}}> ()\n")


# an Einsum with a constant against the Transpose / MatMul it stands for (EinsumAsMatMulPass)
SPELLINGS["einsum-pointwise"] = [
    (17, constant("wc", (4, 4), 9) + '   a = Einsum <equation = "nchw,co->nohw"> (h, wc)'),
    (17, constant("wc", (4, 4), 9) + '   a = Einsum <equation = "co , nchw -> nohw"> (wc, h)'),  # weight first
    (17, constant("wc", (4, 4), 9) + '   t = Transpose <perm = [0, 2, 3, 1]> (h)\n   m = MatMul (t, wc)\n'
                                     '   a = Transpose <perm = [0, 3, 1, 2]> (m)'),
]
SPELLINGS["einsum-heads"] = [
    (17, constant("wk", (4, 6, 6), 8) + '   a = Einsum <equation = "nchw,cwo->ncho"> (h, wk)'),
    (17, constant("wk", (4, 6, 6), 8) + '   a = MatMul (h, wk)'),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", sorted(SPELLINGS))
def test_spellings_give_equal_relevance(tmp_path, case, seed):
    paths = [write_model(tmp_path / f"{case}{i}.onnx", body, seed, opset=opset)
             for i, (opset, body) in enumerate(SPELLINGS[case])]
    assert_same_relevance(paths, seed)


@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("einsum")])
def test_einsum_with_a_weight_becomes_a_matmul(exported, name):
    model, path = exported(name)
    ops = [n.op_type for n in prepare(str(path))[0].graph]
    assert "Einsum" not in ops and {"MatMul", "Gemm"} & set(ops), ops


# ------------------------------------------------------------------------------------------- lowering


@pytest.mark.parametrize("name", ["bilinear", "unet-nearest", "tile", "trilinear", "einsum-heads"])
def test_triton_lowering_matches_onnxruntime(exported, tmp_path, name):
    from relgraph.lowering import compile_triton
    from relgraph.lowering.explainer import TritonExplainer

    model, path = exported(name)
    folder = compile_triton(path, tmp_path / f"{name}.triton", rule="epsilon").path
    reference, lowered = relgraph.Explainer(folder), relgraph.open_explainer(folder)
    assert isinstance(lowered, TritonExplainer)
    x = tm.random_input((2, *model.input_shape), seed=7)
    want, got = reference.explain(x, 1), lowered.explain(x, 1)
    for key, value in want["outputs"].items():
        assert tm.relative_error(got["outputs"][key], value).max() < 1e-4, key
    assert np.abs(got["relevance"]).sum() > 0


X = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
F32, I64 = np.float32, np.int64
RESIZE_OPS = {  # roi, scales, sizes (None: absent) and the attributes, in opset 18's Resize
    "cubic, exclude_outside, A = -0.5": ((None, np.array([1, 1, 1.7, 0.6], F32), None),
                                         dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)),
    "linear, align_corners, sizes": ((None, None, np.array([2, 3, 9, 4], I64)),
                                     dict(mode="linear", coordinate_transformation_mode="align_corners")),
    "nearest round_prefer_ceil": ((None, np.array([1, 1, 1.5, 2.5], F32), None),
                                  dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                       nearest_mode="round_prefer_ceil")),
    "linear tf_crop_and_resize": ((np.array([0, 0, 0.1, 0.2, 1, 1, 0.9, 0.7], F32), None,
                                   np.array([2, 3, 5, 8], I64)),
                                  dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize")),
    "linear antialias": ((None, np.array([1, 1, 0.5, 0.6], F32), None), dict(mode="linear", antialias=1)),
    "axes": ((None, None, np.array([9], I64)), dict(mode="linear", axes=[3])),
}


@pytest.mark.parametrize("case", sorted(RESIZE_OPS))
def test_resize_torch_op_matches_onnxruntime(case):
    from relgraph.lowering.torch_ops import TORCH_OPS

    arguments, attrs = RESIZE_OPS[case]
    names = [n if v is not None else "" for n, v in zip(("roi", "scales", "sizes"), arguments)]
    node = helper.make_node("Resize", ["x", *names], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, X.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, n) for n, v in zip(names, arguments) if v is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    got = TORCH_OPS["Resize"]([torch.from_numpy(X)] + [None if v is None else torch.from_numpy(v) for v in arguments],
                              attrs).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- refusals

REFUSALS = {
    "scales computed at run time": (
        "float[4] sc", '   a = Resize <mode = "linear"> (h, , sc)', "scales are computed at run time"),
    "the batch axis": (
        "", '   sc = Constant <value = float[4] {2.0, 1.0, 1.0, 1.0}> ()\n   a = Resize <mode = "linear"> (h, , sc)',
        "axis 0"),
    "aspect ratio": (
        "", '   sz = Constant <value = int64[2] {12, 10}> ()\n'
            '   a = Resize <mode = "linear", axes = [2, 3], keep_aspect_ratio_policy = "not_larger"> (h, , , sz)',
        "keep_aspect_ratio_policy"),
    "extrapolated crop": (
        "", '   roi = Constant <value = float[8] {0.0, 0.0, -0.2, 0.0, 1.0, 1.0, 1.2, 1.0}> ()\n'
            '   sz = Constant <value = int64[2] {8, 6}> ()\n'
            '   a = Resize <mode = "linear", coordinate_transformation_mode = "tf_crop_and_resize", '
            'extrapolation_value = 1.0, axes = [2, 3]> (h, roi, , sz)', "extrapolates"),
    "einsum of two activations": ("", '   a = Einsum <equation = "nchw,nchw->nchw"> (h, h)', "Einsum"),
    "tile of the batch": (
        "", '   rp = Constant <value = int64[4] {2, 1, 1, 1}> ()\n   a = Tile (h, rp)', "batch"),
}

REFUSAL_MODEL = """
<ir_version: 10, opset_import: ["" : 18]>
net (float[N, 3, 6, 6] x{extra}) => (float[N, 5] logits) {{
   h = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
{body}
   p = GlobalAveragePool (a)
   f = Flatten (p)
   logits = Gemm <transB = 1> (f, W3, B3)
}}
"""


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line(tmp_path, case):
    extra, body, needle = REFUSALS[case]
    model = onnx.parser.parse_model(REFUSAL_MODEL.format(extra=f", {extra}" if extra else "", body=body))
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in {
        "W1": rng.normal(size=(4, 3, 3, 3)), "B1": np.zeros(4), "W3": rng.normal(size=(5, 4)),
        "B3": np.zeros(5)}.items())
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RelgraphError, match=needle):
        relgraph.compile(str(path), rule="epsilon", write=False)
    if case == "the batch axis":  # and through the command line: one line, exit status 2
        assert_one_line_error(*run("compile", path, "--rule", "gradient", "-o", tmp_path / "e.onnx")[::2], needle)
