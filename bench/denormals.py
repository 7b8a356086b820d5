#!/usr/bin/env python
"""Does flushing denormals to zero speed the explainer up? ResNet-50 forward, explainer, and the same
explainer with onnxruntime's ``session.set_denormal_as_zero``, alternated in one process (medians).

    python bench/denormals.py --rule epsilon --runs 12

The model and explainer come from ``bench/bench_cpu.py``'s cache (run it once first, or pass --model).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import relgraph

CACHE = Path(__file__).resolve().parent / ".cache"


def session(path: str, denormal_as_zero: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if denormal_as_zero:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(CACHE / "resnet50-seed0-opset17.onnx"))
    p.add_argument("--rule", default="epsilon")
    p.add_argument("--runs", type=int, default=12)
    args = p.parse_args()
    explainer = relgraph.compile(args.model, rule=args.rule, output=str(CACHE / f"denormals.{args.rule}.onnx"),
                                 overwrite=True).path
    forward, plain, flushed = session(args.model, False), session(explainer, False), session(explainer, True)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feeds = {"forward": (forward, {forward.get_inputs()[0].name: x})}
    feed = {plain.get_inputs()[0].name: x, "target": np.array([-1], np.int64)}
    feeds.update(explainer=(plain, feed), denormal_as_zero=(flushed, feed))
    same = all(np.array_equal(a, b) for a, b in zip(plain.run(None, feed), flushed.run(None, feed)))
    times = {name: [] for name in feeds}
    for _ in range(args.runs):
        for name, (s, f) in feeds.items():
            start = time.perf_counter()
            s.run(None, f)
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(f"outputs identical with and without flushing: {same}")
    for name, value in ms.items():
        print(f"{name:18} {value:8.1f} ms   {value / ms['forward']:.2f}× forward")


if __name__ == "__main__":
    main()
