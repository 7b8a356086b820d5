"""``relgraph bench``: how fast the explainer runs, and whether its kernels are right.

On a GPU: per-layer and whole-model time of the Triton explainer against the same explainer in
onnxruntime (CUDA provider) and against zennit, each kernel step's achieved TFLOP/s and GB/s set against
the device's measured ceilings (a large device-to-device copy for bandwidth, a large bf16 matmul for
FLOP/s).

Without a GPU: the interpreter correctness sweep (every public kernel op on small ragged shapes against
``relgraph.kernels.reference``'s float64 references, under ``TRITON_INTERPRET=1``), the ahead-of-time kernel report
(``relgraph kernels``), and the onnxruntime CPU explainer timed against the model's forward pass.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import TRITON_STACK, RelgraphError, require

BUNDLED = Path(__file__).resolve().parent.parent / "models" / "digits" / "digits_cnn.onnx"
TORCHVISION = ("resnet18", "resnet50", "vgg16")  # models zennit can be compared on (with their canonizers)
# Relative error ‖got − ref‖ / ‖ref‖ allowed per operand dtype: fp32 runs tl.dot in IEEE precision;
# fp16/bf16 round the operands (the reference sees the same rounded operands) and, in the push-back of
# the ε and γ/αβ steps, the shares s before the second product.
TOLERANCE = {"fp32": 1e-5, "fp16": 3e-3, "bf16": 2e-2}


# ------------------------------------------------------------------------------------------- interpreter sweep


def sweep_cases(size: str = "small"):
    """(name, dtype, run) for every public kernel op; run() → [(got, want), …] as float64 arrays.

    Shapes are ragged (no multiple of any block size); "full" adds fp16/bf16 operands and a second,
    depthwise, dilated convolution geometry.
    """
    import torch

    from . import kernels
    from .kernels import reference as ref

    dtypes = ("fp32",) if size == "small" else ("fp32", "fp16", "bf16")
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    geometries = [dict(stride=(2, 2), pads=(0, 1, 2, 0), dilation=(1, 1), groups=2, C=6, K=8, R=3, S=2, H=11, W=9)]
    if size != "small":
        geometries.append(dict(stride=(1, 2), pads=(2, 2, 2, 2), dilation=(2, 2), groups=8, C=8, K=8, R=3, S=3,
                               H=10, W=9))
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, positive=False):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return t.abs() + 0.1 if positive else t

    def nan(*shape):  # poisoned outputs: an element the kernel fails to write stays NaN
        return torch.full(shape, float("nan"), dtype=torch.float32)

    def operands(dtype, *arrays):
        """Kernel operands in ``dtype`` and the float64 arrays of exactly those rounded values."""
        cast = [a.to(torch_dtype[dtype]).contiguous() for a in arrays]
        return cast, [c.double().numpy() for c in cast]

    def f32(a):
        return a.float().contiguous()

    def np64(*ts):
        return [t.double().numpy() for t in ts]

    cases = []
    M, K, N = 37, 45, 29
    for dtype in dtypes:
        def linear_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            b = randn(N)
            y, z = kernels.linear(x, w, f32(b), relu=True, keep_z=True, out=(nan(M, N), nan(M, N)))
            y_ref, z_ref = ref.linear(xr, wr, b.numpy(), relu=True)
            return [(*np64(y), y_ref), (*np64(z), z_ref)]

        def epsilon_linear_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            r, z = randn(M, N), randn(M, N)
            rx, s = kernels.epsilon_linear(x, w, f32(r), f32(z), mode="stab", epsilon=1e-2, want_s=True,
                                           out=(nan(M, K), nan(M, N)))
            rx_ref, s_ref = ref.epsilon_linear(xr, wr, r.numpy(), f32(z).double().numpy(), mode="stab",
                                               epsilon=1e-2)
            return [(*np64(rx), rx_ref), (*np64(s), s_ref)]

        def parts_linear_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            zp, zn = kernels.lrp_parts_linear(x, w, out=(nan(M, N), nan(M, N)))
            zp_ref, zn_ref = ref.lrp_parts_linear(xr, wr)
            return [(*np64(zp), zp_ref), (*np64(zn), zn_ref)]

        def parts_linear_back_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            zp, zn = ref.lrp_parts_linear(xr, wr)
            r, b = randn(M, N), randn(N)
            bp, bn = b.clamp(min=0), b.clamp(max=0)
            out = []
            for rule in ("gamma", "alpha-beta"):
                rx = kernels.lrp_parts_linear_back(x, w, f32(r), f32(torch.from_numpy(zp)), f32(torch.from_numpy(zn)),
                                                   f32(bp), f32(bn), rule=rule, out=nan(M, K))
                want = ref.lrp_parts_linear_back(xr, wr, r.numpy(), f32(torch.from_numpy(zp)).double().numpy(),
                                                 f32(torch.from_numpy(zn)).double().numpy(), bp.numpy(), bn.numpy(),
                                                 rule=rule)
                out.append((*np64(rx), want))
            return out

        cases += [("linear", dtype, linear_case), ("epsilon_linear", dtype, epsilon_linear_case),
                  ("lrp_parts_linear", dtype, parts_linear_case),
                  ("lrp_parts_linear_back", dtype, parts_linear_back_case)]
        for g in geometries:
            geo = {k: g[k] for k in ("stride", "pads", "dilation", "groups")}
            Nb = 2

            def conv_case(dtype=dtype, g=g, geo=geo):
                (x, w), (xr, wr) = operands(dtype, randn(Nb, g["C"], g["H"], g["W"]),
                                            randn(g["K"], g["C"] // g["groups"], g["R"], g["S"]))
                b = randn(g["K"])
                y_ref, z_ref = ref.conv2d(xr, wr, b.numpy(), relu=True, **geo)
                y, z = kernels.conv2d(x, w, f32(b), relu=True, keep_z=True, out=(nan(*y_ref.shape), nan(*y_ref.shape)),
                                      **geo)
                return [(*np64(y), y_ref), (*np64(z), z_ref)]

            def epsilon_conv_case(dtype=dtype, g=g, geo=geo):
                (x, w), (xr, wr) = operands(dtype, randn(Nb, g["C"], g["H"], g["W"], positive=True),
                                            randn(g["K"], g["C"] // g["groups"], g["R"], g["S"]))
                y, _ = ref.conv2d(xr, wr, relu=True, **geo)
                r = randn(*y.shape)
                den = f32(torch.from_numpy(y))
                rx, s = kernels.epsilon_conv2d(x, w, f32(r), den, mode="shift", epsilon=1e-2, want_s=True,
                                               out=(nan(*x.shape), nan(*y.shape)), **geo)
                rx_ref, s_ref = ref.epsilon_conv2d(xr, wr, r.numpy(), den.double().numpy(), mode="shift",
                                                   epsilon=1e-2, **geo)
                return [(*np64(rx), rx_ref), (*np64(s), s_ref)]

            def parts_conv_case(dtype=dtype, g=g, geo=geo):
                (x, w), (xr, wr) = operands(dtype, randn(Nb, g["C"], g["H"], g["W"]),
                                            randn(g["K"], g["C"] // g["groups"], g["R"], g["S"]))
                zp_ref, zn_ref = ref.lrp_parts_conv2d(xr, wr, **geo)
                zp, zn = kernels.lrp_parts_conv2d(x, w, out=(nan(*zp_ref.shape), nan(*zp_ref.shape)), **geo)
                out = [(*np64(zp), zp_ref), (*np64(zn), zn_ref)]
                r, b = randn(*zp_ref.shape), randn(g["K"])
                bp, bn = b.clamp(min=0), b.clamp(max=0)
                zp32, zn32 = f32(torch.from_numpy(zp_ref)), f32(torch.from_numpy(zn_ref))
                for rule in ("gamma", "alpha-beta"):
                    rx = kernels.lrp_parts_conv2d_back(x, w, f32(r), zp32, zn32, f32(bp), f32(bn), rule=rule,
                                                       out=nan(*x.shape), **geo)
                    want = ref.lrp_parts_conv2d_back(xr, wr, r.numpy(), zp32.double().numpy(), zn32.double().numpy(),
                                                     bp.numpy(), bn.numpy(), rule=rule, **geo)
                    out.append((*np64(rx), want))
                return out

            label = "g{groups} s{stride[0]}x{stride[1]} d{dilation[0]}".format(**geo)
            cases += [(f"conv2d {label}", dtype, conv_case), (f"epsilon_conv2d {label}", dtype, epsilon_conv_case),
                      (f"lrp_parts_conv2d(+_back) {label}", dtype, parts_conv_case)]

    def maxpool_case():  # ResNet's overlapping 3×3 s2 p1 windows, over a ReLU output full of ties
        x, r = f32(randn(2, 3, 11, 9)).relu(), f32(randn(2, 3, 6, 5))
        geo = dict(kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1))
        rx = kernels.maxpool2d_back(x, r, out=nan(*x.shape), **geo)
        return [(*np64(rx), ref.maxpool2d_back(x.double().numpy(), r.double().numpy(), **geo))]

    def epsilon_sum_case():
        a, b, r = (f32(randn(3, 5, 7, 9)) for _ in range(3))
        den = (a + b).relu()
        ra, rb = kernels.epsilon_sum(a, b, r, den, mode="shift", epsilon=1e-2, out=(nan(*a.shape), nan(*a.shape)))
        want = ref.epsilon_sum(*np64(a, b, r, den), mode="shift", epsilon=1e-2)
        return [(*np64(ra), want[0]), (*np64(rb), want[1])]

    # no matmul operands: fp32 alone
    cases += [("maxpool2d_back 3x3 s2 p1", "fp32", maxpool_case), ("epsilon_sum", "fp32", epsilon_sum_case)]
    return cases


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """‖got − want‖ / ‖want‖ (NaN anywhere in got, a poisoned element left unwritten, counts as ∞)."""
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def interpreter_bf16_dot_ok() -> bool:
    """Whether this Triton's interpreter computes ``tl.dot`` on bf16 operands right (numpy has no bf16; in
    triton 3.8 a 16×16 product comes out wrong by orders of magnitude), on a 16×16 product of integers."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def dot16(a, b, c, B: tl.constexpr):
        i = tl.arange(0, B)
        tile = i[:, None] * B + i[None, :]
        tl.store(c + tile, tl.dot(tl.load(a + tile), tl.load(b + tile)))

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-3, 4, (16, 16), generator=gen).to(torch.bfloat16) for _ in range(2))
    c = torch.empty(16, 16)
    dot16[(1,)](a, b, c, B=16)
    return bool(torch.equal(c, a.float() @ b.float()))  # small integers: exact in bf16 and fp32


def run_sweep(size: str = "small", stream=None) -> bool:
    """Run every case under the interpreter; print one line per case; True when all pass."""
    from .progress import Progress

    stream = stream or sys.stdout

    cases = sweep_cases(size)
    if any(dtype == "bf16" for _, dtype, _ in cases) and not interpreter_bf16_dot_ok():
        cases = [c for c in cases if c[1] != "bf16"]
        print("  bf16 cases skipped: this Triton interpreter gets tl.dot on bf16 operands wrong (a 16×16 integer "
              "product does not match); they are checked on a GPU", file=stream, flush=True)
    ok = True
    with Progress(len(cases), "interpreter sweep") as bar:
        for name, dtype, run in cases:
            start = time.perf_counter()
            with warnings.catch_warnings():  # an overflow shows as a failing error figure, said once below
                warnings.simplefilter("ignore", RuntimeWarning)
                error = max(relative_error(got, want) for got, want in run())
            passed = error <= TOLERANCE[dtype]
            ok &= passed
            bar.update()
            print(f"  {name:44} {dtype:5} max rel. error {error:9.2e} (≤ {TOLERANCE[dtype]:.0e})  "
                  f"{'pass' if passed else 'FAIL'}  {time.perf_counter() - start:5.1f} s", file=stream, flush=True)
    print(f"interpreter sweep: {len(cases)} cases, {'all pass' if ok else 'FAILURES'}", file=stream, flush=True)
    return ok


def sweep_in_interpreter(size: str) -> bool:
    """The sweep under TRITON_INTERPRET=1: here if it is set, else in a child process that sets it (triton
    reads it when a kernel is decorated, so it cannot be switched on in a process that imported kernels)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return run_sweep(size)
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = f"import sys, relgraph.bench as b; sys.exit(0 if b.run_sweep({size!r}) else 1)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(BUNDLED.parent.parent.parent))
    if done.returncode not in (0, 1):
        raise RuntimeError(f"the interpreter sweep crashed (exit status {done.returncode})")
    return done.returncode == 0


# ------------------------------------------------------------------------------------------- CPU timing


def time_call(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def cpu_explainer_vs_forward(model: str, rule: str, batch: int, repeats: int) -> dict:
    """Median seconds of onnxruntime's CPU explainer and of the model's own forward pass, same batch."""
    import onnxruntime as ort

    from .compiler import compile
    from .explainer import Explainer

    with tempfile.TemporaryDirectory() as tmp:
        result = compile(model, rule=rule, output=os.path.join(tmp, "explainer.onnx"))
        explainer = Explainer(result.path)
        x = np.random.default_rng(0).standard_normal([batch, *explainer.input_shape[1:]]).astype(np.float32)
        forward = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        feeds = {forward.get_inputs()[0].name: x}
        t_forward = time_call(lambda: forward.run(None, feeds), repeats)
        t_explain = time_call(lambda: explainer.explain(x), repeats)
    return {"forward_s": statistics.median(t_forward), "explainer_s": statistics.median(t_explain),
            "ratio": statistics.median(t_explain) / statistics.median(t_forward)}


# ------------------------------------------------------------------------------------------- GPU


def device_ceilings() -> dict:
    """Measured HBM bandwidth (a 1 GiB device-to-device copy: read + write) and bf16 matmul FLOP/s."""
    import torch
    import triton.testing

    n = 1 << 28  # fp32 elements: 1 GiB

    def copy_time() -> float:  # its buffers are freed on return, before the matmul allocates
        src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
        return triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200)

    copy_ms = copy_time()
    m = 8192
    x, y = (torch.randn(m, m, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mm_ms = triton.testing.do_bench(lambda: x @ y, warmup=25, rep=200)
    return {"bytes_per_s": 2 * 4 * n / (copy_ms * 1e-3), "flops_per_s": 2 * m ** 3 / (mm_ms * 1e-3),
            "device": torch.cuda.get_device_name()}


def step_cost(step, values) -> tuple[float, float]:
    """(FLOPs, bytes) of a kernel step: 2 per multiply-add of its products (the γ/αβ kernels do four
    products, two with x ≥ 0), and the compulsory traffic: every input and output tensor once."""
    import math

    tensors = [values[n] for n in step.inputs if n and n in values] + [values[n] for n in step.outputs if n in values]
    moved = float(sum(t.numel() * t.element_size() for t in tensors))
    x, w = values[step.inputs[0]], values[step.inputs[1]]
    if step.op.startswith(("linear", "epsilon_linear", "lrp_parts_linear")):
        macs = x.shape[0] * x.shape[1] * w.shape[0]
    else:  # convolutions: every output (or relevance) element of [N, K, P, Q] takes C/g·R·S products
        out = values[step.outputs[0]] if step.op in ("conv2d", "lrp_parts_conv2d") else values[step.inputs[2]]
        macs = out.numel() * math.prod(w.shape[1:])
    products = 1
    if step.op.startswith("lrp_parts"):
        products = 2 if step.flags.get("x_nonneg") else 4
    return 2.0 * macs * products, moved


def profile_triton(executor, feeds: dict, repeats: int) -> list[dict]:
    """Per-step GPU time (CUDA events, median over ``repeats`` runs) of a launch plan, with each kernel
    step's FLOPs and bytes. The loop is the executor's own, with an event pair around each step."""
    import torch

    rows = None
    for _ in range(repeats + 1):  # the first run compiles and autotunes: not timed
        values = dict(executor.constants)
        values.update({k: executor._tensor(v) for k, v in feeds.items()})
        timings = []
        with torch.no_grad():
            for step in executor.plan.steps:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                if step.kind == "kernel":
                    executor._run_kernel(step, values)
                else:
                    executor._run_torch(step, values)
                end.record()
                cost = step_cost(step, values) if step.kind == "kernel" else (0.0, 0.0)
                timings.append((step, start, end, cost))
                for name in step.free:
                    values.pop(name, None)
        torch.cuda.synchronize()
        if rows is None:
            rows = [{"step": s.describe(), "node": s.nodes[0] if s.nodes else "", "kind": s.kind,
                     "flops": c[0], "bytes": c[1], "ms": []} for s, _, _, c in timings]
            continue
        for row, (_, start, end, _) in zip(rows, timings):
            row["ms"].append(start.elapsed_time(end))
    for row in rows:
        row["ms"] = statistics.median(row["ms"])
    return rows


def profile_onnxruntime_cuda(path: str, feeds: dict, repeats: int) -> tuple[float, dict]:
    """(median whole-run ms with inputs bound on the device, per-node kernel ms from ORT's profiler)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RelgraphError("onnxruntime has no CUDA provider here: install relgraph[gpu] (onnxruntime-gpu)")
    options = ort.SessionOptions()
    options.enable_profiling = True
    session = ort.InferenceSession(path, options, providers=["CUDAExecutionProvider"])
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    per_node: dict[str, list[float]] = {}
    with open(session.end_profiling()) as f:
        for event in json.load(f):
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                per_node.setdefault(event["name"][: -len("_kernel_time")], []).append(event["dur"] / 1e3)
    return statistics.median(times), {k: statistics.median(v) for k, v in per_node.items()}


def zennit_ms(model_name: str, rule: str, x: np.ndarray, repeats: int) -> float | None:
    """Median ms of zennit's attribution (canonizer + composite + Gradient) on the same batch, or None
    when ``rule`` has no zennit composite."""
    import torch
    import triton.testing
    import zennit.attribution
    import zennit.composites
    import zennit.torchvision

    composites = {"epsilon-plus": "EpsilonPlus", "epsilon-plus-flat": "EpsilonPlusFlat",
                  "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1", "epsilon-alpha2-beta1-flat": "EpsilonAlpha2Beta1Flat"}
    model = torch_model(model_name).cuda()
    canonizer = zennit.torchvision.ResNetCanonizer() if model_name.startswith("resnet") else \
        zennit.torchvision.VGGCanonizer()
    if rule == "epsilon":
        composite = zennit.composites.LayerMapComposite(
            layer_map=[(zennit.types.Linear, zennit.rules.Epsilon()), (zennit.types.AvgPool, zennit.rules.Norm())],
            canonizers=[canonizer])
    elif rule in composites:
        composite = getattr(zennit.composites, composites[rule])(canonizers=[canonizer])
    else:
        return None
    data = torch.from_numpy(x).cuda().requires_grad_(True)
    with zennit.attribution.Gradient(model=model, composite=composite) as attributor:
        def run():
            out = model(data)
            onehot = torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
            attributor(data, onehot)
        return triton.testing.do_bench(run, warmup=3, rep=max(50, repeats * 10))


def torch_model(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def export_torchvision(name: str, path: str) -> None:
    import torch

    torch.onnx.export(torch_model(name), (torch.zeros(1, 3, 224, 224),), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def gpu_bench(args, model: str, model_name: str | None) -> dict:
    from .lowering import compile_triton
    from .lowering.explainer import TritonExplainer

    ceilings = device_ceilings()
    print(f"device: {ceilings['device']}; measured ceilings {ceilings['bytes_per_s'] / 1e12:.2f} TB/s (copy), "
          f"{ceilings['flops_per_s'] / 1e12:.0f} TFLOP/s (bf16 matmul)")
    with tempfile.TemporaryDirectory() as tmp:
        triton_dir = os.path.join(tmp, "explainer.triton")
        compile_triton(model, triton_dir, rule=args.rule)
        explainer = TritonExplainer(triton_dir)
        x = np.random.default_rng(0).standard_normal([args.batch, *explainer.input_shape[1:]]).astype(np.float32)
        feeds = {explainer.input_name: x, "target": np.full(args.batch, -1, np.int64)}
        steps = profile_triton(explainer.executor, feeds, args.repeats)
        ort_ms, ort_nodes = profile_onnxruntime_cuda(os.path.join(triton_dir, "explainer.onnx"), feeds, args.repeats)
    triton_ms = sum(r["ms"] for r in steps)
    print(f"\n{'step':58} {'node':32} {'triton ms':>9} {'ort ms':>8} {'TFLOP/s':>8} {'GB/s':>7} {'% flop':>6} "
          f"{'% bw':>5}")
    for r in steps:
        ort = ort_nodes.get(r["node"])
        tflops = r["flops"] / (r["ms"] * 1e-3) if r["ms"] else 0.0
        gbs = r["bytes"] / (r["ms"] * 1e-3) if r["ms"] else 0.0
        print(f"{r['step'][:58]:58} {r['node'][:32]:32} {r['ms']:9.3f} "
              f"{'' if ort is None else f'{ort:8.3f}':>8} {tflops / 1e12:8.1f} {gbs / 1e9:7.0f} "
              f"{100 * tflops / ceilings['flops_per_s']:6.1f} {100 * gbs / ceilings['bytes_per_s']:5.1f}")
    result = {"ceilings": ceilings, "steps": steps, "triton_ms": triton_ms, "onnxruntime_cuda_ms": ort_ms}
    if model_name:
        import importlib.util

        if importlib.util.find_spec("zennit") and importlib.util.find_spec("torchvision"):
            result["zennit_ms"] = zennit_ms(model_name, args.rule, x, args.repeats)
        else:
            print("note: zennit is not installed (pip install zennit torchvision): no zennit comparison")
    print(f"\nwhole model, batch {args.batch}, rule {args.rule}: triton {triton_ms:.3f} ms (sum of steps), "
          f"onnxruntime CUDA {ort_ms:.3f} ms" + (f", zennit {result['zennit_ms']:.3f} ms"
                                                  if result.get("zennit_ms") is not None else ""))
    return result


# ------------------------------------------------------------------------------------------- command


def add_command(sub) -> None:
    b = sub.add_parser("bench", help="time the explainer (GPU), or check the kernels and time the CPU explainer")
    b.add_argument("--model", default=None,
                   help=f"an ONNX model, or one of {', '.join(TORCHVISION)} (torchvision, random weights; compared "
                        "with zennit on a GPU); default: the bundled digits CNN")
    b.add_argument("--rule", default="epsilon")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--sweep", choices=("small", "full", "none"), default="full",
                   help="interpreter correctness sweep without a GPU: small (fp32), full (fp32, fp16, bf16, two "
                        "convolution geometries) or none")
    b.add_argument("--aot", metavar="TARGETS", default="sm_80,sm_90",
                   help="targets of the ahead-of-time kernel report without a GPU, or 'none'")
    b.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    b.add_argument("--force", action="store_true", help="overwrite the --json output if it exists")
    b.set_defaults(run=cmd_bench)


def _resolve_model(name: str | None, tmp: str) -> tuple[str, str | None]:
    """(ONNX path, torchvision name or None)."""
    if name is None:
        return str(BUNDLED), None
    if name in TORCHVISION:
        require(("torchvision",), f"--model {name}", extra="test")
        path = os.path.join(tmp, f"{name}.onnx")
        export_torchvision(name, path)
        return path, name
    if not os.path.isfile(name):
        raise RelgraphError(f"model not found: {name} (an .onnx file or one of {', '.join(TORCHVISION)})")
    return name, None


def cmd_bench(args):
    require(TRITON_STACK, "relgraph bench")
    if args.batch < 1 or args.repeats < 1:
        raise RelgraphError("--batch and --repeats must be at least 1")
    if args.json and os.path.exists(args.json) and not args.force:
        raise RelgraphError(f"output exists: {args.json} (pass --force to overwrite)")
    targets = [] if args.aot == "none" else None
    if targets is None:
        from .aot import parse_targets

        targets = parse_targets(args.aot)
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model, model_name = _resolve_model(args.model, tmp)
        if torch.cuda.is_available():
            result = gpu_bench(args, model, model_name)
            failed = False
        else:
            result, failed = cpu_bench(args, model, targets)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    if failed:
        raise RelgraphError("the interpreter sweep failed: see the FAIL lines above")


def cpu_bench(args, model: str, targets: list[str]) -> tuple[dict, bool]:
    from . import aot

    print("no GPU: running the interpreter correctness sweep, the ahead-of-time kernel report and the "
          "onnxruntime CPU explainer instead", flush=True)
    result: dict = {"gpu": False}
    passed = True
    if args.sweep != "none":
        print(f"\ninterpreter sweep ({args.sweep}): every kernel op against float64 references", flush=True)
        passed = sweep_in_interpreter(args.sweep)
        result["sweep"] = {"size": args.sweep, "passed": passed}
    if targets:
        print(f"\nahead-of-time kernel report ({', '.join(targets)})", flush=True)
        rows = aot.report(aot.sources_for(), targets)
        print(aot.table(rows))
        print(aot.summary(rows))
        result["aot"] = [dict(r.__dict__, spills=r.spills) for r in rows]
    timing = cpu_explainer_vs_forward(model, args.rule, args.batch, args.repeats)
    print(f"\nonnxruntime CPU, {Path(model).name}, rule {args.rule}, batch {args.batch}: explainer "
          f"{timing['explainer_s'] * 1e3:.2f} ms, forward {timing['forward_s'] * 1e3:.2f} ms, "
          f"ratio {timing['ratio']:.2f}× (medians of {args.repeats})")
    result["cpu"] = timing
    return result, not passed
