#!/usr/bin/env python
"""Roofline of the forward and ε-relevance passes: fused Triton kernels against the unfused ONNX op sequence.

For every canonical layer (convolutions with BatchNorm folded, ReLU, pools, residual adds, the classifier)
the script counts the FLOPs and the HBM bytes of each kernel launch, in two schedules:

- **unfused**: the op sequence the ONNX explainer runs, one kernel per op, each reading its inputs from and
  writing its outputs to HBM. For a convolution followed by a ReLU (R_z = 0 wherever z ≤ 0):
  forward ``Conv → Relu``; relevance ``den = y + ε → s = R ⊘ den → ConvTranspose(s, W) → R_x = x ⊙ ·`` and the
  bias share ``⟨b, Σ_pq s⟩``. Where no ReLU follows, stab(z) = z + ε·(z ≥ 0 ? 1 : −1) is three ops
  (``GreaterOrEqual``, ``Where``, ``Add``), as ``relgraph/graph.py`` emits it.
- **fused**: the kernels of ``relgraph/kernels/``: the forward GEMM / implicit-GEMM convolution with bias and ReLU in its
  epilogue (it writes y only: the ε step divides by y + ε, mode ``shift``, or by stab(z) where no ReLU follows,
  mode ``stab``), and one ε kernel that reads R, den, W and x and writes R_x (plus s for the bias share, as
  ``want_s``). Max pooling's relevance is ``maxpool2d_back`` (reads x and R, writes R_x: no indices), its
  forward a values-only max pool; a residual add's relevance is ``epsilon_sum`` (reads a, b, R, den, writes
  R_a, R_b), its forward the Add and ReLU the plan runs as torch ops. Global average pooling has no kernel
  in ``relgraph/kernels/``: it is counted as one single-pass elementwise kernel per pass, marked † in the tables.

Traffic is the compulsory traffic: every tensor a kernel touches is read or written once (perfect reuse of
tiles in L2/shared memory, the same assumption in both columns). Each kernel's time is
max(FLOPs / peak, bytes / bandwidth); a layer's time is the sum of its kernels' (launch overhead is not
counted, which flatters the unfused schedule: it launches several times as many kernels).

    python bench/roofline.py                      # writes bench/ROOFLINE.md
    python bench/roofline.py --batch 64 --output bench/ROOFLINE.md --onnx resnet50.onnx
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# H100 SXM ceilings. Bandwidth: ~3.0 TB/s of HBM3 is what large copies reach (3.35 TB/s on paper).
# Compute: about 80 % of the dense peaks on paper, what large GEMMs reach: bf16 989 → 790 TFLOP/s; fp32
# operands through the tensor cores as TF32 (tl.dot's input_precision="tf32") 494.7 → 395; fp32 with
# input_precision="ieee" (the kernels' default: it matches float64 closely) runs on the FMA units,
# 67 → 54 TFLOP/s.
HBM_BYTES_PER_S = 3.0e12
PRECISIONS = {  # name → (bytes per stored element, matmul FLOP/s)
    "fp32 tf32": (4, 395e12),
    "fp32 ieee": (4, 54e12),
    "bf16": (2, 790e12),
}
PEAK_FLOPS = {name: peak for name, (_, peak) in PRECISIONS.items()}
ITEMSIZE = {name: size for name, (size, _) in PRECISIONS.items()}
TABLED = ("fp32 tf32", "bf16")  # per-layer tables for these; totals for all
BYTES_OF_KIND = {"bool": 1, "index": 8}  # other accesses are values of the pass's dtype
SCHEDULES = ("unfused", "fused")


@dataclass(frozen=True)
class Kernel:
    """One kernel launch: its FLOPs (matrix products, 2 per multiply-add) and the tensors it reads and
    writes, as (elements, kind) with kind "value" (the pass's dtype), "bool" or "index" (int64)."""

    name: str
    reads: tuple = ()
    writes: tuple = ()
    flops: int = 0

    def bytes(self, dtype: str) -> int:
        def size(access):
            n, kind = access if isinstance(access, tuple) else (access, "value")
            return n * BYTES_OF_KIND.get(kind, ITEMSIZE[dtype])

        return sum(map(size, self.reads)) + sum(map(size, self.writes))

    def seconds(self, dtype: str) -> float:
        return max(self.flops / PEAK_FLOPS[dtype], self.bytes(dtype) / HBM_BYTES_PER_S)


@dataclass
class Layer:
    """One canonical layer and its kernels per pass ("forward", "relevance") and schedule."""

    name: str
    op: str
    shape: str
    kernels: dict = field(default_factory=dict)  # (pass, schedule) -> list[Kernel]
    no_kernel: bool = False  # no kernel in relgraph/kernels/ yet: "fused" is a single-pass estimate

    def flops(self, pass_: str, schedule: str) -> int:
        return sum(k.flops for k in self.kernels[pass_, schedule])

    def bytes(self, pass_: str, schedule: str, dtype: str) -> int:
        return sum(k.bytes(dtype) for k in self.kernels[pass_, schedule])

    def seconds(self, pass_: str, schedule: str, dtype: str) -> float:
        return sum(k.seconds(dtype) for k in self.kernels[pass_, schedule])


# ------------------------------------------------------------------------------------------- cost models


def stabilizer_ops(n: int, rectified: bool) -> list[Kernel]:
    """den for n outputs: y + ε after a ReLU (one op), else z + Where(z ≥ 0, ε, −ε) (three ops)."""
    if rectified:
        return [Kernel("Add(y, ε)", (n,), (n,))]
    return [Kernel("GreaterOrEqual(z, 0)", (n,), ((n, "bool"),)),
            Kernel("Where(·, ε, −ε)", ((n, "bool"),), (n,)),
            Kernel("Add(z, ·)", (n, n), (n,))]


def affine_layer(name, op, shape, *, x: int, w: int, bias: int, y: int, macs: int, batch: int,
                 rectified: bool) -> Layer:
    """A Conv or Gemm with bias (z = x ⋆ W + b), followed by a ReLU when ``rectified``.

    Forward: z costs 2·macs FLOPs. Relevance (ε): R_x = x ⊙ ((R ⊘ den) ⋆ᵀ W), another 2·macs FLOPs, and the
    bias share ⟨b, s⟩ per sample (for a Conv a reduction of s over space to [N, K], then [N, K]·b).
    """
    flops = 2 * macs
    channels = bias
    if op == "Conv":
        bias_share = [Kernel("ReduceSum(s) over space", (y,), (batch * channels,)),
                      Kernel("MatMul(Σs, b)", (batch * channels, channels), (batch,), 2 * batch * channels)]
    else:
        bias_share = [Kernel("MatMul(s, b)", (y, channels), (batch,), 2 * y)]
    forward_unfused = [Kernel(f"{op}(x, W, b)", (x, w, bias), (y,), flops)]
    if rectified:
        forward_unfused.append(Kernel("Relu", (y,), (y,)))
    relevance_unfused = stabilizer_ops(y, rectified) + [
        Kernel("Div(R, den)", (y, y), (y,)),
        Kernel(f"{'ConvTranspose' if op == 'Conv' else 'MatMul'}(s, W)", (y, w), (x,), flops),
        Kernel("Mul(x, ·)", (x, x), (x,)),
    ] + bias_share
    relevance_fused = [Kernel(f"epsilon_{'conv2d' if op == 'Conv' else 'linear'}"
                              f"(mode={'shift' if rectified else 'stab'}, want_s)", (y, y, w, x), (x, y), flops)
                       ] + bias_share
    forward_fused = [Kernel(f"{'conv2d' if op == 'Conv' else 'linear'}(relu={rectified})", (x, w, bias), (y,),
                            flops)]
    return Layer(name, op + ("+Relu" if rectified else ""), shape, {
        ("forward", "unfused"): forward_unfused, ("forward", "fused"): forward_fused,
        ("relevance", "unfused"): relevance_unfused, ("relevance", "fused"): relevance_fused})


def residual_add_layer(name, shape, y: int, rectified: bool) -> Layer:
    """s = a + b (then ReLU). ε (zennit's Norm): R_a = a ⊙ R ⊘ den, R_b = b ⊙ R ⊘ den. The forward stays
    the plan's torch ops in both schedules; the fused split is ``epsilon_sum``, its stabilizer inside."""
    forward = [Kernel("Add(a, b)", (y, y), (y,))] + ([Kernel("Relu", (y,), (y,))] if rectified else [])
    relevance_unfused = stabilizer_ops(y, rectified) + [
        Kernel("Div(R, den)", (y, y), (y,)), Kernel("Mul(a, s)", (y, y), (y,)), Kernel("Mul(b, s)", (y, y), (y,))]
    return Layer(name, "Add" + ("+Relu" if rectified else ""), shape, {
        ("forward", "unfused"): forward,
        ("forward", "fused"): list(forward),
        ("relevance", "unfused"): relevance_unfused,
        ("relevance", "fused"): [Kernel(f"epsilon_sum(mode={'shift' if rectified else 'stab'})", (y, y, y, y),
                                        (y, y))]})


def maxpool_layer(name, shape, x: int, y: int) -> Layer:
    """Winner takes all. The ONNX explainer pools once for the values, and ``relgraph.MaxPoolRoute`` pools
    again for the int64 indices and scatter-adds R over them (ScatterElements copies its zero-filled data
    input first). Fused: a values-only pool, and ``maxpool2d_back`` re-finds each window's winner from x."""
    return Layer(name, "MaxPool", shape, {
        ("forward", "unfused"): [Kernel("MaxPool", (x,), (y,))],
        ("forward", "fused"): [Kernel("max_pool2d (values only)", (x,), (y,))],
        ("relevance", "unfused"): [Kernel("MaxPool (values, indices)", (x,), (y, (y, "index"))),
                                   Kernel("ConstantOfShape", (), (x,)),
                                   Kernel("ScatterElements(add)", (x, (y, "index"), y), (x,))],
        ("relevance", "fused"): [Kernel("maxpool2d_back", (x, y), (x,))]})


def global_pool_layer(name, shape, x: int, y: int) -> Layer:
    """Mean over space. ε: R_x = x ⊙ Aᵀ(R ⊘ stab(Ax)), Aᵀ spreads each channel's share over its pixels."""
    return Layer(name, "GlobalAveragePool", shape, {
        ("forward", "unfused"): [Kernel("GlobalAveragePool", (x,), (y,))],
        ("forward", "fused"): [Kernel("mean", (x,), (y,))],
        ("relevance", "unfused"): stabilizer_ops(y, False) + [
            Kernel("Div(R, den)", (y, y), (y,)), Kernel("Mul(s, 1/HW)", (y,), (y,)),
            Kernel("Expand", (y,), (x,)), Kernel("Mul(x, ·)", (x, x), (x,))],
        ("relevance", "fused"): [Kernel("norm spread", (x, y, y), (x,))]}, no_kernel=True)


def relevance_sum_layer(name, shape, n: int, terms: int) -> Layer:
    """A value read by several layers gets the sum of their relevances (terms − 1 Adds in both schedules:
    the kernels have no accumulating epilogue)."""
    adds = [Kernel("Add(R₁, R₂)", (n, n), (n,)) for _ in range(terms - 1)]
    return Layer(name, "ΣR", shape, {("forward", "unfused"): [], ("forward", "fused"): [],
                                      ("relevance", "unfused"): adds, ("relevance", "fused"): list(adds)})


# ------------------------------------------------------------------------------------------- models


def export_resnet50(path: Path) -> None:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def numel(value, batch: int) -> int:
    return math.prod(d if isinstance(d, int) else batch for d in value.shape)


def dims(value, batch: int) -> list[int]:
    return [d if isinstance(d, int) else batch for d in value.shape]


def layers_of(onnx_path, batch: int) -> list[Layer]:
    """The canonical layers of an ONNX model (after relgraph's canonicalization: BatchNorm folded into its
    convolution), each ReLU merged into the layer that produces its input."""
    sys.path.insert(0, str(REPO_ROOT))
    from relgraph.frontend import prepare
    from relgraph.graph import const_array

    model, _ = prepare(str(onnx_path))
    graph = model.graph
    consumers: dict[int, list] = {}
    for node in graph:
        for v in node.inputs:
            if v is not None and const_array(v) is None:
                consumers.setdefault(id(v), []).append(node)

    def relu_after(node):
        users = consumers.get(id(node.outputs[0]), [])
        return users[0] if len(users) == 1 and users[0].op_type == "Relu" else None

    layers, merged = [], set()
    for node in graph:
        if id(node) in merged:
            continue
        out = node.outputs[0]
        relu = relu_after(node) if node.op_type in ("Conv", "Gemm", "Add") else None
        if relu is not None:
            merged.add(id(relu))
            out = relu.outputs[0]
        shape = "×".join(map(str, dims(out, batch)))
        x, y = node.inputs[0], node.outputs[0]
        if node.op_type in ("Conv", "Gemm"):
            w = const_array(node.inputs[1])
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            if bias is None:
                raise ValueError(f"{node.name}: the cost model expects a bias (BatchNorm folded or a Gemm bias)")
            per_output = w.size // w.shape[0]  # C/g·R·S taps (Conv, any groups) or the inputs (Gemm)
            layers.append(affine_layer(node.name, node.op_type, shape, x=numel(x, batch), w=w.size,
                                       bias=w.shape[0], y=numel(y, batch), macs=numel(y, batch) * per_output,
                                       batch=batch, rectified=relu is not None))
        elif node.op_type == "Add":
            layers.append(residual_add_layer(node.name, shape, numel(y, batch), relu is not None))
        elif node.op_type == "MaxPool":
            layers.append(maxpool_layer(node.name, shape, numel(x, batch), numel(y, batch)))
        elif node.op_type == "GlobalAveragePool":
            layers.append(global_pool_layer(node.name, shape, numel(x, batch), numel(y, batch)))
        elif node.op_type in ("Flatten", "Reshape"):
            continue  # a view: no traffic, relevance moves unchanged
        else:
            raise ValueError(f"no cost model for {node.op_type} ({node.name})")
        for v in node.inputs:  # relevance arriving from several readers is summed
            users = consumers.get(id(v), [])
            if len(users) > 1 and users[-1] is node and v.producer() is not None:
                layers.append(relevance_sum_layer(f"ΣR at {v.name}", "×".join(map(str, dims(v, batch))),
                                                  numel(v, batch), len(users)))
    return layers


def linear_layers(batch: int, features: int) -> list[Layer]:
    """One batch × features → features linear layer, alone (den = stab(z)) and followed by a ReLU."""
    n = batch * features
    common = dict(x=n, w=features * features, bias=features, y=n, macs=batch * features * features, batch=batch)
    shape = f"{batch}×{features}"
    return [affine_layer(f"linear {features}×{features}", "Gemm", shape, rectified=False, **common),
            affine_layer(f"linear {features}×{features} + ReLU", "Gemm", shape, rectified=True, **common)]


# ------------------------------------------------------------------------------------------- report


def _gf(flops):
    return f"{flops / 1e9:.1f}"


def _mb(n):
    return f"{n / 1e6:.1f}"


def _us(seconds):
    return f"{seconds * 1e6:.0f}"


def bound(layer: Layer, pass_: str, schedule: str, dtype: str) -> str:
    kernels = layer.kernels[pass_, schedule]
    compute = sum(k.flops / PEAK_FLOPS[dtype] for k in kernels if k.seconds(dtype) == k.flops / PEAK_FLOPS[dtype])
    return "compute" if compute > 0.5 * layer.seconds(pass_, schedule, dtype) else "memory"


def layer_table(layers: list[Layer], dtype: str) -> list[str]:
    lines = ["| layer | op | output | GFLOP fwd | GFLOP rel | MB fwd unfused | MB fwd fused | MB rel unfused | "
             "MB rel fused | µs fwd unfused | µs fwd fused | µs rel unfused | µs rel fused | rel fused bound |",
             "|---|---|---|" + "---:|" * 10 + "---|"]
    for layer in layers:
        cells = [_gf(layer.flops("forward", "fused")), _gf(layer.flops("relevance", "fused"))]
        cells += [_mb(layer.bytes(p, s, dtype)) for p in ("forward", "relevance") for s in SCHEDULES]
        cells += [_us(layer.seconds(p, s, dtype)) for p in ("forward", "relevance") for s in SCHEDULES]
        mark = " †" if layer.no_kernel else ""
        lines.append(f"| {layer.name}{mark} | {layer.op} | {layer.shape} | " + " | ".join(cells) +
                     f" | {bound(layer, 'relevance', 'fused', dtype)} |")
    return lines


def totals(layers: list[Layer], dtype: str) -> dict:
    out = {}
    for p in ("forward", "relevance"):
        for s in SCHEDULES:
            out[p, s] = dict(flops=sum(l.flops(p, s) for l in layers),
                             bytes=sum(l.bytes(p, s, dtype) for l in layers),
                             seconds=sum(l.seconds(p, s, dtype) for l in layers),
                             kernels=sum(len(l.kernels[p, s]) for l in layers))
    return out


def totals_table(named: dict) -> list[str]:
    """named: label -> layers. One row per model × dtype × schedule."""
    lines = ["| model | dtype | schedule | kernels fwd+rel | GFLOP fwd+rel | GB fwd | GB rel | ms fwd | ms rel | "
             "ms total | rel / fwd | fused saves |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, layers in named.items():
        for dtype in ITEMSIZE:
            t = totals(layers, dtype)
            unfused_total = t["forward", "unfused"]["seconds"] + t["relevance", "unfused"]["seconds"]
            for s in SCHEDULES:
                f, r = t["forward", s], t["relevance", s]
                total = f["seconds"] + r["seconds"]
                saves = "" if s == "unfused" else f"{100 * (1 - total / unfused_total):.0f} %"
                lines.append(f"| {label} | {dtype} | {s} | {f['kernels'] + r['kernels']} | "
                             f"{(f['flops'] + r['flops']) / 1e9:.0f} | {f['bytes'] / 1e9:.2f} | "
                             f"{r['bytes'] / 1e9:.2f} | {f['seconds'] * 1e3:.2f} | {r['seconds'] * 1e3:.2f} | "
                             f"{total * 1e3:.2f} | {r['seconds'] / f['seconds']:.2f} | {saves} |")
    return lines


def markdown(resnet: list[Layer], linear: list[Layer], batch: int, linear_batch: int, features: int,
             command: str) -> str:
    ridge = {d: PEAK_FLOPS[d] / HBM_BYTES_PER_S for d in PEAK_FLOPS}
    out = [
        "# Roofline: fused Triton kernels against the unfused ONNX explainer (ε rule)",
        "",
        "**On paper.** Every figure below is a prediction from a roofline model, not a measurement: the saving "
        "is on paper until a GPU measures it (`relgraph bench` on a GPU).",
        "",
        f"Produced by `{command}` (the model: torchvision `resnet50(weights=None)` exported to ONNX, opset 17, "
        "then `relgraph.frontend.prepare`: BatchNorm folded into the convolutions).",
        "",
        "## Model",
        "",
        f"- H100 SXM ceilings: HBM {HBM_BYTES_PER_S / 1e12:.1f} TB/s (what large copies reach; 3.35 on paper). "
        "Matrix products at about 80 % of the dense peaks on paper, what large GEMMs reach: bf16 "
        f"{PEAK_FLOPS['bf16'] / 1e12:.0f} TFLOP/s (989 on paper); fp32 operands through the tensor cores as "
        f"TF32 (`tl.dot(..., input_precision=\"tf32\")`, the kernels' fast path) {PEAK_FLOPS['fp32 tf32'] / 1e12:.0f} "
        "TFLOP/s, half the bf16 rate as on paper (494.7); fp32 with `input_precision=\"ieee\"` (the kernels' "
        f"default, which matches float64 closely) on the FMA units, {PEAK_FLOPS['fp32 ieee'] / 1e12:.0f} TFLOP/s "
        "(67 on paper). Rows \"fp32 tf32\" and \"fp32 ieee\" move the same bytes; they differ in the ceiling.",
        "- Ridge points (FLOP per byte): " + ", ".join(f"{d} {r:.0f}" for d, r in ridge.items()) + ".",
        "- FLOPs: 2 per multiply-add of the matrix products (forward z, and the transposed product of the "
        "relevance pass); elementwise arithmetic (a few operations per element, far below the ridge) is hidden "
        "under memory time and not counted.",
        "- Bytes: compulsory traffic; each kernel reads each tensor it needs once and writes each result once. "
        "\"bf16\" stores every tensor (activations, weights, relevance) in 2 bytes with fp32 accumulation; "
        "comparison masks are 1 byte, max-pool indices 8.",
        "- Time per kernel: max(FLOPs / peak, bytes / bandwidth); per layer: the sum over its kernels. Launch "
        "overhead (a few µs per kernel) is not counted; it would widen the gap, the unfused schedule launches "
        "several times as many kernels (column \"kernels\").",
        "- Unfused: the explainer's ONNX op sequence, one kernel per op (forward `Conv`, `Relu`; relevance "
        "stab(z) (`y + ε` after a ReLU, else `GreaterOrEqual`, `Where`, `Add`), `Div`, the transposed "
        "`ConvTranspose`/`MatMul`, `Mul` by x, and the bias share `ReduceSum` + `MatMul`).",
        "- Fused: `relgraph/kernels/`' traffic: the forward GEMM/implicit-GEMM convolution with the bias and ReLU "
        "epilogue writes y only; one ε kernel reads R, den (y after a ReLU, mode `shift`; z otherwise, mode "
        "`stab`), W, x and writes R_x and s (`want_s`, for the bias share, whose reduction is counted in both "
        "schedules). Max pooling: a values-only pool forward (the unfused explainer pools once more inside "
        "`relgraph.MaxPoolRoute` for the int64 indices it scatters over); relevance `maxpool2d_back` reads x "
        "and R and writes R_x. Residual add: forward `Add` and `Relu` as the plan's torch ops in both "
        "schedules; relevance `epsilon_sum` reads a, b, R, den and writes R_a, R_b. † marks layers without a "
        "kernel in `relgraph/kernels/` (global average pool): their fused figure is one single-pass elementwise kernel, "
        "an estimate of what a pointwise lowering gives.",
        "- ΣR rows: a tensor read by two layers (a residual block's input) receives the sum of their "
        "relevances: one Add, the same in both schedules.",
        "",
        "## Totals",
        "",
    ]
    out += totals_table({f"ResNet-50 b{batch}": resnet,
                         f"linear {features}×{features} b{linear_batch}": linear[:1],
                         f"linear {features}×{features}+ReLU b{linear_batch}": linear[1:]})
    out += ["", "Where the fused relevance pass stands against the fused forward pass (rel / fwd, fused rows) is "
            "the figure to hold a GPU measurement against: the ε step repeats the forward's matrix product "
            "and reads one more activation-sized tensor (R) and writes one more (s).", ""]
    for dtype in TABLED:
        out += [f"## {features}×{features} linear layer at batch {linear_batch}, {dtype}", ""]
        out += layer_table(linear, dtype)
        out += [""]
    for dtype in TABLED:
        out += [f"## ResNet-50 at batch {batch}, per layer, {dtype}", ""]
        out += layer_table(resnet, dtype)
        out += [""]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64, help="ResNet-50 batch")
    p.add_argument("--linear-batch", type=int, default=4096)
    p.add_argument("--features", type=int, default=4096)
    p.add_argument("--onnx", help="a resnet50 ONNX export to read (default: export torchvision's)")
    p.add_argument("--output", default=str(BENCH_DIR / "ROOFLINE.md"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        if path is None:
            path = Path(tmp) / "resnet50.onnx"
            export_resnet50(path)
        resnet = layers_of(path, args.batch)
    linear = linear_layers(args.linear_batch, args.features)
    command = "python bench/roofline.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("output", "onnx") and v != p.get_default(k))
    text = markdown(resnet, linear, args.batch, args.linear_batch, args.features, command)
    Path(args.output).write_text(text)
    print("\n".join(totals_table({f"ResNet-50 b{args.batch}": resnet, "linear": linear[:1],
                                  "linear+ReLU": linear[1:]})))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
