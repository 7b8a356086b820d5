"""The triton target: the launch plan reproduces the ONNX explainer (onnxruntime is the reference).

A small CNN with a strided (ragged) grouped conv, a dilated grouped conv, a residual sum, max pooling
and a linear head is compiled with ``--target triton``; its plan runs the Triton kernels (CUDA, or
Triton's interpreter on the CPU, see conftest.py) and must give onnxruntime's outputs on the ONNX
explainer in the same folder. Single ONNX ops of the torch op table are checked against onnxruntime too.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

import relgraph
from relgraph.cli import main
from relgraph.errors import RelgraphError
from relgraph.lowering import PLAN_FILE, Plan, compile_triton, load, lower
from relgraph.lowering.explainer import TritonExplainer
from relgraph.lowering.plan import KERNEL_OPS
from relgraph.lowering.torch_ops import TORCH_OPS
from torch_models import export, pick_targets, random_input, relative_error, small


class LoweringNet(nn.Module):
    """Conv → strided grouped conv (k3 s2, leaves a row unread) → dilated grouped conv in a residual sum →
    max pool → linear head; ReLU between them. The ReLU outputs pooled hold zeros: ties for max pooling."""

    input_shape = (4, 12, 12)

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 3, padding=1)                          # 12x12
        self.strided = nn.Conv2d(8, 8, 3, stride=2, groups=2)               # 5x5, row 11 unread
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)  # 5x5
        self.head = nn.Linear(8 * 2 * 2, classes)

    def logits(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.strided(x))
        x = F.relu(x + self.dilated(x))
        x = F.max_pool2d(x, 2)                                              # 2x2
        return self.head(torch.flatten(x, 1))

    def forward(self, x):
        return self.logits(x)


CONVS = 3
RULES = ("epsilon", "gamma")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    net = small(LoweringNet, seed=3)
    return export(net, torch.zeros(1, *LoweringNet.input_shape), tmp_path_factory.mktemp("lowering") / "net.onnx",
                  dynamo=False)


@pytest.fixture(scope="module")
def folders(model_path):
    """rule → the compiled triton folder."""
    return {rule: compile_triton(model_path, model_path.with_name(f"net.{rule}.triton"), rule=rule).path
            for rule in RULES}


@pytest.fixture(scope="module")
def sample():
    return random_input((2, *LoweringNet.input_shape), seed=11)


def ops(plan: Plan) -> Counter:
    return Counter(s.op for s in plan.steps)


# ------------------------------------------------------------------------------------------- the plan


def test_epsilon_plan_lowers_epsilon_steps_and_forward_layers(folders):
    plan = Plan.load(Path(folders["epsilon"]) / PLAN_FILE)
    count = ops(plan)
    assert count["epsilon_conv2d"] == CONVS and count["epsilon_linear"] == 1
    assert count["conv2d"] == CONVS and count["linear"] == 1
    # nothing of the layers' maps is left to torch: no convolution, transpose or dense product, and the
    # only Relu left is the residual sum's, which no layer's epilogue can take
    assert not {"Conv", "ConvTranspose", "Gemm"} & set(count)
    assert count["Relu"] == 1
    assert plan.prelude == []
    forward = {o: s for s in plan.steps if s.op in ("conv2d", "linear") for o in s.outputs}
    modes = Counter()
    for step in plan.steps:
        if step.op in ("epsilon_linear", "epsilon_conv2d"):
            # the stabilizer runs in the kernel: den is a forward layer's own output (z or its ReLU),
            # not an elementwise Add/Where chain
            assert step.inputs[3] in forward, step
            modes[step.flags["mode"]] += 1
            assert step.flags["want_s"] and len(step.outputs) == 2  # every layer has a bias to share with
            assert step.attrs["epsilon"] == pytest.approx(1e-6)
    # z feeds only a ReLU for stem and strided conv (mode shift on y); the dilated conv (into the residual
    # sum) and the head have signed z (mode stab)
    assert modes == Counter(shift=2, stab=2)
    relu = [s.flags["relu"] for s in plan.steps if s.op == "conv2d"]
    assert relu == [True, True, False]
    assert not any(s.flags["keep_z"] for s in plan.steps if s.op in ("conv2d", "linear"))


def test_gamma_plan_uses_the_parts_kernels(folders):
    plan = Plan.load(Path(folders["gamma"]) / PLAN_FILE)
    count = ops(plan)
    assert count["lrp_parts_conv2d"] == count["lrp_parts_conv2d_back"] == CONVS
    assert count["lrp_parts_linear"] == count["lrp_parts_linear_back"] == 1
    assert count["conv2d"] == CONVS and count["linear"] == 1
    assert not {"Conv", "ConvTranspose", "Gemm"} & set(count)
    backs = [s for s in plan.steps if s.op.startswith("lrp_parts") and s.op.endswith("_back")]
    assert all(s.flags["rule"] == "gamma" and s.flags["has_bias"] for s in backs)
    # the stem reads the raw input (signed); every later layer reads a ReLU output
    assert [s.flags["x_nonneg"] for s in backs] == [True, True, True, False]
    # every layer has a bias: the push-back writes its shares, no elementwise step recomputes them
    assert all(s.flags["want_s"] and len(s.outputs) == 3 for s in backs)
    assert "PartsShares" not in count
    readers = {i for s in plan.steps for i in s.inputs}
    assert all(set(s.outputs[1:]) <= readers for s in backs)


@pytest.mark.parametrize("rule", RULES)
def test_pooling_and_residual_sum_are_kernel_steps(folders, rule):
    """Max pooling's route and the residual sum's ε split run as kernels; the forward MaxPool keeps its
    values only (no int64 indices), and no scatter is left."""
    plan = Plan.load(Path(folders[rule]) / PLAN_FILE)
    count = ops(plan)
    assert count["maxpool2d_back"] == 1 and count["epsilon_sum"] == 1
    assert not {"ScatterElements", "ConstantOfShape", "Size"} & set(count)
    (pool,) = [s for s in plan.steps if s.op == "MaxPool"]
    assert pool.outputs == [pool.outputs[0]] and pool.attrs["indices"] == 0
    (route,) = [s for s in plan.steps if s.op == "maxpool2d_back"]
    assert route.inputs[0] == pool.inputs[0]
    assert route.attrs["kernel_shape"] == [2, 2] and route.attrs["strides"] == [2, 2] and not route.attrs["ceil_mode"]
    (split,) = [s for s in plan.steps if s.op == "epsilon_sum"]
    # the residual sum feeds a ReLU: its stabilizer runs in the kernel on the ReLU output (mode shift)
    assert split.flags["mode"] == "shift" and split.attrs["epsilon"] == pytest.approx(1e-6)
    relu = next(s for s in plan.steps if s.op == "Relu")
    assert split.inputs[3] == relu.outputs[0]


def test_every_function_has_a_kernel_rule():
    """The rewrites are made from the function records: every declared function with a kernel has its rule
    (three for the ε family: stab, shift, den), so a new one cannot be lowered by name alone."""
    from relgraph.lowering.rewrites import kernel_rules
    from relgraph.rules.functions import FUNCTIONS

    named = {rule.name for rule in kernel_rules()}
    assert {name.split("+")[0] for name in named} == set(FUNCTIONS)
    epsilon = [f.name for f in FUNCTIONS.values() if f.kernel.startswith("epsilon_")]
    assert all({n, n + "+stab", n + "+shift"} <= named for n in epsilon)


def test_a_call_that_fits_is_never_left_to_torch(model_path, monkeypatch):
    """A call whose operands fit its kernel but that no rewrite took is an error naming the call, not a quiet
    fallback to its body's torch ops."""
    import relgraph.lowering.plan as plan_module

    class NoRules:
        def apply_to_model(self, model):
            return 0

    proto = relgraph.compile(model_path, rule="epsilon", write=False, target="triton").proto
    monkeypatch.setattr(plan_module, "kernel_rules", lambda called: NoRules())
    with pytest.raises(RelgraphError, match=r"Epsilon\w+ call '.+' fits epsilon_\w+ but no rewrite matched it"):
        lower(proto)


class WallTimer:
    """``relgraph bench``'s step timer on the CPU: wall time instead of CUDA events."""

    def start(self):
        self.begin = time.perf_counter()

    def stop(self):
        self.end = time.perf_counter()

    def ms(self) -> float:
        return (self.end - self.begin) * 1e3

    @staticmethod
    def synchronize():
        pass


def test_bench_profile_counts_each_kernel_steps_work(folders, sample):
    """The GPU half of ``relgraph bench`` (its per-step loop and roofline counts), run with the kernels as torch
    ops and a wall-clock timer: one row per step, and each kernel step's FLOPs and bytes equal the layer
    arithmetic of LoweringNet worked out here by hand."""
    from relgraph.bench.gpu import profile_triton

    n = len(sample)
    explainer = TritonExplainer(folders["epsilon"], kernels="torch")
    feeds = {explainer.input_name: sample, "target": np.full(n, -1, np.int64)}
    rows = profile_triton(explainer.executor, feeds, repeats=2, timer=WallTimer)
    assert [r["step"] for r in rows] == [s.describe() for s in explainer.plan.steps]
    assert all(r["ms"] >= 0 for r in rows)
    # multiply-adds: stem 8×12×12 outputs of 4·3·3, strided (groups 2) 8×5×5 of 4·3·3, dilated (groups 4)
    # 8×5×5 of 2·3·3, head 5 of 32; each ε step as many as its layer; the route and the sum none
    convs = sorted(2 * n * m for m in (8 * 144 * 36, 8 * 25 * 36, 8 * 25 * 18))
    flops = {}
    for r in rows:
        if r["kind"] == "kernel":
            flops.setdefault(r["step"].split("[")[0].removeprefix("kernel "), []).append(r["flops"])
    assert sorted(flops["conv2d"]) == convs and sorted(flops["epsilon_conv2d"]) == convs
    assert flops["linear"] == flops["epsilon_linear"] == [2 * n * 32 * 5]
    assert flops["maxpool2d_back"] == [0.0] and flops["epsilon_sum"] == [0.0]
    stem = next(r for r in rows if r["node"] == next(s.nodes[0] for s in explainer.plan.steps if s.op == "conv2d"))
    # x, W, b in; the ReLU's output out (z is read by nothing else); fp32
    assert stem["bytes"] == 4 * (n * 4 * 144 + 8 * 4 * 9 + 8 + n * 8 * 144)


def test_plan_round_trips_and_names_real_specializations(folders, model_path):
    kernel_registry = pytest.importorskip("relgraph.kernels.registry")
    for rule in RULES:
        path = Path(folders[rule]) / PLAN_FILE
        plan = Plan.load(path)
        assert Plan.from_json(plan.to_json()).to_json() == plan.to_json()
        onnx_outputs = [o.name for o in onnx.load(str(Path(folders[rule]) / "explainer.onnx")).graph.output]
        assert plan.outputs == onnx_outputs
        for spec in plan.specializations():
            found = kernel_registry.specializations(spec["op"], spec["dtype"], **spec["flags"])
            assert found and all(s.family == spec["op"] for s in found)
    assert set(KERNEL_OPS) == set(kernel_registry.SPECS)  # the ops a plan may call are the kernels there are
    # and each has its torch reference and its launcher, found by name (a new op missing either fails here)
    from relgraph import kernels
    from relgraph.lowering.kernel_ops import TorchKernels

    for op in KERNEL_OPS:
        assert callable(getattr(TorchKernels, op, None)) and callable(getattr(kernels, op, None)), op


# ------------------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("rule", RULES)
def test_triton_explainer_matches_onnxruntime(folders, sample, rule):
    reference = relgraph.Explainer(folders[rule])
    lowered = relgraph.open_explainer(folders[rule])
    assert isinstance(lowered, TritonExplainer) and not isinstance(reference, TritonExplainer)
    targets = pick_targets(reference.explain(sample)["logits"], seed=5)
    for target in (targets, None):
        want, got = reference.explain(sample, target), lowered.explain(sample, target)
        assert list(got["outputs"]) == list(want["outputs"])
        np.testing.assert_array_equal(got["target"], want["target"])
        for name, value in want["outputs"].items():
            assert got["outputs"][name].shape == value.shape, name
            assert relative_error(got["outputs"][name], value).max() < 1e-4, name
        assert np.abs(got["relevance"]).sum() > 0


COMPOSITE_KERNELS = {  # composite → the relevance kernel its two non-first convs run on
    "epsilon-alpha2-beta1-flat": "lrp_parts_conv2d_back",   # αβ: split forward and push-back
    "epsilon-plus-flat": "epsilon_conv2d",                  # z⁺ on a ReLU output: the ε step with W⁺
    "epsilon-gamma-box": "lrp_parts_conv2d_back",           # γ
}


@pytest.mark.parametrize("rule", COMPOSITE_KERNELS)
def test_composite_plans_match_onnxruntime(model_path, tmp_path, rule):
    """zennit's composites end to end through the kernels (Triton's interpreter without a GPU): the first
    layer's flat / z^B in torch ops, the other convs on their fused kernels, the dense head on ε."""
    folder = compile_triton(model_path, tmp_path / f"{rule}.triton", rule=rule, bounds=(-3.0, 3.0)).path
    launched = ops(load(folder)[0])
    assert launched[COMPOSITE_KERNELS[rule]] == CONVS - 1 and launched["epsilon_linear"] == 1
    assert launched["maxpool2d_back"] == 1 and launched["epsilon_sum"] == 1
    reference, lowered = relgraph.Explainer(folder), relgraph.open_explainer(folder)
    assert isinstance(lowered, TritonExplainer)
    x = random_input((2, *LoweringNet.input_shape), seed=12, low=-3.0, high=3.0)
    want, got = reference.explain(x, 3), lowered.explain(x, 3)
    for name, value in want["outputs"].items():
        assert relative_error(got["outputs"][name], value).max() < 1e-4, name
    assert np.abs(got["relevance"]).sum() > 0


def test_fp16_operands_plan(model_path, sample, tmp_path):
    """``--dtype fp16``: x and W go to the kernels in fp16 (fp32 accumulation). The kernels match their
    torch reference fed the same fp16 operands; against the fp32 explainer the relevance moves by fp16's
    rounding, amplified by the ε divisions (about 3 % here, the same for the torch reference). bf16 needs
    a GPU: the interpreter's bf16 dot is wrong."""
    folder = tmp_path / "fp16.triton"
    assert main(["compile", str(model_path), "--rule", "epsilon", "--target", "triton", "--dtype", "fp16",
                 "-o", str(folder)]) == 0
    lowered = relgraph.open_explainer(folder)
    assert lowered.plan.dtype == "fp16" and {s["dtype"] for s in lowered.plan.specializations()} == {"fp16"}
    fp32 = relgraph.Explainer(folder).explain(sample, 2)
    torch_ref = TritonExplainer(folder, kernels="torch", device="cpu").explain(sample, 2)
    got = lowered.explain(sample, 2)

    def err(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    for name in ("logits", "relevance"):
        assert err(got[name], torch_ref[name]) < 2e-3, name
        assert 0 < err(got[name], fp32[name]) < 5e-2, name  # > 0: the operands really were rounded
        assert np.corrcoef(got[name].ravel(), fp32[name].ravel())[0, 1] > 0.999, name


@pytest.mark.parametrize("rule", RULES)
def test_torch_reference_of_the_kernels_matches_onnxruntime(folders, sample, rule):
    """The kernel steps computed by their torch reference: the plan's rewrites alone are exact."""
    reference = relgraph.Explainer(folders[rule])
    lowered = TritonExplainer(folders[rule], kernels="torch", device="cpu")
    want, got = reference.explain(sample, 1), lowered.explain(sample, 1)
    for name, value in want["outputs"].items():
        assert relative_error(got["outputs"][name], value).max() < 1e-5, name


def test_onnx_explainer_file_is_lowered_on_the_spot(folders, sample):
    onnx_file = Path(folders["epsilon"]) / "explainer.onnx"
    reference = relgraph.Explainer(onnx_file)
    lowered = relgraph.open_explainer(onnx_file, backend="triton")
    want, got = reference.explain(sample, 2), lowered.explain(sample, 2)
    assert relative_error(got["relevance"], want["relevance"]).max() < 1e-4


def test_matmul_over_a_sequence_runs_as_linear_kernels(tmp_path):
    """StructureZoo multiplies a [N, 32, 8] activation by a weight matrix: canonicalization runs it as a Gemm
    on N·32 rows, so the forward and its ε step run as ``linear`` / ``epsilon_linear`` and the plan needs no
    transposed copy of the weight."""
    from torch_models import StructureZoo

    path = export(small(StructureZoo, seed=2), torch.zeros(1, *StructureZoo.input_shape), tmp_path / "s.onnx",
                  dynamo=True)
    folder = compile_triton(path, tmp_path / "s.triton", rule="epsilon").path
    plan = Plan.load(Path(folder) / PLAN_FILE)
    matmuls = [s for s in plan.steps if any("MatMul" in n for n in s.nodes) and s.kind == "kernel"]
    assert {s.op for s in matmuls} == {"linear", "epsilon_linear"}
    assert "Transpose" not in {s.op for s in plan.prelude}
    x = random_input((2, *StructureZoo.input_shape), seed=4)
    want = relgraph.Explainer(folder).explain(x, 0)
    got = relgraph.open_explainer(folder).explain(x, 0)
    for name, value in want["outputs"].items():
        assert relative_error(got["outputs"][name], value).max() < 1e-4, name


# ------------------------------------------------------------------------------------------- torch ops


def _single_op(op_type, inputs: dict, n_out=1, **attrs):
    """A one-node model; constant operands (ints) become initializers."""
    feeds = {k: v for k, v in inputs.items() if v.dtype.kind == "f"}
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in inputs.items() if v.dtype.kind != "f"]
    outputs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op_type, list(inputs), outputs, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.INT64 if (op_type, i) == ("MaxPool", 1) else TensorProto.FLOAT,
                                       None) for i, o in enumerate(outputs)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    step_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    step_attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in step_attrs.items()}
    got = TORCH_OPS[op_type]([torch.from_numpy(v) for v in inputs.values()], step_attrs)
    got = got if isinstance(got, tuple) else (got,)
    return [g.numpy() for g in got], want


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)

OP_CASES = {
    "range": ("Range", {"start": np.array(0.5, np.float32), "limit": np.array(4.0, np.float32),
                        "delta": np.array(0.75, np.float32)}, 1, {}),
    "maxpool asymmetric pads, ceil mode, indices": (
        "MaxPool", {"x": X}, 2, dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1)),
    "maxpool dilated": ("MaxPool", {"x": X}, 2, dict(kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 1, 1, 1])),
    "avgpool count_include_pad, ceil mode": (
        "AveragePool", {"x": X}, 1, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                         count_include_pad=1)),
    "avgpool excluding pads, asymmetric": (
        "AveragePool", {"x": X}, 1, dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 2, 1, 0])),
    "conv same_lower grouped": (
        "Conv", {"x": X[:, :2], "w": RNG.standard_normal((4, 1, 2, 3)).astype(np.float32)}, 1,
        dict(auto_pad="SAME_LOWER", group=2, strides=[2, 1])),
    "convtranspose pads and output_padding": (
        "ConvTranspose", {"x": X, "w": RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)}, 1,
        dict(strides=[2, 3], pads=[1, 0, 0, 2], output_padding=[1, 2], dilations=[1, 1])),
    "slice negative steps": (
        "Slice", {"x": X, "s": np.array([-1, 5], np.int64), "e": np.array([-100, 0], np.int64),
                  "a": np.array([3, 2], np.int64), "t": np.array([-2, -3], np.int64)}, 1, {}),
    "scatter-add duplicates": (
        "ScatterElements", {"x": X.reshape(-1)[:10].copy(), "i": np.array([1, 1, -2, 3], np.int64),
                            "u": X.reshape(-1)[10:14].copy()}, 1, dict(axis=0, reduction="add")),
    "reshape with 0 and -1": ("Reshape", {"x": X, "s": np.array([0, -1, 6], np.int64)}, 1, {}),
    "layernorm with a group norm's scale and bias": (
        "LayerNormalization", {"x": X, "s": RNG.standard_normal((3, 7, 1)).astype(np.float32),
                               "b": RNG.standard_normal((3, 1, 1)).astype(np.float32)}, 1, dict(axis=2)),
    "split in num_outputs": ("Split", {"x": X}, 3, dict(axis=2, num_outputs=3)),
    "pad on two axes": ("Pad", {"x": X, "p": np.array([1, 0, 2, 3], np.int64), "v": np.array(0.5, np.float32),
                                "a": np.array([1, 3], np.int64)}, 1, dict(mode="constant")),
    "elu": ("Elu", {"x": X}, 1, dict(alpha=0.7)),
    "selu with its constants": ("Selu", {"x": X}, 1, dict(alpha=1.3, gamma=0.9)),
    "selu": ("Selu", {"x": X}, 1, {}),
    "celu": ("Celu", {"x": X}, 1, dict(alpha=0.6)),
    "softsign": ("Softsign", {"x": X}, 1, {}),
    "thresholded relu": ("ThresholdedRelu", {"x": X}, 1, dict(alpha=0.3)),
    "shrink (soft)": ("Shrink", {"x": X}, 1, dict(lambd=0.4, bias=0.4)),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_torch_op_matches_onnxruntime(case):
    op_type, inputs, n_out, attrs = OP_CASES[case]
    got, want = _single_op(op_type, inputs, n_out, **attrs)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_unsupported_ops_are_reported_at_once(folders):
    proto = onnx.load(str(Path(folders["epsilon"]) / "explainer.onnx"))
    logits = proto.graph.output[0].name
    proto.graph.node.extend([helper.make_node("Hardmax", [logits], ["h"], name="odd_one"),
                             helper.make_node("Det", ["h"], ["d"], name="odd_two"),
                             helper.make_node("Unsqueeze", [logits, "axes"], ["u"], name="u"),
                             helper.make_node("MaxPool", ["u"], ["p", "i"], kernel_shape=[1], storage_order=1,
                                              name="column_major")])
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"))
    proto.graph.output.extend([helper.make_tensor_value_info(n, t, None)
                               for n, t in (("d", TensorProto.FLOAT), ("i", TensorProto.INT64))])
    with pytest.raises(RelgraphError) as err:
        lower(proto)
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot lower 3 node(s)")
    assert "Hardmax 'odd_one'" in message and "Det 'odd_two'" in message and "Torch ops: " in message
    assert "MaxPool 'column_major' (storage_order=1)" in message


# ------------------------------------------------------------------------------------------- the CLI


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("relgraph: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_round_trip(model_path, sample, tmp_path, capsys):
    folder = tmp_path / "net.triton"
    assert main(["compile", str(model_path), "--rule", "epsilon", "--target", "triton", "-o", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "epsilon_conv2d×3" in out and "epsilon_linear×1" in out
    assert sorted(p.name for p in folder.iterdir()) == ["explainer.onnx", "plan.json"]

    inputs = tmp_path / "x.npy"
    np.save(inputs, sample)
    assert main(["explain", str(folder), str(inputs), "--backend", "triton", "--target", "3",
                 "-o", str(tmp_path / "triton.npz")]) == 0
    assert main(["explain", str(folder), str(inputs), "--backend", "onnxruntime", "--target", "3",
                 "-o", str(tmp_path / "onnx.npz")]) == 0
    got, want = np.load(tmp_path / "triton.npz"), np.load(tmp_path / "onnx.npz")
    assert sorted(got.files) == sorted(want.files)
    for name in want.files:
        assert relative_error(got[name], want[name]).max() < 1e-4, name
    capsys.readouterr()

    assert main(["inspect", str(folder), "--target", "triton"]) == 0
    listing = capsys.readouterr().out
    assert "kernel epsilon_conv2d[fp32](mode=shift, want_s=True)" in listing
    assert "kernel conv2d[fp32](has_bias=True, relu=True, keep_z=False)" in listing
    assert "torch MaxPool" in listing and "specialization epsilon_linear[fp32](mode=stab, want_s=True)" in listing


def test_cli_errors(model_path, folders, tmp_path, capsys, monkeypatch):
    folder = folders["epsilon"]
    before = _digest(folder)
    code = main(["compile", str(model_path), "--rule", "epsilon", "--target", "triton", "-o", folder])
    _one_line_error(capsys, code, "output exists", "--force")
    assert _digest(folder) == before

    code = main(["compile", str(model_path), "--target", "cuda", "-o", str(tmp_path / "x")])
    _one_line_error(capsys, code, "unknown target 'cuda'", "onnx, triton")
    code = main(["inspect", str(model_path), "--target", "ptx"])
    _one_line_error(capsys, code, "unknown target 'ptx'")
    code = main(["explain", folder, str(tmp_path / "missing.npy"), "--backend", "tpu", "-o", str(tmp_path / "o.npy")])
    _one_line_error(capsys, code, "unknown backend 'tpu'")
    code = main(["compile", str(model_path), "--dtype", "fp16", "-o", str(tmp_path / "x.onnx")])
    _one_line_error(capsys, code, "--dtype applies to --target triton")

    # a machine with the [cpu] extra only: the triton target and its tools say what to install
    import importlib.util

    real_find_spec = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
        code = main(["compile", str(model_path), "--target", "triton", "-o", str(tmp_path / "y")])
        _one_line_error(capsys, code, "needs triton", "relgraph[gpu]")
        for argv in (["bench"], ["kernels", "--aot", "sm_80"]):
            _one_line_error(capsys, main(argv), "needs triton", "relgraph[gpu]")
    assert not (tmp_path / "y").exists()
    assert not (tmp_path / "x").exists()

    if not torch.cuda.is_available():  # without a GPU and without the interpreter: how to run it, in one line
        np.save(tmp_path / "x.npy", random_input((1, *LoweringNet.input_shape), seed=1))
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        code = main(["explain", folder, str(tmp_path / "x.npy"), "--backend", "triton", "-o", str(tmp_path / "o.npy")])
        _one_line_error(capsys, code, "TRITON_INTERPRET=1")
        assert not (tmp_path / "o.npy").exists()


# ------------------------------------------------------------------------------------------- a real architecture


@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_resnet18_plan_covers_the_network(tmp_path, rule):
    """torchvision's ResNet-18: every conv, residual ε split and the max pool become kernel steps, and the plan
    (its kernel steps run by their torch reference: the interpreter would take minutes) gives
    onnxruntime's explainer up to float32 conditioning."""
    from torch_models import resnet18

    path = export(resnet18(seed=0), torch.zeros(1, 3, 64, 64), tmp_path / "r18.onnx", dynamo=False)
    folder = compile_triton(path, tmp_path / "r18.triton", rule=rule, bounds=(-3.0, 3.0)).path
    plan = load(folder)[0]
    launched = ops(plan)
    assert launched["maxpool2d_back"] == 1 and launched["epsilon_sum"] == 8 and launched["epsilon_linear"] == 1
    relevance_kernels = launched["epsilon_conv2d"] + launched["lrp_parts_conv2d_back"]
    assert relevance_kernels == 19  # all 20 convs but the first, whose flat / z^B rule has no fused kernel
    x = random_input((2, 3, 64, 64), seed=1, low=-3.0, high=3.0)
    want = relgraph.Explainer(folder).explain(x, 7)
    got = TritonExplainer(folder, kernels="torch", device="cpu").explain(x, 7)
    for name, value in want["outputs"].items():
        g = got["outputs"][name]
        assert np.linalg.norm(g - value) <= 1e-3 * np.linalg.norm(value), name
        assert (g * value).sum() >= 0.99999 * np.linalg.norm(g) * np.linalg.norm(value), name


# ------------------------------------------------------------------------------------------- activations

ACTIVATION_NET = """
<ir_version: 10, opset_import: ["" : 17]>
net (float[N, 3, 6, 6] input) => (float[N, 5] logits) {
   h = Conv <pads = [1, 1, 1, 1]> (input, W1, B1)
   a = Selu (h)
   c = Conv (a, W2, B2)
   s = Softsign (c)
   p = GlobalAveragePool (s)
   f = Flatten (p)
   logits = Gemm <transB = 1> (f, W3, B3)
}
"""


@pytest.mark.parametrize("rule", ["gradient", "epsilon"])
def test_selu_softsign_plan_matches_onnxruntime(tmp_path, rule):
    """Selu and Softsign forward, and under ``gradient`` their derivatives, run as torch ops of the plan (the
    convs on their kernels, under Triton's interpreter without a GPU) and give onnxruntime's explainer."""
    rng = np.random.default_rng(5)
    model = onnx.parser.parse_model(ACTIVATION_NET)
    weights = {"W1": rng.normal(0, 0.5, (4, 3, 3, 3)), "B1": rng.normal(0, 0.1, 4),
               "W2": rng.normal(0, 0.5, (4, 4, 1, 1)), "B2": rng.normal(0, 0.1, 4),
               "W3": rng.normal(0, 0.5, (5, 4)), "B3": rng.normal(0, 0.1, 5)}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items())
    path = tmp_path / "act.onnx"
    onnx.save(model, str(path))
    folder = compile_triton(path, tmp_path / "act.triton", rule=rule).path
    plan = load(folder)[0]
    assert {"Selu", "Softsign"} <= {s.op for s in plan.steps}
    reference, lowered = relgraph.Explainer(folder), relgraph.open_explainer(folder)
    assert isinstance(lowered, TritonExplainer)
    x = random_input((3, 3, 6, 6), seed=6)
    want, got = reference.explain(x, 2), lowered.explain(x, 2)
    for name, value in want["outputs"].items():  # bias relevance is all zero under the gradient
        assert np.linalg.norm(got["outputs"][name] - value) <= 1e-5 * np.linalg.norm(value), name
    assert np.abs(got["relevance"]).sum() > 0


def test_shape_inference_failure_is_an_error_not_a_torch_fallback():
    """Without ranks every layer would quietly stay a torch op: a graph ONNX's shape inference rejects is
    refused in one line that says so."""
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="broken")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(np.zeros((4, 5), np.float32), "W")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(RelgraphError, match="shape inference failed"):
        lower(proto)


def test_inspect_says_why_a_step_is_not_a_kernel(tmp_path, capsys):
    """A 1-d convolution's ε call is expanded into torch ops, each saying the kernel takes 2-d filters; every
    torch step of the plan carries a reason, and ``inspect --target triton`` prints it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3))
    path = export(model, torch.zeros(1, 2, 8), tmp_path / "conv1d.onnx", dynamo=False)
    plan = compile_triton(path, write=False, rule="epsilon").launch_plan
    torch_steps = [s for s in plan.steps if s.kind == "torch"]
    assert torch_steps and all(s.why for s in torch_steps)
    unfused = [s for s in torch_steps if "not fused into epsilon_conv2d" in s.why]
    assert unfused and all("its weight has rank 3; the kernel takes a 2-d filter bank" in s.why for s in unfused)
    assert {s.op for s in plan.kernel_steps()} >= {"epsilon_linear", "linear"}  # the dense layer still fuses
    assert Plan.from_json(plan.to_json()).steps[0].why == plan.steps[0].why  # kept in plan.json
    assert main(["inspect", str(path), "--target", "triton", "--rule", "epsilon"]) == 0
    listing = capsys.readouterr().out
    assert "not fused into epsilon_conv2d: its weight has rank 3" in listing
