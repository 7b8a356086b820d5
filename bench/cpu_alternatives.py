#!/usr/bin/env python
"""Standard-op alternatives for the explainer's slow parts on onnxruntime's CPU provider, measured.

The ResNet-50 profile (``bench/profile_cpu.py``) leaves the ε explainer at ~2.8× the forward pass: the
convolutions alone cost ~2.1×, the rest is strided transposes, max pooling's route, the stabilizers' sign
tests and elementwise passes with their NCHWc reorders. Each section below times one rewrite that stays in
plain ONNX against what the explainer emits, on ResNet-50's shapes (batch 1, one thread, medians of
alternated runs, outputs checked equal):

1. ``transpose``: the strided transposed convolutions (7×7/2 stem, 3×3/2, 1×1/2) as ``ConvTranspose``
   against a polyphase form (one stride-1 Conv per output phase, Concat, DepthToSpace) and, for 1×1, a
   stride-1 Conv followed by a zero-inserting depthwise ``ConvTranspose``.
2. ``maxpool``: the stem's route: ``MaxPool`` with indices + ``ScatterElements`` against an index-free route
   in standard ops (``index_free_route``; equal outputs, ties included), with the plain ``MaxPool`` as the
   floor.
3. ``pointwise``: a 1×1 stride-1 transpose as a flipped ``Conv`` (NCHWc) against ``Reshape → MatMul``.
4. ``stabilizer``: the whole ResNet-50 ε explainer as compiled for onnxruntime, where a residual sum hands
   the ε layers feeding it their share q unmultiplied and R ⊘ stab(z) = q ⊘ ((|z| + ε)/|z|) needs no sign
   test, against the graph the triton target lowers (``relgraph.EpsilonSum`` and stab(z) with
   ``GreaterOrEqual`` + ``Where``, which its kernels fuse).

    python bench/cpu_alternatives.py                    # all sections
    python bench/cpu_alternatives.py --only maxpool --runs 50
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as h
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import DEFAULT_CACHE, environment, model_path  # noqa: E402

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------- harness


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def graph_model(nodes, inputs: dict, initializers: dict) -> onnx.ModelProto:
    """One-output model: ``inputs`` name → shape (float32), ``initializers`` name → array; output ``y``."""
    graph = h.make_graph(
        nodes, "alternative",
        [h.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def race(variants: dict, feeds: dict, runs: int, same_output: bool = True) -> dict:
    """name → median ms, runs alternated; with ``same_output``, every variant's output must equal the
    first variant's."""
    sessions = {name: session(m) for name, m in variants.items()}
    outputs = {name: s.run(None, feeds)[0] for name, s in sessions.items()}
    reference = next(iter(outputs.values()))
    for name, out in outputs.items() if same_output else ():
        scale = float(np.abs(reference).max()) or 1.0
        assert out.shape == reference.shape and float(np.abs(out - reference).max()) <= 1e-4 * scale, name
    times = collections.defaultdict(list)
    for _ in range(runs):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


# -------------------------------------------------------------------------------------------- transpose


def _phases(w: np.ndarray, stride: int, pad: int, out_side: int, in_side: int):
    """Per output phase (ry, rx): the taps of ``w`` that land on it, as a stride-1 correlation kernel over
    offsets into the upstream map, and that conv's pads. Phase r of output row y = S·m + r gathers
    s[m + (r + p − k)/S]·w[k] for the taps k ≡ r + p (mod S)."""
    k = w.shape[-1]
    m = -(-in_side // stride)
    for ry in range(stride):
        for rx in range(stride):
            ky = sorted((k_ for k_ in range(k) if (ry + pad - k_) % stride == 0), key=lambda k_: -k_)
            kx = sorted((k_ for k_ in range(k) if (rx + pad - k_) % stride == 0), key=lambda k_: -k_)
            begin_y, begin_x = -((ry + pad - ky[0]) // stride), -((rx + pad - kx[0]) // stride)
            pads = [begin_y, begin_x, m - out_side - begin_y + len(ky) - 1, m - out_side - begin_x + len(kx) - 1]
            kernel = np.ascontiguousarray(w[:, :, ky][:, :, :, kx].transpose(1, 0, 2, 3))
            yield f"{ry}{rx}", kernel, pads


def transpose_variants(cin: int, cout: int, kernel: int, stride: int, pad: int, in_side: int):
    """ConvTranspose of s [1, cout, o, o] back to [1, cin, in_side, in_side], and its rewrites."""
    w = (RNG.standard_normal((cout, cin, kernel, kernel)) * 0.05).astype(np.float32)
    out_side = (in_side + 2 * pad - kernel) // stride + 1
    extra = in_side - ((out_side - 1) * stride - 2 * pad + kernel)
    variants = {"ConvTranspose": graph_model(
        [h.make_node("ConvTranspose", ["s", "W"], ["y"], strides=[stride] * 2, pads=[pad] * 4,
                     output_padding=[extra] * 2)], {"s": [1, cout, out_side, out_side]}, {"W": w})}
    if kernel >= stride:  # every output phase has taps (a 1×1/2 kernel leaves three phases at zero)
        variants["polyphase Conv + DepthToSpace"] = _polyphase(w, stride, pad, out_side, in_side)
    if kernel == 1 and pad == 0:
        variants["1×1 Conv + zero-insert"] = graph_model(
            [h.make_node("Conv", ["s", "Wt"], ["c"]),
             h.make_node("ConvTranspose", ["c", "ones"], ["y"], strides=[stride] * 2, group=cin,
                         output_padding=[extra] * 2)],
            {"s": [1, cout, out_side, out_side]},
            {"Wt": np.ascontiguousarray(w.transpose(1, 0, 2, 3)), "ones": np.ones((cin, 1, 1, 1), np.float32)})
    feeds = {"s": RNG.standard_normal((1, cout, out_side, out_side)).astype(np.float32)}
    return variants, feeds


def _polyphase(w: np.ndarray, stride: int, pad: int, out_side: int, in_side: int) -> onnx.ModelProto:
    nodes, inits, names = [], {}, []
    for phase, k, pads in _phases(w, stride, pad, out_side, in_side):
        inits["W" + phase] = k
        nodes.append(h.make_node("Conv", ["s", "W" + phase], ["p" + phase], pads=pads))
        names.append("p" + phase)
    inits.update(starts=np.array([0, 0], np.int64), ends=np.array([in_side] * 2, np.int64),
                 axes=np.array([2, 3], np.int64))
    nodes += [h.make_node("Concat", names, ["phases"], axis=1),
              h.make_node("DepthToSpace", ["phases"], ["full"], blocksize=stride, mode="DCR"),
              h.make_node("Slice", ["full", "starts", "ends", "axes"], ["y"])]
    return graph_model(nodes, {"s": [1, w.shape[0], out_side, out_side]}, inits)


TRANSPOSES = [  # ResNet-50's strided layers, as (C_in, C_out, k, stride, pad, input side) of the forward conv
    (3, 64, 7, 2, 3, 224), (128, 128, 3, 2, 1, 56), (256, 256, 3, 2, 1, 28), (512, 512, 3, 2, 1, 14),
    (256, 512, 1, 2, 0, 56), (512, 1024, 1, 2, 0, 28), (1024, 2048, 1, 2, 0, 14),
]


def section_transpose(runs: int) -> list[str]:
    rows = ["| forward conv | ConvTranspose ms | polyphase ms | 1×1 Conv + zero-insert ms |", "|---|---:|---:|---:|"]
    for geometry in TRANSPOSES:
        variants, feeds = transpose_variants(*geometry)
        ms = race(variants, feeds, runs)
        cin, cout, k, s, p, side = geometry
        cells = [ms.get(v) for v in ("ConvTranspose", "polyphase Conv + DepthToSpace", "1×1 Conv + zero-insert")]
        rows.append(f"| {cin}→{cout} {k}×{k}/{s} at {side}² | "
                    + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")
    return rows


# ---------------------------------------------------------------------------------------------- maxpool


def index_free_route(channels: int, side: int, k: int, s: int, p: int):
    """Max pooling's route (first maximum wins, as onnxruntime's indices) without indices: the padded input
    split into its s×s phases (SpaceToDepth), each of the k² window taps a block-shifted slice of one phase,
    the winner found by cumulative equality masks against the pooled maxima, the routed R padded back to its
    block and the phases interleaved (DepthToSpace). Returns (nodes, initializers, output side)."""
    out = (side + 2 * p - k) // s + 1
    spread = -(-k // s)
    blocks = out + spread
    inits = {"pads_x": np.array([0, 0, p, p, 0, 0, blocks * s - side - p, blocks * s - side - p], np.int64),
             "minus_inf": np.array(-np.inf, np.float32), "zero": np.array(0, np.float32),
             "axes": np.array([2, 3], np.int64), "split": np.array([channels] * s * s, np.int64),
             "crop_start": np.array([p, p], np.int64), "crop_end": np.array([p + side] * 2, np.int64)}
    phases = [f"phase{ry}{rx}" for ry in range(s) for rx in range(s)]
    nodes = [h.make_node("Pad", ["x", "pads_x", "minus_inf"], ["padded"]),
             h.make_node("MaxPool", ["x"], ["maxima"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4),
             h.make_node("SpaceToDepth", ["padded"], ["stacked"], blocksize=s),
             h.make_node("Split", ["stacked", "split"], phases, axis=1)]
    found, placed = None, {}
    for dy in range(k):
        for dx in range(k):
            tap, (by, bx) = f"{dy}{dx}", (dy // s, dx // s)
            inits[f"start{tap}"] = np.array([by, bx], np.int64)
            inits[f"end{tap}"] = np.array([by + out, bx + out], np.int64)
            inits[f"back{tap}"] = np.array([0, 0, by, bx, 0, 0, blocks - out - by, blocks - out - bx], np.int64)
            phase = f"phase{dy % s}{dx % s}"
            nodes += [h.make_node("Slice", [phase, f"start{tap}", f"end{tap}", "axes"], [f"tap{tap}"]),
                      h.make_node("Equal", [f"tap{tap}", "maxima"], [f"hit{tap}"])]
            win = f"hit{tap}"
            if found is not None:
                nodes += [h.make_node("Not", [found], [f"free{tap}"]),
                          h.make_node("And", [f"hit{tap}", f"free{tap}"], [f"win{tap}"]),
                          h.make_node("Or", [found, f"hit{tap}"], [f"found{tap}"])]
                win = f"win{tap}"
            found = f"found{tap}" if found is not None else win
            nodes += [h.make_node("Where", [win, "r", "zero"], [f"routed{tap}"]),
                      h.make_node("Pad", [f"routed{tap}", f"back{tap}"], [f"placed{tap}"])]
            placed.setdefault(phase, []).append(f"placed{tap}")
    for phase in phases:
        total = placed[phase][0]
        for k_, term in enumerate(placed[phase][1:]):
            nodes.append(h.make_node("Add", [total, term], [f"{phase}_sum{k_}"]))
            total = f"{phase}_sum{k_}"
        placed[phase] = total
    nodes += [h.make_node("Concat", [placed[ph] for ph in phases], ["phases"], axis=1),
              h.make_node("DepthToSpace", ["phases"], ["full"], blocksize=s, mode="DCR"),
              h.make_node("Slice", ["full", "crop_start", "crop_end", "axes"], ["y"])]
    return nodes, inits, out


def section_maxpool(runs: int) -> list[str]:
    channels, side, k, s, p = 64, 112, 3, 2, 1
    nodes, inits, out = index_free_route(channels, side, k, s, p)
    x = np.maximum(RNG.standard_normal((1, channels, side, side)), 0).astype(np.float32)
    x[:, :, 10:20, 10:20] = 0.5  # a plateau: ties, where the first maximum must win
    inputs = {"x": x.shape, "r": [1, channels, out, out]}
    with_indices = graph_model(
        [h.make_node("MaxPool", ["x"], ["pooled", "indices"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4),
         h.make_node("Reshape", ["indices", "flat"], ["i"]), h.make_node("Reshape", ["r", "flat"], ["flat_r"]),
         h.make_node("ScatterElements", ["zeros", "i", "flat_r"], ["routed"], axis=0, reduction="add"),
         h.make_node("Reshape", ["routed", "shape"], ["y"])], inputs,
        {"flat": np.array([-1], np.int64), "zeros": np.zeros(channels * side * side, np.float32),
         "shape": np.array([1, channels, side, side], np.int64)})
    plain = graph_model([h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)],
                        {"x": x.shape}, {})
    feeds = {"x": x, "r": RNG.standard_normal((1, channels, out, out)).astype(np.float32)}
    ms = race({"MaxPool with indices + ScatterElements (the explainer's route)": with_indices,
               "index-free: phases, first-max masks, DepthToSpace": graph_model(nodes, inputs, inits)}, feeds, runs)
    ms.update(race({"plain MaxPool (the forward pass; floor)": plain}, {"x": x}, runs))
    return ["| stem max pooling's route, 64×112² → 56² | ms |", "|---|---:|"] + \
        [f"| {name} | {v:.2f} |" for name, v in ms.items()]


# -------------------------------------------------------------------------------------------- pointwise


def section_pointwise(runs: int) -> list[str]:
    rows = ["| 1×1 transpose (C_out → C_in at side²) | flipped Conv (NCHWc) ms | Reshape → MatMul ms |",
            "|---|---:|---:|"]
    for cin, cout, side in ((64, 256, 56), (256, 64, 56), (512, 128, 28), (256, 1024, 14), (2048, 512, 7)):
        w = (RNG.standard_normal((cout, cin, 1, 1)) * 0.05).astype(np.float32)
        wt = np.ascontiguousarray(w.transpose(1, 0, 2, 3))
        conv = graph_model([h.make_node("Conv", ["s", "Wt"], ["y"])], {"s": [1, cout, side, side]}, {"Wt": wt})
        matmul = graph_model(
            [h.make_node("Reshape", ["s", "rows"], ["r"]), h.make_node("MatMul", ["Wm", "r"], ["m"]),
             h.make_node("Reshape", ["m", "back"], ["y"])], {"s": [1, cout, side, side]},
            {"rows": np.array([0, cout, -1], np.int64), "Wm": wt[:, :, 0, 0],
             "back": np.array([0, cin, side, side], np.int64)})
        ms = race({"conv": conv, "matmul": matmul},
                  {"s": RNG.standard_normal((1, cout, side, side)).astype(np.float32)}, runs)
        rows.append(f"| {cout}→{cin} at {side}² | {ms['conv']:.2f} | {ms['matmul']:.2f} |")
    return rows


# ------------------------------------------------------------------------------------------- stabilizer


def section_stabilizer(runs: int, cache: Path) -> list[str]:
    import relgraph

    forward = model_path(cache, "resnet50")
    if not forward.exists():
        raise SystemExit(f"{forward} is missing: run bench/bench_cpu.py once (it exports the models)")
    x = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"forward": str(forward)}
        for label, target in (("ε explainer, residual shares (onnx target)", "onnx"),
                              ("ε explainer, EpsilonSum + sign test (triton target's graph)", "triton")):
            paths[label] = relgraph.compile(str(forward), rule="epsilon", output=f"{tmp}/{target}.onnx",
                                            target=target).path
        sessions = {name: session(path) for name, path in paths.items()}
        feeds = {name: {s.get_inputs()[0].name: x} | ({} if name == "forward" else {"target": np.array([-1], np.int64)})
                 for name, s in sessions.items()}
        a, b = (sessions[n].run(["relevance"], feeds[n])[0] for n in list(paths)[1:])
        times = collections.defaultdict(list)
        for _ in range(runs):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feeds[name])
                times[name].append(time.perf_counter() - start)
    ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    rows = [f"ResNet-50 ε, batch 1; the two relevances agree to {float(np.abs(a - b).max() / np.abs(a).max()):.1e}.",
            "", "| graph | ms | × forward |", "|---|---:|---:|"]
    return rows + [f"| {n} | {v:.1f} | {v / ms['forward']:.2f} |" for n, v in ms.items()]


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("transpose", "maxpool", "pointwise", "stabilizer"), nargs="+")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    env = environment(1)
    print(f"onnxruntime {env['versions']['onnxruntime']}, 1 thread, {env['cpu']}, {env['date']}; "
          f"medians of {args.runs} alternated runs\n")
    sections = {"transpose": lambda: section_transpose(args.runs), "maxpool": lambda: section_maxpool(args.runs),
                "pointwise": lambda: section_pointwise(args.runs),
                "stabilizer": lambda: section_stabilizer(max(args.runs // 2, 8), args.cache)}
    for name in args.only or sections:
        print(f"### {name}\n")
        print("\n".join(sections[name]()), "\n", flush=True)


if __name__ == "__main__":
    main()
