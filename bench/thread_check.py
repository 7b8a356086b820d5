#!/usr/bin/env python
"""Is this machine fit for multi-threaded timings? Forward-pass stability at 1 and 2 threads.

Runs the ResNet-50 forward pass (batch 1) of the benchmark's cached ONNX model for ``--seconds`` per
configuration, each in a fresh process, and prints the median time of each tenth of the window:

- onnxruntime, intra_op_num_threads=1,
- onnxruntime, intra_op_num_threads=2 (default: worker threads spin while waiting),
- onnxruntime, intra_op_num_threads=2 with ``session.intra_op.allow_spinning=0``,
- torch, set_num_threads(1) and set_num_threads(2).

On a machine whose cores are really available, 2 threads are steadily faster than 1. On an
oversubscribed virtual machine the 2-thread rows jump between a fast and a slow mode (a waiting thread
spins while the vCPU it waits for is descheduled), which makes 2-thread benchmark numbers unreliable.

    python bench/thread_check.py --seconds 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import DEFAULT_CACHE, build_torch_model, make_input, model_path, run_worker  # noqa: E402

CONFIGS = [("onnxruntime", 1, True), ("onnxruntime", 2, True), ("onnxruntime", 2, False), ("torch", 1, True),
           ("torch", 2, True)]


def measure(spec: dict) -> list[float]:
    x = make_input(1)
    if spec["runtime"] == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        if not spec["spin"]:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])

        def run():
            sess.run(None, {"input": x})
    else:
        import torch

        torch.set_num_threads(spec["threads"])
        model = build_torch_model("resnet50")
        tx = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                model(tx)
    for _ in range(3):
        run()
    times, start = [], time.time()
    while time.time() - start < spec["seconds"]:
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="measuring window per configuration (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="how many times to run every configuration (default 2)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    path = model_path(Path(args.cache_dir), "resnet50")
    if not path.exists():
        run_worker({"kind": "export", "model": "resnet50", "path": str(path)})
    print("| runtime | threads | spinning | round | median ms | median of each tenth of the window (ms) |")
    print("|---|---:|---|---:|---:|---|")
    for round_ in range(1, args.rounds + 1):
        for runtime, threads, spin in CONFIGS:
            spec = {"runtime": runtime, "threads": threads, "spin": spin, "path": str(path),
                    "seconds": args.seconds}
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                 text=True, check=True)
            times = json.loads(out.stdout.strip().splitlines()[-1])
            k = max(1, len(times) // 10)
            slices = [sorted(times[i:i + k])[len(times[i:i + k]) // 2] for i in range(0, k * 10, k) if times[i:i + k]]
            median = sorted(times)[len(times) // 2]
            spinning = ("yes" if spin else "no") if runtime == "onnxruntime" else "(OpenMP default)"
            print(f"| {runtime} | {threads} | {spinning} | {round_} | {median:.1f} | "
                  f"{' '.join(f'{v:.0f}' for v in slices)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
