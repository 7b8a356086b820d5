"""Portability: a default explainer is standard ONNX and gives the same numbers on every runtime.

References: onnxruntime (the runtime every other test checks against torch, zennit and captum), OpenVINO's
CPU plugin, and ``onnx.reference.ReferenceEvaluator`` (the ONNX specification's own numpy runtime).

Tolerance. Every output must agree to 1e-5 relative L2, except where float32 itself cannot fix the answer
that tightly. Stabilizers of 1e-6 divide by values near zero: on the digits model under z^B, s = R ⊘ stab(z)
reaches 2·10⁴ at one position, and the first layer's bias relevance, a sum of such terms, cancels to 10⁻⁴,
so summation order alone moves it by 10⁻³ of its value. That conditioning is measured, not assumed: two
other float32 evaluations of the same graph, onnxruntime with every graph optimization off (no fusions,
no layout changes) and, on the small models, onnx's reference evaluator (numpy's summation order), give the
float32 spread of this explainer on this input. A second runtime passes when it lies within
max(1e-5, 10 × that spread) of onnxruntime.

The bias relevance is the one output where these orders do not span the spread: OpenVINO sums the digits
model's z^B first layer otherwise than both and lands 5·10⁻⁴ away, on a value of 7·10⁻⁴ that results from
terms of ±2·10⁴ · |b|. Its error is absolute, u · Σ|terms|, not relative to the small result, so it is
bounded per sample against the relevance it is part of: |Δ bias relevance| ≤ 10⁻⁴ · |R_out|, R_out the
explained logit, or 1 for the gradient family (Σ relevance + Σ bias relevance + leak = R_out).

Not run: the pattern rules on MobileNetV2 (patterns are not fitted for grouped, depthwise, convolutions, so
relgraph refuses to compile them there), and PatternNet on the random-weight ResNet-18, whose signal grows
by the patterns' scale at each of 20 layers and reaches float32's limit (relevance ~10³⁷ and inf) on every
runtime; PatternAttribution runs there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

import relgraph
from relgraph.explainer import Explainer
from relgraph.export import untyped_values
from relgraph.patterns import fit_patterns
from relgraph.rules import RULE_NAMES
from relgraph.runtimes import installed_runtimes

import torch_models as tm

openvino = pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("digits", "shapes", "resnet18", "mobilenet_v2")
SMALL = ("digits", "shapes")  # the reference evaluator takes 20 s for one ResNet-18 batch
PATTERN_RULES = ("patternnet", "patternattribution")
NOT_RUN = {("mobilenet_v2", "patternnet"), ("mobilenet_v2", "patternattribution"), ("resnet18", "patternnet")}
CASES = [(name, rule) for name in MODELS for rule in RULE_NAMES if (name, rule) not in NOT_RUN]


def _torchvision(name: str, path) -> str:
    torch.manual_seed(0)
    model = tm.randomize_batchnorm(getattr(torchvision.models, name)(weights=None), 0)
    return str(tm.export(model, torch.zeros(1, 3, 32, 32), path, dynamo=False))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name → (model path, input batch, pattern training data), built once."""
    folder = tmp_path_factory.mktemp("runtimes")
    rng = np.random.default_rng(0)
    shapes_train = np.load("models/shapes/train.npz")["x"][:256]
    cases = {
        "digits": ("models/digits/digits_cnn.onnx", np.load("models/digits/samples.npy")[:4],
                   np.load("models/digits/train_x.npy")[:256]),
        "shapes": ("models/shapes/shapes_cnn.onnx", np.load("models/shapes/heldout.npz")["x"][:4].astype(np.float32),
                   shapes_train.astype(np.float32)),
    }
    for name in ("resnet18", "mobilenet_v2"):
        cases[name] = (_torchvision(name, folder / f"{name}.onnx"),
                       rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
                       rng.standard_normal((48, 3, 32, 32)).astype(np.float32))
    return cases


@pytest.fixture(scope="module")
def patterns(models):
    cache = {}

    def get(name):
        if name not in cache:
            path, _, train = models[name]
            cache[name] = fit_patterns(path, train, estimator="two-component", progress=False)
        return cache[name]

    return get


def _compile(models, patterns, name, rule, tmp_path, **options):
    path, x, _ = models[name]
    if rule in ("zbox", "epsilon-gamma-box"):
        options["bounds"] = (float(x.min()), float(x.max()))
    if rule in PATTERN_RULES:
        options["patterns"] = patterns(name)
    return relgraph.compile(path, rule, output=str(tmp_path / f"{name}.{rule}.onnx"), **options).path, x


def _float32_spread(path, x, expected, names, runtimes=()) -> dict:
    """The largest distance from onnxruntime's result to another float32 evaluation of the same explainer:
    onnxruntime unoptimized, and each of ``runtimes``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {plain.get_inputs()[0].name: x, "target": expected["target"]}
    others = [dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feed)))]
    others += [Explainer(path, runtime=runtime).run(feed) for runtime in runtimes]
    return {k: max(_relative(o[v], expected[k]) for o in others) for k, v in names.items()}


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_openvino_is_installed_for_the_suite():
    assert "openvino" in installed_runtimes()


@pytest.mark.parametrize(("name", "rule"), CASES)
def test_default_explainer_runs_on_openvino(models, patterns, name, rule, tmp_path):
    path, x = _compile(models, patterns, name, rule, tmp_path)
    reference = _explain(path, x)
    assert np.abs(reference["relevance"]).sum() > 0
    got = Explainer(path, runtime="openvino").explain(x)
    assert set(got) == set(reference) - {"init", "logits_name"}
    np.testing.assert_array_equal(got["target"], reference["target"])
    names = {"relevance": "relevance", "bias_relevance": "bias_relevance", "logits": reference["logits_name"]}
    spread = _float32_spread(path, x, reference, names, ("reference",) if name in SMALL else ())
    _assert_close(got, reference, spread)


def _assert_close(got, reference, spread):
    for key in ("relevance", "logits"):
        bound = max(1e-5, 10 * spread[key])
        assert _relative(got[key], reference[key]) <= bound, (key, _relative(got[key], reference[key]), spread)
    if _relative(got["bias_relevance"], reference["bias_relevance"]) > max(1e-5, 10 * spread["bias_relevance"]):
        n = np.arange(len(reference["target"]))
        r_out = np.abs(reference["logits"][n, reference["target"]]) if reference["init"] == "logit" else 1.0
        np.testing.assert_array_less(np.abs(got["bias_relevance"] - reference["bias_relevance"]), 1e-4 * r_out)


def _explain(path, x) -> dict:
    """onnxruntime's result, with how the output relevance starts (``init``: logit or one) and the name of
    the logits output."""
    explainer = Explainer(path)
    return {**explainer.explain(x), "init": explainer.metadata["relgraph.output_init"],
            "logits_name": explainer.logits_name}


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_digits_explainer_runs_on_the_reference_evaluator(models, patterns, rule, tmp_path):
    path, x = _compile(models, patterns, "digits", rule, tmp_path)
    reference = _explain(path, x)
    got = Explainer(path, runtime="reference").explain(x)
    names = {"relevance": "relevance", "bias_relevance": "bias_relevance", "logits": reference["logits_name"]}
    _assert_close(got, reference, _float32_spread(path, x, reference, names, ("openvino",)))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_default_explainer_is_standard_onnx(models, patterns, rule, tmp_path):
    """No custom domain, no local function, every value typed: what a runtime without onnxruntime's
    conveniences needs."""
    path, _ = _compile(models, patterns, "resnet18", rule, tmp_path)
    proto = onnx.load(path)
    assert not proto.functions
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert untyped_values(proto) == []
    assert dict((p.key, p.value) for p in proto.metadata_props)["relgraph.form"] == "portable"
    onnx.checker.check_model(proto, full_check=True)


def test_keep_functions_gives_the_same_numbers(models, patterns, tmp_path):
    portable, x = _compile(models, patterns, "resnet18", "epsilon-plus-flat", tmp_path)
    compact, _ = _compile(models, patterns, "resnet18", "epsilon-plus-flat", tmp_path / "f", keep_functions=True)
    proto = onnx.load(compact)
    assert {f.domain for f in proto.functions} == {"relgraph"}
    assert dict((p.key, p.value) for p in proto.metadata_props)["relgraph.form"] == "functions"
    a, b = Explainer(portable).explain(x), Explainer(compact).explain(x)
    for key in ("relevance", "logits", "bias_relevance"):
        assert _relative(a[key], b[key]) <= 1e-6, key


def test_functions_form_is_refused_by_other_runtimes_in_one_line(models, patterns, tmp_path):
    compact, _ = _compile(models, patterns, "digits", "epsilon", tmp_path, keep_functions=True)
    with pytest.raises(relgraph.RelgraphError, match="without --keep-functions"):
        Explainer(compact, runtime="openvino")


def test_unknown_runtime_is_one_line(models, patterns, tmp_path):
    path, _ = _compile(models, patterns, "digits", "epsilon", tmp_path)
    with pytest.raises(relgraph.RelgraphError, match="unknown runtime 'tvm'"):
        Explainer(path, runtime="tvm")


def test_check_runtimes_reports_every_installed_runtime(models, patterns, tmp_path):
    """`relgraph check E X --runtimes`: one row per runtime, its distance to onnxruntime, the largest one."""
    path, x = _compile(models, patterns, "digits", "epsilon-plus-flat", tmp_path)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "check", path, str(tmp_path / "x.npy"), "--runtimes"],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()}
    assert {"onnxruntime", "openvino", "reference"} <= set(rows)
    reference = _explain(path, x)
    for runtime in ("openvino", "reference"):
        printed = float(re.search(r"relevance (\S+) \(", rows[runtime]).group(1))
        got = Explainer(path, runtime=runtime).explain(x)
        assert printed == pytest.approx(_relative(got["relevance"], reference["relevance"]), rel=0.01, abs=1e-9)
        assert printed <= 1e-5
    assert "largest relevance difference" in proc.stdout
