#!/usr/bin/env python
"""Cost of the ε step's elementwise arithmetic in onnxruntime, against single elementwise ops.

The ε step emits s = R ⊘ stab(z) with stab(z) = z + Where(z ≥ 0, ε, −ε). Each variant below is a tiny
ONNX model on one activation-sized tensor (default [1, 256, 56, 56], a ResNet-50 layer1 output), timed
with onnxruntime on the CPU (median of ``--runs`` runs).

    python bench/stabilizer_micro.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h


def build(nodes, shape) -> bytes:
    graph = h.make_graph(
        nodes, "micro",
        [h.make_tensor_value_info("z", TensorProto.FLOAT, shape),
         h.make_tensor_value_info("R", TensorProto.FLOAT, shape)],
        [h.make_tensor_value_info("s", TensorProto.FLOAT, shape)],
        initializer=[h.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                     h.make_tensor("eps", TensorProto.FLOAT, [], [1e-6]),
                     h.make_tensor("neg_eps", TensorProto.FLOAT, [], [-1e-6])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 10
    # drop the initializers a variant does not use (onnxruntime warns about them otherwise)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model.SerializeToString()


N = h.make_node
VARIANTS = {
    "ε step as emitted: GreaterOrEqual, Where(ε, −ε), Add, Div": [
        N("GreaterOrEqual", ["z", "zero"], ["ge"]), N("Where", ["ge", "eps", "neg_eps"], ["sg"]),
        N("Add", ["z", "sg"], ["den"]), N("Div", ["R", "den"], ["s"])],
    "alternative: GreaterOrEqual, Add, Sub, Where(z+ε, z−ε), Div": [
        N("GreaterOrEqual", ["z", "zero"], ["ge"]), N("Add", ["z", "eps"], ["a"]), N("Sub", ["z", "eps"], ["b"]),
        N("Where", ["ge", "a", "b"], ["den"]), N("Div", ["R", "den"], ["s"])],
    "GreaterOrEqual + Where(ε, −ε) alone": [
        N("GreaterOrEqual", ["z", "zero"], ["ge"]), N("Where", ["ge", "eps", "neg_eps"], ["s"])],
    "GreaterOrEqual + Cast": [N("GreaterOrEqual", ["z", "zero"], ["ge"]), N("Cast", ["ge"], ["s"], to=1)],
    "Add (one pass)": [N("Add", ["z", "R"], ["s"])],
    "Mul (one pass)": [N("Mul", ["z", "R"], ["s"])],
    "Div (one pass)": [N("Div", ["z", "R"], ["s"])],
}


def main(argv=None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs="+", default=[1, 256, 56, 56])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    feeds = {"z": rng.standard_normal(args.shape, dtype=np.float32),
             "R": rng.standard_normal(args.shape, dtype=np.float32)}
    print(f"| variant ({'×'.join(map(str, args.shape))}, {args.threads} thread(s)) | median µs |")
    print("|---|---:|")
    for name, nodes in VARIANTS.items():
        sess = ort.InferenceSession(build(nodes, args.shape), options, providers=["CPUExecutionProvider"])
        for _ in range(20):
            sess.run(None, feeds)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(times) * 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
