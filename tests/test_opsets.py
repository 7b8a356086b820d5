"""Opsets 7 to 24 in: one small CNN at every opset gives one explanation.

The CNN is written once, at opset 7, inline in ONNX text, with the ops whose spelling changed across opsets:
Conv, BatchNormalization, Relu, Pad (pads an attribute before 11, an input after), MaxPool, Upsample (an
attribute ``scales`` at 7–8, an input at 9, Resize from 10 on), AveragePool, Dropout (a ``ratio`` attribute
before 12, an input after), Clip (bounds attributes before 11, inputs after), Concat, Mul by a constant,
ReduceMean (axes an attribute before 18), Squeeze and Unsqueeze (axes an attribute before 13), Flatten,
Reshape, Gemm, Add, and a Softmax over [N, classes, 1, 1] at the output, then flattened: before opset 13 a
Softmax flattens its input from ``axis`` on, so this one runs over the classes; onnx's version converter
writes it from 13 on as Flatten → Softmax → Reshape back (a SqueezeNet-style head).

onnx's version converter writes the model at every opset from 8 to 24. Where it changes what the model
computes, the test writes that part by hand: its Upsample/Resize adapter to opset 11 leaves Resize-11's
default half_pixel coordinates, which moves every bilinear sample; an Upsample maps them as x = y / scale
(asymmetric), so the Resize of opsets 11–24 gets ``coordinate_transformation_mode = "asymmetric"``.
relgraph upgrades models below its ``MIN_OPSET`` itself (:func:`relgraph.frontend.prepare`).

Every model file is first checked to compute the same function (onnxruntime against a float64 torch
re-implementation). Then, per opset, the explainers of ``gradient``, ``epsilon``, ``epsilon-plus-flat`` and
``epsilon-gamma-box`` must give the logits and the relevance of the opset-17 model (which relgraph neither
upgrades nor needs a newer op for) to a relative L2 of 1e-6 per sample, the gradient must be torch autograd's
in float64 at every opset, and the explainer's default-domain opset must be at least the model's. A model of
an opset newer than onnx knows is refused by ``relgraph compile`` in one line.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper, version_converter

import relgraph
from relgraph.frontend import prepare
from relgraph.graph import MIN_OPSET

try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

OPSETS = range(7, 25)
REFERENCE_OPSET = MIN_OPSET
RULES = {"gradient": {}, "epsilon": {}, "epsilon-plus-flat": {}, "epsilon-gamma-box": {"bounds": (-1.0, 1.0)}}
TOLERANCE = 1e-6           # relative L2 per sample, between opsets (float32 against float32)
REFERENCE_TOLERANCE = 1e-6  # relative L2 per sample, float32 against float64 torch (measured: 8e-8)
CLASSES = 5

CNN = """
<ir_version: 10, opset_import: ["" : 7]>
cnn (float[N, 3, 8, 8] x) => (float[N, 5] prob) {
   c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
   bn = BatchNormalization <epsilon = 0.001> (c1, G, BE, MU, VAR)
   r1 = Relu (bn)
   p = Pad <pads = [0, 0, 1, 1, 0, 0, 1, 1]> (r1)
   mp = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (p)
   up = Upsample <mode = "linear", scales = [1.0, 1.0, 2.0, 2.0]> (mp)
   ap = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], count_include_pad = 1> (up)
   d = Dropout <ratio = 0.3> (ap)
   c2 = Conv (d, W2, B2)
   cl = Clip <min = -0.5, max = 0.5> (c2)
   cat = Concat <axis = 1> (cl, mp)
   m = Mul (cat, K)
   rm = ReduceMean <axes = [2, 3], keepdims = 1> (m)
   sq = Squeeze <axes = [2, 3]> (rm)
   us = Unsqueeze <axes = [1]> (sq)
   fl = Flatten <axis = 1> (us)
   g2 = Gemm <transB = 1> (fl, W4, B4)
   rs = Reshape (cat, S)
   g1 = Gemm <transB = 1> (rs, W3, B3)
   l = Add (g1, g2)
   u4 = Unsqueeze <axes = [2, 3]> (l)
   sm = Softmax (u4)
   prob = Flatten (sm)
}
"""


def weights(seed: int = 0) -> dict:
    """Random parameters; the Clip bounds (±0.5) cut a good share of the second conv's outputs on both sides."""
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(0, 0.5, (4, 3, 3, 3)), "B1": rng.normal(0, 0.1, 4),
            "G": rng.uniform(0.5, 1.5, 4) * np.array([1, -1, 1, 1]), "BE": rng.normal(0, 0.1, 4),
            "MU": rng.normal(0, 0.1, 4), "VAR": rng.uniform(0.5, 2.0, 4),
            "W2": rng.normal(0, 0.5, (4, 4, 1, 1)), "B2": rng.normal(0, 0.1, 4),
            "K": rng.uniform(0.5, 1.5, (8, 1, 1)),
            "W3": rng.normal(0, 0.2, (CLASSES, 8 * 5 * 5)), "B3": rng.normal(0, 0.1, CLASSES),
            "W4": rng.normal(0, 0.5, (CLASSES, 8)), "B4": rng.normal(0, 0.1, CLASSES)}


def cnn() -> onnx.ModelProto:
    model = onnx.parser.parse_model(CNN)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights().items())
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), "S"))
    return model


def at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` (opset 7) at ``opset``, by onnx's version converter, with its Resize coordinates kept."""
    if opset == 7:
        return model
    out = version_converter.convert_version(model, opset)
    out.ir_version = 10
    for node in out.graph.node:
        if node.op_type == "Resize" and opset >= 11:  # the converter's default half_pixel is another function
            node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
    return out


def upsample_matrix(n: int) -> np.ndarray:
    """The [2n, n] map of a linear Upsample by 2 along one axis: output y samples the input at y / 2, between
    its two neighbours, the last clamped to the edge."""
    a = np.zeros((2 * n, n))
    for y in range(2 * n):
        source = y / 2
        low = int(np.floor(source))
        high, frac = min(low + 1, n - 1), source - low
        a[y, low] += 1 - frac
        a[y, high] += frac
    return a


def torch_logits(x: torch.Tensor) -> torch.Tensor:
    """The CNN's logits in float64 torch, written from the ONNX operators' definitions."""
    w = {k: torch.tensor(np.asarray(v, np.float32), dtype=torch.float64) for k, v in weights().items()}
    h = F.conv2d(x, w["W1"], w["B1"], padding=1)
    h = F.batch_norm(h, w["MU"], w["VAR"], w["G"], w["BE"], training=False, eps=1e-3)
    h = F.pad(F.relu(h), (1, 1, 1, 1))
    mp = F.max_pool2d(h, 2, 2)
    a = torch.tensor(upsample_matrix(mp.shape[-1]))
    up = torch.einsum("ij,ncjk,lk->ncil", a, mp, a)
    h = F.avg_pool2d(up, 3, 2, padding=1, count_include_pad=True)
    cl = torch.clamp(F.conv2d(h, w["W2"], w["B2"]), -0.5, 0.5)
    cat = torch.cat([cl, mp], 1)
    pooled = (cat * w["K"]).mean((2, 3))
    return F.linear(cat.reshape(len(x), -1), w["W3"], w["B3"]) + F.linear(pooled, w["W4"], w["B4"])


def reference_gradient(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """∂ logit_target / ∂x per sample, torch autograd in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch_logits(xt).gather(1, torch.tensor(target).view(-1, 1)).sum().backward()
    return xt.grad.numpy()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("opsets")
    base, paths = cnn(), {}
    for opset in OPSETS:
        model = at_opset(base, opset)
        assert next(o.version for o in model.opset_import if o.domain == "") == opset
        onnx.checker.check_model(model, full_check=True)
        paths[opset] = folder / f"cnn{opset}.onnx"
        onnx.save(model, str(paths[opset]))
    return paths


class Explained:
    """Explainers per (opset, rule), compiled once and run on the shared input."""

    def __init__(self, models, x):
        self.models, self.x, self.results = models, x, {}

    def __call__(self, opset: int, rule: str) -> tuple[dict, int]:
        """(what ``relgraph.Explainer.explain`` returns, the explainer's default-domain opset)."""
        if (opset, rule) not in self.results:
            path = self.models[opset]
            result = relgraph.compile(path, rule=rule, output=str(path.with_suffix(f".{rule}.onnx")),
                                      overwrite=True, **RULES[rule])
            explained = relgraph.Explainer(result.path).explain(self.x)
            version = next(o.version for o in result.proto.opset_import if o.domain in ("", "ai.onnx"))
            self.results[opset, rule] = explained, version
        return self.results[opset, rule]


@pytest.fixture(scope="module")
def explained(models, x) -> Explained:
    return Explained(models, x)


@pytest.mark.parametrize("opset", OPSETS)
def test_every_model_file_computes_the_same_function(models, x, opset):
    """The test's own models: each file, as onnxruntime runs it, is the float64 re-implementation."""
    session = ort.InferenceSession(str(models[opset]), providers=["CPUExecutionProvider"])
    prob = session.run(None, {"x": x})[0]
    expected = torch.softmax(torch_logits(torch.tensor(x, dtype=torch.float64)), 1).numpy()
    assert np.all(tm.relative_error(prob, expected) <= REFERENCE_TOLERANCE)


@pytest.mark.parametrize("opset", OPSETS)
def test_every_opset_gives_the_reference_relevance(explained, opset):
    for rule in RULES:
        reference, _ = explained(REFERENCE_OPSET, rule)
        out, version = explained(opset, rule)
        assert version >= max(opset, MIN_OPSET), f"explainer of opset {version} for a model of opset {opset}"
        assert np.abs(reference["relevance"]).sum() > 0
        for name in ("logits", "relevance"):
            error = tm.relative_error(out[name], reference[name])
            assert np.all(error <= TOLERANCE), f"opset {opset}, {rule}: {name} off by {error}"
        np.testing.assert_array_equal(out["target"], reference["target"])
        np.testing.assert_allclose(out["outputs"]["prob"], reference["outputs"]["prob"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("opset", OPSETS)
def test_gradient_is_torch_autograd_at_every_opset(explained, x, opset):
    """The softmax is recognised at the output through the converter's reshapes: the logits before it are
    explained and returned, and ``gradient`` is ∂ logit_c / ∂x (R_out = 1), torch's in float64."""
    out, _ = explained(opset, "gradient")
    expected = torch_logits(torch.tensor(x, dtype=torch.float64)).detach().numpy()
    assert "logits" in out["outputs"] and out["logits"].shape == (len(x), CLASSES)
    assert np.all(tm.relative_error(out["logits"], expected) <= REFERENCE_TOLERANCE)
    np.testing.assert_array_equal(out["target"], expected.argmax(1))
    error = tm.relative_error(out["relevance"], reference_gradient(x, out["target"]))
    assert np.all(error <= REFERENCE_TOLERANCE), f"opset {opset}: gradient off by {error}"


@pytest.mark.parametrize("opset", [7, 12, 13, 24])
def test_the_head_canonicalizes_to_a_softmax_of_the_logits(models, opset):
    """Unsqueeze → Softmax over axis 1 → Flatten (opsets 7–12), and the converter's Unsqueeze → Flatten →
    Softmax → Reshape → Flatten (13 on), both end as Softmax(logits) at the output."""
    graph = prepare(models[opset])[0].graph
    softmax = graph.outputs[0].producer()
    assert softmax.op_type == "Softmax" and softmax.inputs[0].producer().op_type == "Add"
    assert [n.op_type for n in graph].count("Flatten") == 0


def test_an_opset_newer_than_onnx_knows_is_refused_in_one_line(tmp_path):
    newest = onnx.defs.onnx_opset_version()
    model = cnn()
    model.opset_import[0].version = newest + 1
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "compile", str(path), "--rule", "epsilon",
                           "-o", str(tmp_path / "out.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"opset {newest + 1}" in lines[0] and str(newest) in lines[0]
    assert not (tmp_path / "out.onnx").exists()
