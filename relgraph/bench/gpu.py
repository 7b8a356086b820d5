"""On a GPU: the device's measured ceilings, the launch plan's per-step time with each kernel step's FLOPs and
bytes, and the same explainer in onnxruntime's CUDA provider."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import tempfile
import time

import numpy as np

from ..errors import RelgraphError
from ..lowering import compile_triton
from ..lowering.explainer import TritonExplainer
from .timing import zennit_ms


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


POINTWISE = ("maxpool2d_back", "epsilon_sum")  # kernels without a product: bandwidth alone


def step_cost(step, values) -> tuple[float, float]:
    """(FLOPs, bytes) of a kernel step: 2 per multiply-add of its products (the γ/αβ kernels do four
    products, two with x ≥ 0; the pointwise max-pool route and residual split none), and the compulsory
    traffic: every input and output tensor once."""
    tensors = [values[n] for n in step.inputs if n and n in values] + [values[n] for n in step.outputs if n in values]
    moved = float(sum(t.numel() * t.element_size() for t in tensors))
    if step.op in POINTWISE:
        return 0.0, moved
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


class CudaTimer:
    """The GPU time of what runs between ``start()`` and ``stop()``: a pair of CUDA events, read after the
    device is synchronized."""

    def __init__(self):
        import torch

        self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self):
        self.begin.record()

    def stop(self):
        self.end.record()

    def ms(self) -> float:
        return self.begin.elapsed_time(self.end)

    @staticmethod
    def synchronize():
        import torch

        torch.cuda.synchronize()


def profile_triton(executor, feeds: dict, repeats: int, timer=CudaTimer) -> list[dict]:
    """Per-step time (``timer``: CUDA events by default, median over ``repeats`` runs) of a launch plan, with
    each kernel step's FLOPs and bytes. The loop is the executor's own, with a timer around each step."""
    import torch

    rows = None
    for _ in range(repeats + 1):  # the first run compiles and autotunes: not timed
        values = dict(executor.constants)
        values.update({k: executor._tensor(v) for k, v in feeds.items()})
        timings = []
        with torch.no_grad():
            for step in executor.plan.steps:
                clock = timer()
                clock.start()
                if step.kind == "kernel":
                    executor._run_kernel(step, values)
                else:
                    executor._run_torch(step, values)
                clock.stop()
                cost = step_cost(step, values) if step.kind == "kernel" else (0.0, 0.0)
                timings.append((step, clock, cost))
                for name in step.free:
                    values.pop(name, None)
        timer.synchronize()
        if rows is None:
            rows = [{"step": s.describe(), "node": s.nodes[0] if s.nodes else "", "kind": s.kind,
                     "flops": c[0], "bytes": c[1], "ms": []} for s, _, c in timings]
            continue
        for row, (_, clock, _) in zip(rows, timings):
            row["ms"].append(clock.ms())
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


def gpu_bench(args, model: str, model_name: str | None) -> dict:
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
        if importlib.util.find_spec("zennit") and importlib.util.find_spec("torchvision"):
            result["zennit_ms"] = zennit_ms(model_name, args.rule, x, args.repeats)
        else:
            print("note: zennit is not installed (pip install zennit torchvision): no zennit comparison")
    print(f"\nwhole model, batch {args.batch}, rule {args.rule}: triton {triton_ms:.3f} ms (sum of steps), "
          f"onnxruntime CUDA {ort_ms:.3f} ms" + (f", zennit {result['zennit_ms']:.3f} ms"
                                                  if result.get("zennit_ms") is not None else ""))
    return result
