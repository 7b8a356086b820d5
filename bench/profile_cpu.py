#!/usr/bin/env python
"""Where the time of an explainer goes: onnxruntime's profiler, summed per op type.

For one model and batch size the script profiles the original model's forward pass and each compiled
explainer with onnxruntime on the CPU (``SessionOptions.enable_profiling``), drops the warm-up runs
and reports, per run:

- time per category (forward convolutions, ConvTranspose, MatMul/Gemm, elementwise, reductions,
  ScatterElements, pooling, NCHWc layout reorders, shape ops), with FLOPs and GFLOP/s for the
  convolution-like ops,
- time per op type, split into the forward part (the nodes the logits depend on) and the relevance part,
- ConvTranspose against Conv per geometry (kernel, stride): GFLOP/s of each, so that the cost of the
  transposed convolutions can be compared with the forward ones per FLOP,
- with ``--what-if``: the explainer rewritten so that every stride-1 ConvTranspose is a Conv with
  transposed, spatially flipped weights (the same linear map), timed against the original in the
  same process (runs interleaved) and checked for equal relevance.

The explainers' model-local functions are inlined (``onnx.inliner``) and every node is given a name
before profiling, so that each profiled kernel maps back to its node; onnxruntime would inline the
functions itself, so the executed graph is the same.

    python bench/profile_cpu.py --model resnet50 --batch 1 --what-if
    python bench/profile_cpu.py --model resnet50 --threads 1 --markdown bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx.numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import (DEFAULT_CACHE, MODELS, RULES, environment, explainer_path, log, make_input,  # noqa: E402
                       model_path, run_worker)

CONV_OPS = {"Conv", "FusedConv"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Neg", "Where", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
               "Equal", "Relu", "Min", "Max", "Cast", "Sum", "Abs", "Sign", "Sqrt", "Clip", "Not", "And", "Or"}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ArgMax"}
POOLING = {"MaxPool", "AveragePool", "GlobalAveragePool"}
LAYOUT = {"ReorderInput", "ReorderOutput"}
SHAPE_OPS = {"Reshape", "Flatten", "Shape", "Size", "Expand", "ConstantOfShape", "Unsqueeze", "Squeeze",
             "Identity", "Concat", "Split", "Slice", "Pad", "Transpose"}


def category(op: str) -> str:
    if op in CONV_OPS:
        return "Conv"
    if op == "ConvTranspose":
        return "ConvTranspose"
    if op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm"):
        return "MatMul/Gemm"
    if op in ELEMENTWISE:
        return "elementwise"
    if op in REDUCTIONS:
        return "reductions"
    if op == "ScatterElements":
        return "ScatterElements"
    if op in POOLING:
        return "pooling"
    if op in LAYOUT:
        return "NCHWc reorder"
    if op in SHAPE_OPS:
        return "shape/data movement"
    return "other"


# ============================================================================================ graph


class GraphIndex:
    """Node lookup of a model prepared for profiling, and which nodes compute the forward pass."""

    def __init__(self, proto: onnx.ModelProto, logits: str):
        self.proto = proto
        self._inferred: dict | None = None
        graph = proto.graph
        self.inits = {t.name: t for t in graph.initializer}
        self.by_name = {n.name: n for n in graph.node}
        self.producer = {o: n for n in graph.node for o in n.output}
        forward, stack = set(), [logits]
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or node.name in forward:
                continue
            forward.add(node.name)
            stack.extend(i for i in node.input if i)
        self.forward = forward

    def lookup(self, profiled_name: str, op: str, in_channels: int | None = None):
        """The model node behind a profiled kernel.

        By name; onnxruntime names the NCHWc convolutions it creates after their output value, which is a
        Relu's or an Add's when it fused the activation or the residual sum into the convolution: then the
        convolution is found among the producers upstream (the one whose input channels match).
        """
        if profiled_name in self.by_name:
            return self.by_name[profiled_name]
        if profiled_name.startswith("fused ") and profiled_name[6:] in self.by_name:  # e.g. Gemm + Relu
            return self.by_name[profiled_name[6:]]
        for suffix in ("_nchwc", "_fused"):
            if profiled_name.endswith(suffix):
                node = self.producer.get(profiled_name[: -len(suffix)])
                if node is None or node.op_type == op or op not in CONV_OPS:
                    return node
                return self._upstream_conv(node, in_channels)
        return None

    def _upstream_conv(self, node, in_channels):
        candidates, frontier = [], [node]
        for _ in range(3):  # Conv → Add → Relu at most
            nxt = []
            for n in frontier:
                for name in n.input:
                    p = self.producer.get(name)
                    if p is None:
                        continue
                    (candidates if p.op_type == "Conv" else nxt).append(p)
            frontier = nxt
        for c in candidates:
            w = self.weight_shape(c)
            if w is not None and (in_channels is None or w[1] * self.attribute(c, "group", 1) == in_channels):
                return c
        return candidates[0] if candidates else node

    def weight_shape(self, node) -> list | None:
        """Shape of a node's second input: an initializer, or a value computed from one (a weight rewritten
        in the graph, e.g. flipped for a transposed convolution) whose shape ONNX shape inference knows."""
        if node is None or len(node.input) < 2 or not node.input[1]:
            return None
        name = node.input[1]
        if name in self.inits:
            return list(self.inits[name].dims)
        if self._inferred is None:
            stripped = onnx.ModelProto()
            stripped.CopyFrom(self.proto)
            for t in stripped.graph.initializer:  # weights: dims suffice; small int tensors feed Reshape etc.
                if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > 1024:
                    t.ClearField("raw_data")
                    t.ClearField("float_data")
            inferred = onnx.shape_inference.infer_shapes(stripped)
            self._inferred = {v.name: [d.dim_value if d.HasField("dim_value") else None
                                       for d in v.type.tensor_type.shape.dim]
                              for v in inferred.graph.value_info}
        shape = self._inferred.get(name)
        return shape if shape and all(d is not None for d in shape) else None

    def attribute(self, node, name, default=None):
        for a in node.attribute if node is not None else ():
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default


def prepare_for_profiling(src: Path, dst: Path) -> tuple[onnx.ModelProto, str]:
    """Inline model-local functions and name every node; returns the model and its logits output name."""
    proto = onnx.load(str(src))
    logits = next((p.value for p in proto.metadata_props if p.key == "relgraph.logits"), proto.graph.output[0].name)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    counts = collections.Counter()
    for node in proto.graph.node:
        if not node.name:
            counts[node.op_type] += 1
            node.name = f"inlined/{node.op_type}_{counts[node.op_type]}"
    onnx.save(proto, str(dst))
    return proto, logits


# ============================================================================================ profiling


def session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(sess, batch: int) -> dict:
    feeds = {"input": make_input(batch)}
    if any(i.name == "target" for i in sess.get_inputs()):
        feeds["target"] = np.full(batch, -1, np.int64)
    return feeds


def profile(path: Path, logits: str, proto: onnx.ModelProto, *, batch: int, threads: int, warmup: int, runs: int,
            scratch: Path) -> dict:
    """Run ``path`` under the profiler; per-node kernel times of the timed runs, aggregated."""
    sess = session(path, threads, str(scratch / path.stem))
    feeds = feeds_for(sess, batch)
    for _ in range(warmup + runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                        key=lambda e: e["ts"])[warmup:]
    start = model_runs[0]["ts"]
    index = GraphIndex(proto, logits)
    per_node = collections.defaultdict(lambda: {"us": 0.0, "calls": 0})
    for e in events:
        if e.get("cat") != "Node" or e["ts"] < start or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        entry = per_node[name]
        entry["us"] += e["dur"]
        entry["calls"] += 1
        entry["op"] = e["args"].get("op_name", "?")
        entry["in"] = [next(iter(s.values())) for s in e["args"].get("input_type_shape", [])]
        entry["out"] = [next(iter(s.values())) for s in e["args"].get("output_type_shape", [])]
    nodes = []
    for name, entry in per_node.items():
        op = entry["op"]
        in_channels = entry["in"][0][1] if entry["in"] and len(entry["in"][0]) > 1 else None
        node = index.lookup(name, op, in_channels)
        if op in LAYOUT:
            part = "layout"
        elif node is None:
            part = "?"
        else:
            part = "forward" if node.name in index.forward else "relevance"
        flops, geometry = conv_flops(op, node, index, entry)
        nodes.append({"name": name, "op": op, "category": category(op), "part": part,
                      "ms": entry["us"] / 1e3 / runs, "flops": flops, "geometry": geometry})
    return {"run_ms": [e["dur"] / 1e3 for e in model_runs], "nodes": nodes, "threads": threads}


def conv_flops(op: str, node, index: GraphIndex, entry: dict):
    """Multiply-adds × 2 of a Conv / ConvTranspose / MatMul / Gemm kernel, and its geometry label."""
    try:
        if op in CONV_OPS or op == "ConvTranspose":
            w = index.weight_shape(node)
            if w is None:
                return None, None
            strides = index.attribute(node, "strides", [1] * (len(w) - 2))
            group = index.attribute(node, "group", 1)
            kernel = "x".join(map(str, w[2:]))
            if op == "ConvTranspose":  # s [N, Cz, Ho, Wo] ⋆ᵀ W [Cz, Cx/g, k…]: each s element meets Cx/g·k taps
                flops = 2 * int(np.prod(entry["in"][0])) * int(np.prod(w[1:]))
            else:  # y [N, Cout, Ho, Wo] = x ⋆ W [Cout, Cin/g, k…]
                flops = 2 * int(np.prod(entry["out"][0])) * int(np.prod(w[1:]))
            label = f"{kernel} s{max(strides)}" + (f" g{group}" if group != 1 else "")
            return flops * 1.0, label
        if op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm"):
            a, b = entry["in"][0], entry["in"][1]
            k = a[-1]
            n = b[0] if op in ("Gemm", "FusedGemm") and index.attribute(node, "transB", 0) else b[-1]
            return 2.0 * int(np.prod(a[:-1])) * k * n, None
    except (IndexError, TypeError, ValueError):
        pass
    return None, None


# ============================================================================================ what-if


def convtranspose_as_conv(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace every stride-1, group-1, output_padding-0 ConvTranspose with the equivalent Conv.

    ConvTranspose(s, W, pads p, dilations d) with W [C_z, C_x, k…] is Conv(s, W', pads d·(k − 1) − p, d)
    with W' = W swapped to [C_x, C_z, k…] and flipped along every spatial axis.
    """
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inits = {t.name: t for t in proto.graph.initializer}
    replaced = 0
    for node in proto.graph.node:
        if node.op_type != "ConvTranspose" or node.input[1] not in inits:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = onnx.numpy_helper.to_array(inits[node.input[1]])
        spatial = w.ndim - 2
        strides = attrs.get("strides", [1] * spatial)
        dilations = attrs.get("dilations", [1] * spatial)
        pads = attrs.get("pads", [0] * (2 * spatial))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if any(s != 1 for s in strides) or attrs.get("group", 1) != 1 or any(attrs.get("output_padding", [])) \
                or auto_pad not in (b"NOTSET", "NOTSET"):
            continue
        new_pads = [d * (k - 1) - p for p, d, k in zip(pads, dilations * 2, list(w.shape[2:]) * 2)]
        if any(p < 0 for p in new_pads):
            continue
        flipped = np.ascontiguousarray(np.flip(np.swapaxes(w, 0, 1), axis=tuple(range(2, w.ndim))))
        name = node.input[1] + "/as_conv"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(flipped, name))
        node.op_type = "Conv"
        node.input[1] = name
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("pads", new_pads),
                               onnx.helper.make_attribute("dilations", list(dilations)),
                               onnx.helper.make_attribute("strides", [1] * spatial)])
        replaced += 1
    used = {i for n in proto.graph.node for i in n.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return proto, replaced


def what_if(original: Path, rewritten: Path, *, batch: int, threads: int, warmup: int, runs: int) -> dict:
    """Time two explainers in one process, runs interleaved; compare their relevance."""
    a, b = session(original, threads), session(rewritten, threads)
    feeds = feeds_for(a, batch)
    for _ in range(warmup):
        a.run(None, feeds)
        b.run(None, feeds)
    ta, tb = [], []
    for _ in range(runs):
        for sess, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
    ra = a.run(["relevance"], feeds)[0]
    rb = b.run(["relevance"], feeds)[0]
    return {"original_ms": statistics.median(ta) * 1e3, "rewritten_ms": statistics.median(tb) * 1e3,
            "pair_ratio": statistics.median(x / y for x, y in zip(ta, tb)),
            "rel_diff": float(np.linalg.norm(ra - rb) / max(np.linalg.norm(ra), 1e-30))}


# ============================================================================================ report


def summarize(name: str, result: dict, top: int) -> list[str]:
    nodes = result["nodes"]
    total = sum(n["ms"] for n in nodes)
    run = statistics.median(result["run_ms"])
    lines = [f"#### {name}", "",
             f"Median run {run:.1f} ms (profiled), sum of kernel times {total:.1f} ms, "
             f"{len(nodes)} kernels per run.", "",
             "| category | part | kernels | ms / run | share | GFLOP | GFLOP/s |", "|---|---|---:|---:|---:|---:|---:|"]
    groups = collections.defaultdict(list)
    for n in nodes:
        groups[(n["category"], n["part"])].append(n)
    for (cat, part), members in sorted(groups.items(), key=lambda kv: -sum(n["ms"] for n in kv[1])):
        ms = sum(n["ms"] for n in members)
        flops = [n["flops"] for n in members if n["flops"]]
        gflop = sum(flops) / 1e9 if flops else None
        rate = f"{gflop / (ms / 1e3):.0f}" if gflop else ""
        lines.append(f"| {cat} | {part} | {len(members)} | {ms:.2f} | {ms / total:.0%} | "
                     f"{'' if gflop is None else f'{gflop:.2f}'} | {rate} |")
    ops = collections.defaultdict(lambda: [0, 0.0])
    for n in nodes:
        ops[(n["op"], n["part"])][0] += 1
        ops[(n["op"], n["part"])][1] += n["ms"]
    lines += ["", "| op type | part | kernels | ms / run | share |", "|---|---|---:|---:|---:|"]
    for (op, part), (count, ms) in sorted(ops.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"| {op} | {part} | {count} | {ms:.2f} | {ms / total:.0%} |")
    return lines + [""]


def geometry_table(result: dict) -> list[str]:
    """GFLOP/s of Conv and ConvTranspose per (kernel, stride) in one profiled configuration."""
    rows = collections.defaultdict(lambda: {"Conv": [0.0, 0.0, 0], "ConvTranspose": [0.0, 0.0, 0]})
    for n in result["nodes"]:
        if n["geometry"] and n["flops"] and n["category"] in ("Conv", "ConvTranspose"):
            cell = rows[n["geometry"]][n["category"]]
            cell[0] += n["flops"]
            cell[1] += n["ms"]
            cell[2] += 1
    lines = ["| geometry | Conv kernels | Conv ms / run | Conv GFLOP/s | ConvTranspose kernels | "
             "ConvTranspose ms / run | ConvTranspose GFLOP/s | Conv / ConvTranspose GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def rate(cell):
        return cell[0] / (cell[1] / 1e3) / 1e9 if cell[1] else None

    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    totals = {"Conv": [0.0, 0.0, 0], "ConvTranspose": [0.0, 0.0, 0]}
    for geom, cells in sorted(rows.items()) + [("**all**", totals)]:
        conv, tr = cells["Conv"], cells["ConvTranspose"]
        if geom != "**all**":
            for key in totals:
                totals[key] = [a + b for a, b in zip(totals[key], cells[key])]
        rc, rt = rate(conv), rate(tr)
        ratio = f"{rc / rt:.2f}" if rc and rt else ""
        lines.append(f"| {geom} | {conv[2]} | {fmt(conv[1] or None, '.2f')} | {fmt(rc, '.0f')} | {tr[2]} | "
                     f"{fmt(tr[1] or None, '.2f')} | {fmt(rt, '.0f')} | {ratio} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", choices=list(MODELS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rules", nargs="+", default=list(RULES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10, help="profiled runs (default 10)")
    p.add_argument("--top", type=int, default=15, help="op types listed per configuration (default 15)")
    p.add_argument("--what-if", action="store_true",
                   help="also time each explainer with its stride-1 ConvTranspose nodes emitted as Conv")
    p.add_argument("--what-if-runs", type=int, default=15)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument("--markdown", metavar="FILE", help="append the report to FILE")
    args = p.parse_args(argv)

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    source = model_path(cache, args.model)
    if not source.exists():
        log(f"exporting {args.model}")
        run_worker({"kind": "export", "model": args.model, "path": str(source)})
    targets = {"forward (original model)": source}
    for rule in args.rules:
        path = explainer_path(cache, args.model, rule)
        if not path.exists():
            log(f"compiling {rule}")
            run_worker({"kind": "compile", "model_path": str(source), "rule": rule, "path": str(path)})
        targets[f"explainer {rule}"] = path

    env = environment(args.threads)
    lines = [f"### Profile: {args.model}, batch {args.batch}, {args.threads} thread(s) ({env['date']})", "",
             f"onnxruntime {env['versions']['onnxruntime']} profiler, {args.runs} runs after {args.warmup} warm-up "
             f"runs, intra_op_num_threads={args.threads}, {env['cpu']}. Command: `python bench/profile_cpu.py "
             f"--model {args.model} --batch {args.batch} --threads {args.threads} --rules {' '.join(args.rules)}"
             f"{' --what-if' if args.what_if else ''}`", ""]
    results = {}
    with tempfile.TemporaryDirectory(prefix="relgraph-profile-") as tmp:
        scratch = Path(tmp)
        for label, path in targets.items():
            log(f"profiling {label}")
            prepared = scratch / (path.stem + ".profiled.onnx")
            proto, logits = prepare_for_profiling(path, prepared)
            results[label] = profile(prepared, logits, proto, batch=args.batch, threads=args.threads,
                                     warmup=args.warmup, runs=args.runs, scratch=scratch)
            lines += summarize(label, results[label], args.top)
            if any(n["category"] == "ConvTranspose" for n in results[label]["nodes"]):
                lines += ["Conv against ConvTranspose per geometry (FLOPs = 2 × multiply-adds, the same for a "
                          "convolution and its transpose; Conv counts forward and z⁺ convolutions):", ""]
                lines += geometry_table(results[label]) + [""]
        if args.what_if:
            lines += ["#### What if stride-1 ConvTranspose were emitted as Conv", "",
                      "The explainer rewritten outside relgraph (stride-1, group-1 ConvTranspose → Conv with "
                      "swapped, flipped weights and pads d·(k−1)−p); both timed in one process, runs interleaved, "
                      f"{args.what_if_runs} pairs.", "",
                      "| explainer | ConvTranspose replaced | original ms | rewritten ms | "
                      "speed-up (median of pairs) | relevance rel. diff |", "|---|---:|---:|---:|---:|---:|"]
            for rule in args.rules:
                prepared = scratch / "whatif-original.onnx"
                proto, _ = prepare_for_profiling(explainer_path(cache, args.model, rule), prepared)
                rewritten, replaced = convtranspose_as_conv(proto)
                total = sum(1 for n in proto.graph.node if n.op_type == "ConvTranspose")
                out = scratch / "whatif-rewritten.onnx"
                onnx.save(rewritten, str(out))
                log(f"what-if {rule}: {replaced} of {total} ConvTranspose nodes replaced")
                r = what_if(prepared, out, batch=args.batch, threads=args.threads, warmup=args.warmup,
                            runs=args.what_if_runs)
                lines.append(f"| {rule} | {replaced} / {total} | {r['original_ms']:.1f} | {r['rewritten_ms']:.1f} | "
                             f"{r['pair_ratio']:.2f}x | {r['rel_diff']:.1e} |")
            lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
