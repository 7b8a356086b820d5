#!/usr/bin/env python
"""CPU benchmark: relgraph explainers against the plain forward pass and against zennit.

For each model (torchvision ResNet-50 / VGG-16, random seeded weights, eval mode) the script

1. exports the model once to ONNX (TorchScript exporter, opset 17, input ``input``, output ``logits``,
   dynamic batch, IR version 10) into a cache folder,
2. compiles one explainer per rule with ``relgraph.compile`` and records the compile time,
3. times, for every batch size, with onnxruntime on the CPU (``intra_op_num_threads=2``,
   ``inter_op_num_threads=1``): the original model's forward pass and each explainer; and with torch
   (``torch.set_num_threads(2)``): the plain torch forward pass and zennit's ``EpsilonPlusFlat``
   (canonizer + ``Gradient`` attributor) on the same batch,
4. times each explainer once more alternated with the forward pass in one process (a paired ratio),
5. prints a markdown report: median times, ratios explainer / forward and zennit / relgraph, the peak
   resident memory of each configuration, compile times, agreement of relgraph's and zennit's
   EpsilonPlusFlat relevance, and whether the product goals are met.

Every configuration runs in its own Python process, so that its memory high-water mark
(``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to it alone; the report gives the peak and the growth
over the process's footprint after its imports (the "delta": weights, arena, activations).

Timing protocol per configuration: up to ``--warmup`` warm-up runs (a single one when it already
takes more than half of the time budget), then ``--repeats`` timed runs, or, by default, as many as
fit in ``--budget`` seconds (at least 3, at most ``--max-repeats``). The median is reported, and the
spread (max − min) / median.

    python bench/bench_cpu.py                                   # everything (about 12 minutes)
    python bench/bench_cpu.py --models resnet50 --batches 1 --rules epsilon
    python bench/bench_cpu.py --markdown bench/RESULTS.md       # also append the report to a file
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_CACHE = BENCH_DIR / ".cache"

SEED = 0
OPSET = 17
IR_VERSION = 10
INPUT_SHAPE = (3, 224, 224)
MODELS = {  # name → zennit canonizer class
    "resnet50": "ResNetCanonizer",
    "vgg16": "VGGCanonizer",
}
RULES = ("epsilon", "epsilon-plus-flat")
ZENNIT_RULE = "epsilon-plus-flat"  # the relgraph rule that zennit's EpsilonPlusFlat is compared with
GOALS = {  # product spec
    "epsilon": 2.5,                # explainer / forward ≤
    "epsilon-plus-flat": 3.5,      # explainer / forward ≤
    "zennit_speedup": 4.0,         # zennit EpsilonPlusFlat / relgraph epsilon-plus-flat ≥
    "compile_model": "resnet50",
    "compile_seconds": 5.0,        # compile time <
}
MIN_REPEATS = 3


# ============================================================================================ helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def model_path(cache: Path, model: str) -> Path:
    return cache / f"{model}-seed{SEED}-opset{OPSET}.onnx"


def explainer_path(cache: Path, model: str, rule: str) -> Path:
    return cache / f"{model}-seed{SEED}-opset{OPSET}.{rule}.onnx"


def make_input(batch: int):
    import numpy as np

    rng = np.random.default_rng(SEED)
    return rng.standard_normal((batch, *INPUT_SHAPE), dtype=np.float32)


def build_torch_model(name: str):
    import torch
    import torchvision

    torch.manual_seed(SEED)
    model = getattr(torchvision.models, name)(weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def time_runs(fn, *, warmup: int, repeats: int | None, budget: float, max_repeats: int) -> dict:
    """Warm up, then time ``fn``; ``repeats=None`` picks as many runs as fit in ``budget`` seconds."""
    warm = []
    for _ in range(max(1, warmup)):
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
        if sum(warm) > budget / 2:
            break
    if repeats is None:
        repeats = max(MIN_REPEATS, min(max_repeats, int(budget / max(warm[-1], 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"times": times, "warmup": warm}


# ============================================================================================ workers
# Each worker runs in a fresh process and prints one JSON line on stdout.


def worker_export(spec: dict) -> dict:
    import onnx
    import torch

    model = build_torch_model(spec["model"])
    path = Path(spec["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    example = torch.zeros(1, *INPUT_SHAPE)
    start = time.perf_counter()
    torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(tmp))
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return {"seconds": time.perf_counter() - start, "bytes": path.stat().st_size}


def worker_compile(spec: dict) -> dict:
    sys.path.insert(0, str(REPO_ROOT))
    import relgraph

    base = peak_rss_mib()
    result = relgraph.compile(spec["model_path"], rule=spec["rule"], output=spec["path"], overwrite=True)
    return {"seconds": result.seconds, "bytes": Path(result.path).stat().st_size,
            "peak_rss_mib": peak_rss_mib(), "delta_rss_mib": peak_rss_mib() - base}


def worker_ort(spec: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    x = make_input(spec["batch"])
    feeds = {"input": x}
    if spec["explainer"]:
        feeds["target"] = np.full(spec["batch"], -1, np.int64)
    base = peak_rss_mib()
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    start = time.perf_counter()
    session = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - start
    names = [o.name for o in session.get_outputs()]
    wanted = ["logits", "relevance"] if spec["explainer"] else ["logits"]
    outputs = {}

    def run():
        outputs.update(zip(wanted, session.run(wanted, feeds)))

    timing = time_runs(run, warmup=spec["warmup"], repeats=spec["repeats"], budget=spec["budget"],
                       max_repeats=spec["max_repeats"])
    result = {**timing, "load_seconds": load, "peak_rss_mib": peak_rss_mib(), "delta_rss_mib": peak_rss_mib() - base,
              "outputs": names}
    if spec["explainer"]:
        relevance = outputs["relevance"]
        result["finite"] = bool(np.all(np.isfinite(relevance)))
        if spec.get("save"):
            np.save(spec["save"], relevance)
    return result


def worker_paired(spec: dict) -> dict:
    """Forward model and explainer in one process, runs alternated: a ratio robust to machine drift."""
    import numpy as np
    import onnxruntime as ort

    x = make_input(spec["batch"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    forward = ort.InferenceSession(spec["forward"], options, providers=["CPUExecutionProvider"])
    explainer = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])
    feeds = {"input": x, "target": np.full(spec["batch"], -1, np.int64)}
    pairs = []

    def run():
        start = time.perf_counter()
        forward.run(["logits"], {"input": x})
        middle = time.perf_counter()
        explainer.run(["logits", "relevance"], feeds)
        pairs.append((middle - start, time.perf_counter() - middle))

    timing = time_runs(run, warmup=spec["warmup"], repeats=spec["repeats"], budget=spec["budget"],
                       max_repeats=spec["max_repeats"])
    timed = pairs[len(timing["warmup"]):]
    return {"forward": [f for f, _ in timed], "explainer": [e for _, e in timed],
            "ratios": [e / f for f, e in timed]}


def worker_torch(spec: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass
    import zennit.attribution
    import zennit.composites
    import zennit.torchvision

    x = torch.from_numpy(make_input(spec["batch"]))
    base = peak_rss_mib()
    model = build_torch_model(spec["model"])
    outputs = {}

    if spec["zennit"]:
        canonizer = getattr(zennit.torchvision, MODELS[spec["model"]])()
        composite = zennit.composites.EpsilonPlusFlat(canonizers=[canonizer])
        attributor = zennit.attribution.Gradient(model=model, composite=composite)

        def target_logit(out):  # R_out = f_c(x) for the predicted class c, as relgraph's target -1
            out = out.detach()
            return out * torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

        def run():
            _, relevance = attributor(x, target_logit)
            outputs["relevance"] = relevance

        with attributor:
            timing = time_runs(run, warmup=spec["warmup"], repeats=spec["repeats"], budget=spec["budget"],
                               max_repeats=spec["max_repeats"])
    else:
        def run():
            with torch.inference_mode():
                outputs["logits"] = model(x)

        timing = time_runs(run, warmup=spec["warmup"], repeats=spec["repeats"], budget=spec["budget"],
                           max_repeats=spec["max_repeats"])
    result = {**timing, "peak_rss_mib": peak_rss_mib(), "delta_rss_mib": peak_rss_mib() - base}
    if spec["zennit"]:
        relevance = outputs["relevance"].numpy()
        result["finite"] = bool(np.all(np.isfinite(relevance)))
        if spec.get("save"):
            np.save(spec["save"], relevance)
    return result


WORKERS = {"export": worker_export, "compile": worker_compile, "ort": worker_ort, "paired": worker_paired,
           "torch": worker_torch}


def run_worker(spec: dict) -> dict:
    """Run one worker in a fresh interpreter; raise with its stderr when it fails."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['kind']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================================ the run


@dataclass
class Measurement:
    model: str
    batch: int
    config: str            # "forward", "torch-forward", "zennit", or a relgraph rule
    label: str
    times: list
    peak_rss_mib: float
    delta_rss_mib: float
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        return (max(self.times) - min(self.times)) / self.median


@dataclass
class Report:
    args: argparse.Namespace
    environment: dict
    compiles: list = field(default_factory=list)     # dicts: model, rule, seconds, bytes, rss
    exports: dict = field(default_factory=dict)      # model → bytes of the ONNX model
    measurements: list = field(default_factory=list)
    agreement: list = field(default_factory=list)    # dicts: model, batch, rel_l2, correlation
    paired: dict = field(default_factory=dict)       # (model, batch, rule) → paired worker result
    wall_seconds: float = 0.0

    def find(self, model, batch, config) -> Measurement | None:
        return next((m for m in self.measurements if (m.model, m.batch, m.config) == (model, batch, config)), None)


def environment(threads: int) -> dict:
    import onnxruntime
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    versions = {"onnxruntime": onnxruntime.__version__}
    for package in ("torch", "torchvision", "zennit", "onnx"):
        try:
            from importlib.metadata import version
            versions[package] = version(package)
        except Exception:
            versions[package] = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "relgraph": relgraph_digest(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}


def relgraph_digest() -> str:
    """A short digest of the relgraph sources benchmarked (the working tree may differ from any commit)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "relgraph").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_benchmark(args) -> Report:
    start = time.perf_counter()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    report = Report(args, environment(args.threads))
    timing = {"warmup": args.warmup, "repeats": args.repeats, "budget": args.budget, "max_repeats": args.max_repeats,
              "threads": args.threads}
    per_batch = 1 + len(args.rules) * (1 if args.no_paired else 2) + (0 if args.no_torch else 2)
    steps = len(args.models) * (len(args.rules) + len(args.batches) * per_batch)
    step = 0

    def progress(what: str) -> None:
        nonlocal step
        step += 1
        log(f"[{step:2d}/{steps}] {time.perf_counter() - start:6.0f}s  {what}")

    scratch = tempfile.TemporaryDirectory(prefix="relgraph-bench-")
    for model in args.models:
        path = model_path(cache, model)
        if not path.exists():
            log(f"exporting {model} to {path}")
            run_worker({"kind": "export", "model": model, "path": str(path)})
        report.exports[model] = path.stat().st_size
        explainers = {}
        for rule in args.rules:
            progress(f"{model}: compile {rule}")
            out = explainer_path(cache, model, rule)
            result = run_worker({"kind": "compile", "model_path": str(path), "rule": rule, "path": str(out)})
            report.compiles.append({"model": model, "rule": rule, **result})
            log(f"         compiled in {result['seconds']:.2f} s, {result['bytes'] / 2**20:.0f} MiB, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB")
            explainers[rule] = out
        for batch in args.batches:
            configs = [("forward", "onnxruntime forward", {"kind": "ort", "path": str(path), "explainer": False})]
            configs += [(rule, f"relgraph {rule}", {"kind": "ort", "path": str(explainers[rule]), "explainer": True})
                        for rule in args.rules]
            if not args.no_torch:
                configs += [("torch-forward", "torch forward", {"kind": "torch", "model": model, "zennit": False}),
                            ("zennit", "zennit EpsilonPlusFlat", {"kind": "torch", "model": model, "zennit": True})]
            saved = {}
            for config, label, spec in configs:
                progress(f"{model} batch {batch}: {label}")
                if config in (ZENNIT_RULE, "zennit"):
                    saved[config] = os.path.join(scratch.name, f"{model}-{batch}-{config}.npy")
                    spec["save"] = saved[config]
                result = run_worker({**spec, **timing, "batch": batch})
                m = Measurement(model, batch, config, label, result["times"], result["peak_rss_mib"],
                                result["delta_rss_mib"],
                                {k: result[k] for k in ("load_seconds", "finite", "warmup") if k in result})
                report.measurements.append(m)
                forward = report.find(model, batch, "forward")
                ratio = f", {m.median / forward.median:.2f}x forward" if forward and m is not forward else ""
                log(f"         median {m.median * 1e3:.1f} ms over {len(m.times)} runs{ratio}, "
                    f"peak RSS {m.peak_rss_mib:.0f} MiB" + ("" if m.extra.get("finite", True)
                                                            else "  (relevance has NaN/inf!)"))
            for rule in [] if args.no_paired else args.rules:
                progress(f"{model} batch {batch}: forward and {rule} alternated")
                result = run_worker({"kind": "paired", "forward": str(path), "path": str(explainers[rule]),
                                     **timing, "batch": batch})
                report.paired[(model, batch, rule)] = result
                log(f"         {rule} / forward: median of {len(result['ratios'])} pairs "
                    f"{statistics.median(result['ratios']):.2f}")
            if len(saved) == 2:
                report.agreement.append({"model": model, "batch": batch, **agreement(saved[ZENNIT_RULE],
                                                                                     saved["zennit"])})
    scratch.cleanup()
    report.wall_seconds = time.perf_counter() - start
    return report


def agreement(ours: str, theirs: str) -> dict:
    """Relative L2 error and Pearson correlation of two relevance maps (per batch, flattened)."""
    import numpy as np

    a, b = np.load(ours).astype(np.float64), np.load(theirs).astype(np.float64)
    rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return {"rel_l2": rel, "correlation": corr}


# ============================================================================================ report


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def command_line(args) -> str:
    parts = ["python bench/bench_cpu.py", "--models", *args.models, "--batches", *map(str, args.batches),
             "--rules", *args.rules]
    if args.repeats is not None:
        parts += ["--repeats", str(args.repeats)]
    else:
        parts += ["--budget", f"{args.budget:g}", "--max-repeats", str(args.max_repeats)]
    parts += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.no_torch:
        parts.append("--no-torch")
    if args.no_paired:
        parts.append("--no-paired")
    return " ".join(parts)


def markdown(report: Report) -> str:
    env, args = report.environment, report.args
    v = env["versions"]
    lines = [
        f"## CPU benchmark ({env['date']})",
        "",
        f"- Machine: {env['cpu']}, {env['cores']} cores visible; {env['platform']}, Python {env['python']}",
        f"- onnxruntime {v['onnxruntime']} (CPUExecutionProvider, intra_op_num_threads={env['threads']}, "
        f"inter_op_num_threads=1, default graph optimizations); torch {v['torch']} "
        f"(set_num_threads({env['threads']})), torchvision {v['torchvision']}, zennit {v['zennit']}, onnx {v['onnx']}",
        f"- relgraph sources: sha256 {env['relgraph']} (digest of relgraph/**/*.py, for matching results to a "
        "revision)",
        f"- Models: torchvision, random weights (seed {SEED}), eval mode, ONNX opset {OPSET} (TorchScript exporter), "
        f"input float32 [N, {', '.join(map(str, INPUT_SHAPE))}] drawn from N(0, 1); explainers explain the "
        "predicted class (target −1)",
        f"- Command: `{command_line(args)}` (wall time {report.wall_seconds / 60:.1f} min)",
        "",
        "### Time per call",
        "",
        "Median (and minimum) wall time of one call on the whole batch; spread = (max − min) / median over the "
        "timed runs; "
        "× fwd = relative to the onnxruntime forward pass of the original model. Peak RSS is the process's "
        "high-water mark, Δ its growth after the imports (weights, arena, activations).",
        "",
        "| model | batch | configuration | median ms | min ms | ms / image | runs | spread | × fwd | peak RSS MiB "
        "| Δ RSS MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.measurements:
        forward = report.find(m.model, m.batch, "forward")
        ratio = f"{m.median / forward.median:.2f}" if forward else "–"
        lines.append(f"| {m.model} | {m.batch} | {m.label} | {_ms(m.median)} | {_ms(min(m.times))} | "
                     f"{_ms(m.median / m.batch)} | "
                     f"{len(m.times)} | {m.spread:.0%} | {ratio} | {m.peak_rss_mib:,.0f} | {m.delta_rss_mib:,.0f} |")

    lines += ["", "### Ratios against the goals", "",
              "explainer / forward: the ratio of the medians above (separate processes) and, in brackets, the "
              "median ratio over pairs of runs alternated in one process (less exposed to drift of the machine); "
              "the verdict uses the paired ratio when there is one.", ""]
    header = ["model", "batch"]
    header += [f"{rule} / forward (goal ≤ {GOALS[rule]})" if rule in GOALS else f"{rule} / forward"
               for rule in args.rules]
    zennit_cols = not args.no_torch and ZENNIT_RULE in args.rules
    if zennit_cols:
        header += [f"zennit / relgraph {ZENNIT_RULE} (goal ≥ {GOALS['zennit_speedup']})",
                   "zennit / torch forward"]
    lines += ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    batches = sorted({m.batch for m in report.measurements})
    for model in args.models:
        for batch in batches:
            forward = report.find(model, batch, "forward")
            if forward is None:
                continue
            row = [model, str(batch)]
            for rule in args.rules:
                m = report.find(model, batch, rule)
                r = m.median / forward.median
                cell = f"{r:.2f}"
                paired = report.paired.get((model, batch, rule))
                if paired:
                    r = statistics.median(paired["ratios"])
                    cell += f" [{r:.2f}]"
                row.append(f"{cell} ({_verdict(r <= GOALS[rule])})" if rule in GOALS else cell)
            if zennit_cols:
                z, ours, tf = (report.find(model, batch, c) for c in ("zennit", ZENNIT_RULE, "torch-forward"))
                speedup = z.median / ours.median
                row.append(f"{speedup:.2f} ({_verdict(speedup >= GOALS['zennit_speedup'])})")
                row.append(f"{z.median / tf.median:.2f}")
            lines.append("| " + " | ".join(row) + " |")

    lines += ["", "### Compile", "",
              "`relgraph.compile` wall time (`CompileResult.seconds`, fresh process; load, canonicalize, relevance "
              "pass, checker, save).", "",
              "| model | rule | compile s | goal | model MiB | explainer MiB | compile peak RSS MiB |",
              "|---|---|---:|---|---:|---:|---:|"]
    for c in report.compiles:
        goal = "–"
        if c["model"] == GOALS["compile_model"]:
            goal = f"< {GOALS['compile_seconds']:g} s: {_verdict(c['seconds'] < GOALS['compile_seconds'])}"
        lines.append(f"| {c['model']} | {c['rule']} | {c['seconds']:.2f} | {goal} | "
                     f"{report.exports[c['model']] / 2**20:,.0f} | {c['bytes'] / 2**20:,.0f} | "
                     f"{c['peak_rss_mib']:,.0f} |")

    if report.agreement:
        lines += ["", f"### Agreement of relgraph {ZENNIT_RULE} with zennit EpsilonPlusFlat", "",
                  "Same weights, same batch, same explained class; relevance of the input.", "",
                  "| model | batch | relative L2 error | correlation |", "|---|---:|---:|---:|"]
        for a in report.agreement:
            lines.append(f"| {a['model']} | {a['batch']} | {a['rel_l2']:.2e} | {a['correlation']:.6f} |")
    bad = [m for m in report.measurements if m.extra.get("finite") is False]
    if bad:
        lines += ["", "Relevance with NaN or inf: " + ", ".join(f"{m.model} b{m.batch} {m.label}" for m in bad)]
    return "\n".join(lines) + "\n"


# ============================================================================================ CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rules", nargs="+", default=list(RULES), help="relgraph rules to compile and time")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per configuration (default: as many as fit in --budget, at least 3)")
    p.add_argument("--budget", type=float, default=8.0,
                   help="seconds of timed runs per configuration when --repeats is not given (default 8)")
    p.add_argument("--max-repeats", type=int, default=20, help="upper bound of the automatic repeats (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs per configuration (default 2)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of onnxruntime and torch (default 2)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch forward and zennit configurations")
    p.add_argument("--no-paired", action="store_true",
                   help="skip the paired measurement (forward and explainer alternated in one process)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help=f"exported models and explainers "
                                                                    f"(default {DEFAULT_CACHE.relative_to(REPO_ROOT)})")
    p.add_argument("--markdown", metavar="FILE", help="append the markdown report to FILE")
    p.add_argument("--json", metavar="FILE", help="write the raw measurements as JSON to FILE")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        if any(b < 1 for b in args.batches):
            p.error("batch sizes must be ≥ 1")
        if args.repeats is not None and args.repeats < 1:
            p.error("--repeats must be ≥ 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return 0
    report = run_benchmark(args)
    text = markdown(report)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + text)
        log(f"appended the report to {args.markdown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": report.environment, "compiles": report.compiles, "exports": report.exports,
                       "agreement": report.agreement,
                       "paired": [{"model": k[0], "batch": k[1], "rule": k[2], **v} for k, v in report.paired.items()],
                       "measurements": [vars(m) for m in report.measurements]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
