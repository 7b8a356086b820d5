#!/usr/bin/env python
"""Explainer ÷ forward on each ONNX runtime, side by side, and where OpenVINO's relevance pass spends time.

For each model (torchvision ResNet-50 / VGG-16, random seeded weights, exported once by bench_cpu.py's
exporter into bench/.cache) and each rule, the script compiles the explainer in both forms (portable, the
default: standard ops only; functions: ``--keep-functions``) and times, at one batch size and thread count:

* onnxruntime: the forward model, the portable explainer and the functions-form explainer;
* OpenVINO (CPU plugin, f32 inference precision, latency hint off): the forward model and the portable
  explainer.

Each runtime runs in its own process; times are medians of ``--repeats`` runs after a warm-up. With
``--profile`` OpenVINO's per-layer performance counters of the explainer are summed by the ONNX op
type of the layer that produced them (``PERF_COUNT``: real time of each executed primitive), and so are
onnxruntime's (its JSON profile), to show which ops make the difference.

    python bench/bench_runtimes.py                                   # ResNet-50 and VGG-16, ε, batch 8
    python bench/bench_runtimes.py --models resnet50 --rules epsilon --batch 8 --threads 2 --profile
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import bench_cpu  # noqa: E402  (the exporter, the cache and the input of the CPU benchmark)


def explainer(cache: Path, model: str, rule: str, form: str) -> Path:
    """The cached explainer of ``model`` for ``rule`` in ``form``, compiled on first use."""
    import relgraph

    path = cache / f"{model}-seed{bench_cpu.SEED}.{rule}.{form}.onnx"
    if not path.exists():
        relgraph.compile(str(bench_cpu.model_path(cache, model)), rule, output=str(path),
                         keep_functions=form == "functions")
    return path


def forward_model(cache: Path, model: str) -> Path:
    path = bench_cpu.model_path(cache, model)
    if not path.exists():
        bench_cpu.worker_export({"model": model, "path": str(path)})
    return path


# ---------------------------------------------------------------------------------------------- workers


def worker(spec: dict) -> dict:
    """Time one model file on one runtime (run in its own process)."""
    x = bench_cpu.make_input(spec["batch"])
    feed = {"input": x}
    if spec["explainer"]:
        feed["target"] = np.full(spec["batch"], -1, np.int64)
    if spec["runtime"] == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        if spec.get("profile"):
            options.enable_profiling = True
            options.profile_file_prefix = spec["profile"]
        session = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])

        def run():
            session.run(None, feed)
    else:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": spec["threads"],
                  "PERF_COUNT": bool(spec.get("profile"))}
        compiled = core.compile_model(core.read_model(spec["path"]), "CPU", config)
        request = compiled.create_infer_request()

        def run():
            request.infer(feed)
    for _ in range(spec["warmup"]):
        run()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    result = {"median": statistics.median(times), "min": min(times), "max": max(times)}
    if spec.get("profile") and spec["runtime"] == "openvino":
        result["profile"] = openvino_profile(request, spec["path"])
    if spec.get("profile") and spec["runtime"] == "onnxruntime":
        result["profile"] = onnxruntime_profile(session.end_profiling(), spec["path"], spec["repeats"])
    return result


def _op_types(path: str) -> dict[str, str]:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return {out: n.op_type for n in proto.graph.node for out in [n.name, *n.output]}


def openvino_profile(request, path: str) -> dict:
    """Milliseconds per ONNX op type of the last inference, from OpenVINO's performance counters.

    A fused primitive is named after one node of the fusion; its time is charged to that node's op type."""
    ops = _op_types(path)
    totals = collections.Counter()
    for info in request.profiling_info:
        if info.status.name != "EXECUTED":
            continue
        owner = ops.get(info.node_name) or ops.get(info.node_name.split("/")[0]) or f"({info.node_type})"
        totals[owner] += info.real_time.total_seconds() * 1e3
    return dict(totals.most_common())


def onnxruntime_profile(trace: str, path: str, runs: int) -> dict:
    """Milliseconds per ONNX op type per run, from onnxruntime's JSON profile."""
    totals = collections.Counter()
    with open(trace) as f:
        for event in json.load(f):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                totals[event["args"]["op_name"]] += event["dur"] / 1e3 / (runs + 1)
    os.remove(trace)
    return dict(totals.most_common())


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,vgg16")
    p.add_argument("--rules", default="epsilon")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="per-op-type times of each explainer on both runtimes")
    p.add_argument("--cache", default=str(bench_cpu.DEFAULT_CACHE))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    base = {"batch": args.batch, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup}
    command = "python bench/bench_runtimes.py " + " ".join(a for a in (argv or sys.argv[1:]))
    print(f"`{command.strip()}` (batch {args.batch}, {args.threads} threads, median of {args.repeats})\n")
    print("| model | rule | onnxruntime forward | onnxruntime portable | ÷ forward | onnxruntime functions "
          "| ÷ forward | OpenVINO forward | OpenVINO portable | ÷ forward | OpenVINO ÷ onnxruntime |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    profiles = []
    for model in args.models.split(","):
        fwd = str(forward_model(cache, model))
        t = {rt: run_worker({**base, "path": fwd, "runtime": rt, "explainer": False})["median"]
             for rt in ("onnxruntime", "openvino")}
        for rule in args.rules.split(","):
            paths = {form: str(explainer(cache, model, rule, form)) for form in ("portable", "functions")}
            with tempfile.TemporaryDirectory() as tmp:
                prof = os.path.join(tmp, "ort") if args.profile else None
                ort_p = run_worker({**base, "path": paths["portable"], "runtime": "onnxruntime", "explainer": True,
                                    "profile": prof})
                ort_f = run_worker({**base, "path": paths["functions"], "runtime": "onnxruntime", "explainer": True})
                ov_p = run_worker({**base, "path": paths["portable"], "runtime": "openvino", "explainer": True,
                                   "profile": args.profile})
            print(f"| {model} | {rule} | {t['onnxruntime'] * 1e3:.1f} ms | {ort_p['median'] * 1e3:.1f} ms "
                  f"| {ort_p['median'] / t['onnxruntime']:.2f}× | {ort_f['median'] * 1e3:.1f} ms "
                  f"| {ort_f['median'] / t['onnxruntime']:.2f}× | {t['openvino'] * 1e3:.1f} ms "
                  f"| {ov_p['median'] * 1e3:.1f} ms | {ov_p['median'] / t['openvino']:.2f}× "
                  f"| {ov_p['median'] / ort_p['median']:.2f}× |")
            if args.profile:
                profiles.append((model, rule, ort_p["profile"], ov_p["profile"]))
    for model, rule, ort_ms, ov_ms in profiles:
        print(f"\nPer op type, {model} {rule} explainer, ms per run (onnxruntime kernels; OpenVINO primitives, "
              f"named after the first node of each fusion):\n")
        print("| op type | onnxruntime | OpenVINO |")
        print("|---|---:|---:|")
        for op in sorted(set(ort_ms) | set(ov_ms), key=lambda o: -max(ort_ms.get(o, 0), ov_ms.get(o, 0)))[:16]:
            print(f"| {op} | {ort_ms.get(op, 0):.1f} | {ov_ms.get(op, 0):.1f} |")
        print(f"| total | {sum(ort_ms.values()):.1f} | {sum(ov_ms.values()):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
