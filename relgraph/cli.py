"""``relgraph`` command line: compile, explain, inspect, check, rules, fit-patterns.

Every problem with what the user gave ends in one line on stderr and exit status 2; a bug in relgraph
ends in one line and status 3 (``RELGRAPH_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings

import numpy as np
import onnx

from .compiler import compile, composite_for
from .errors import RelgraphError, UnsupportedOpsError
from .explainer import Explainer, baseline_default, open_explainer
from .files import NpyRows, NpzRows, check_output, replacing
from .fixed_batch import filled_rows, fixed_part
from .frontend import prepare
from .heatmap import MAX_TILES, encode_png, heatmap_strip, pillow, read_image
from .lowering.commands import cmd_compile_triton, cmd_inspect_triton
from .passes.relevance import choose_rule, explained_values, first_layers, relevance_nodes, unsupported
from .patterns import QUALITY_NOTE, collect_statistics, patterns_from, quality, save_patterns
from .portability import compare_runtimes
from .preprocess import model_classes
from .rules import COMPOSITES, KIND_RULES, RULE_NAMES, RULES, RuleParams, kind_of, supported_ops
from .runtimes import add_runtime_argument
from .text import TEXT_OUTPUTS, TextEncoder, caption, explain_text, render_html, render_png
from .triton_repo import export_triton
from .version import __version__


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except RelgraphError as exc:
        print(f"relgraph: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relgraph: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line unless asked for the traceback
        if os.environ.get("RELGRAPH_DEBUG"):
            raise
        print(f"relgraph: internal error: {type(exc).__name__}: {exc} (set RELGRAPH_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 3


INPUT_SHAPE_HELP = ("fix an input's dynamic dimensions, e.g. input=Nx3x224x224 (a letter keeps a dimension "
                    "dynamic; the batch axis always is); repeat for several inputs")


def _add_rule_arguments(p: argparse.ArgumentParser) -> None:
    """The rule and its parameters, as ``compile`` and ``inspect`` both read them (``composite_for``)."""
    p.add_argument("--rule", default="epsilon", metavar="RULE", help=f"one of: {', '.join(RULE_NAMES)}")
    p.add_argument("--rule-map", metavar="FILE", help="TOML rule map (overrides --rule)")
    p.add_argument("--epsilon", type=float, default=RuleParams.epsilon)
    p.add_argument("--gamma", type=float, default=RuleParams.gamma)
    p.add_argument("--alpha", type=float, default=RuleParams.alpha)
    p.add_argument("--beta", type=float, default=RuleParams.beta)
    p.add_argument("--bounds", type=float, nargs=2, metavar=("LOW", "HIGH"), help="input range for z^B")
    p.add_argument("--patterns", metavar="FILE", help="patternnet, patternattribution: patterns from fit-patterns")
    p.add_argument("--formulation", choices=("r", "q"), default="r",
                   help="q: compile LRP-0 as Q = R/a propagation (no division by z)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relgraph", description="Compile ONNX models into relevance explainers.")
    p.add_argument("--version", action="version", version=f"relgraph {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    c = sub.add_parser("compile", help="compile MODEL into an explainer .onnx")
    c.add_argument("model")
    _add_rule_arguments(c)
    c.add_argument("-o", "--output", help="output path (default: MODEL.<rule>.onnx beside the model)")
    c.add_argument("--bias-relevance", choices=("total", "per-layer"), default="total")
    c.add_argument("--baseline", help="deeplift: 'zeros' (default) or a .npy input to compare to")
    c.add_argument("--input", dest="input_name", help="name of the input to explain (default: the first)")
    c.add_argument("--input-shape", dest="input_shapes", action="append", metavar="NAME=DIMS",
                   help=INPUT_SHAPE_HELP)
    c.add_argument("--position", default="last", metavar="last|K",
                   help="sequence logits [N, S, V] (a language model): the position explained (default: last)")
    c.add_argument("--embedding-relevance", action="store_true",
                   help="token models: also return relevance_embedding [N, S, D] next to one value per token")
    c.add_argument("--tokenizer", metavar="FILE",
                   help="token models: a Hugging Face tokenizer.json stored in the explainer, so that "
                        "relgraph explain --text and relgraph serve take text")
    c.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    c.add_argument("--target", default="onnx", metavar="{onnx,triton}",
                   help="onnx: one explainer .onnx (default); triton: a folder with the explainer and its "
                        "launch plan of Triton kernels")
    c.add_argument("--keep-functions", action="store_true",
                   help="keep relgraph's model-local functions (compact; onnxruntime only) instead of standard "
                        "ONNX operators only")
    c.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="triton target: the kernels' operand type (x and W; fp32 accumulation and outputs)")
    c.set_defaults(run=cmd_compile)

    f = sub.add_parser("fit-patterns", help="fit PatternNet/PatternAttribution patterns of MODEL on data")
    f.add_argument("model")
    f.add_argument("--data", required=True, help=".npy [N, ...] or a folder of .npy files")
    f.add_argument("-o", "--output", required=True, help="patterns .npz")
    f.add_argument("--estimator", choices=("linear", "two-component"), default="linear")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--quality", action="store_true", help="print ρ(S) per layer on --holdout data")
    f.add_argument("--holdout", help="held-out data for --quality (.npy or folder)")
    f.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    f.set_defaults(run=cmd_fit_patterns)

    e = sub.add_parser("explain", help="run an explainer on an input (.npy or image)")
    e.add_argument("explainer")
    e.add_argument("input", nargs="?", help=".npy array [N, ...] or one sample, or an image (PNG, JPEG, WebP)")
    e.add_argument("--text", action="append", metavar="TEXT",
                   help="instead of INPUT: a text for an explainer compiled with --tokenizer (repeat for several); "
                        "prints each token's relevance")
    e.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted one)")
    e.add_argument("-o", "--output", help=".png heatmap, .npy relevance or .npz (all outputs); with --text: "
                                          ".html or .png, the tokens shaded by relevance (optional)")
    e.add_argument("--scale", type=float, default=1 / 255, help="image pixels are multiplied by this (images only)")
    e.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    e.add_argument("--batch-size", type=int, default=64,
                   help="samples per session call; results stream to the output chunk by chunk (default 64)")
    e.add_argument("--backend", default=None, metavar="{onnxruntime,triton}",
                   help="default: triton for a folder compiled with --target triton, else onnxruntime")
    add_runtime_argument(e)
    e.set_defaults(run=cmd_explain)

    i = sub.add_parser("inspect", help="show node → op → rule, and unsupported nodes")
    i.add_argument("model")
    _add_rule_arguments(i)
    i.add_argument("--input-shape", dest="input_shapes", action="append", metavar="NAME=DIMS",
                   help=INPUT_SHAPE_HELP)
    i.add_argument("--target", default="onnx", metavar="{onnx,triton}",
                   help="triton: list the launch plan's steps (MODEL may be a triton folder or an explainer)")
    i.set_defaults(run=cmd_inspect)

    k = sub.add_parser("check", help="conservation per layer: relevance in, out, to biases, absorbed")
    k.add_argument("explainer")
    k.add_argument("input")
    k.add_argument("--target", type=int, default=None)
    k.add_argument("--scale", type=float, default=1 / 255)
    k.add_argument("--runtimes", action="store_true",
                   help="instead: run the explainer on every installed runtime and print how far each is from "
                        "onnxruntime")
    k.set_defaults(run=cmd_check)

    t = sub.add_parser("export-triton", help="write an explainer as a Triton Inference Server model repository")
    t.add_argument("explainer")
    t.add_argument("--repo", required=True, help="model repository folder (created if missing)")
    t.add_argument("--name", help="model name (default: the explainer's file name)")
    t.add_argument("--max-batch", type=int, default=64)
    t.add_argument("--force", action="store_true", help="replace the model's folder if it exists")
    t.set_defaults(run=cmd_export_triton)

    r = sub.add_parser("rules", help="list rules, composites and supported ops")
    r.set_defaults(run=cmd_rules)
    for name in _COMMAND_MODULES:  # commands that live beside what they run: add_command(sub) in each
        importlib.import_module(f".{name}", __package__).add_command(sub)
    return p


# Modules that define their own subcommand. They must stay cheap to import (no torch, no triton at top level).
_COMMAND_MODULES: tuple[str, ...] = ("serve", "evaluate", "aot", "bench", "dataset", "spray")


# ------------------------------------------------------------------------------------------- commands


def compile_options(args) -> dict:
    """What ``compile`` passes to the compiler, for either target: the rules, the input and the token options."""
    return dict(rule=args.rule, epsilon=args.epsilon, gamma=args.gamma, alpha=args.alpha, beta=args.beta,
                bounds=args.bounds, rule_map=args.rule_map, bias_relevance=args.bias_relevance,
                input_name=args.input_name, formulation=args.formulation, baseline=args.baseline,
                patterns=args.patterns, input_shapes=args.input_shapes, position=args.position,
                embedding_relevance=args.embedding_relevance, tokenizer=args.tokenizer)


def cmd_compile(args):
    if args.target != "onnx":
        return cmd_compile_triton(args, compile_options(args))
    if args.dtype != "fp32":
        raise RelgraphError("--dtype applies to --target triton; an ONNX explainer computes in fp32")

    result = compile(args.model, output=args.output, overwrite=args.force, keep_functions=args.keep_functions,
                     **compile_options(args))
    rules = {}
    for rule in result.relevance.rules().values():
        rules[rule] = rules.get(rule, 0) + 1
    summary = ", ".join(f"{n}×{r}" for r, n in sorted(rules.items()))
    print(f"wrote {result.path} ({len(result.relevance.nodes)} nodes explained: {summary}; {result.seconds:.2f} s)")


def cmd_fit_patterns(args):
    """Fit, save and optionally measure: the sums are collected once, for both estimators when --quality."""
    if args.quality and not args.holdout:
        raise RelgraphError("--quality needs --holdout DATA: ρ is measured on data the patterns were not fitted on")
    if args.quality and not os.path.exists(args.holdout):
        raise RelgraphError(f"held-out data not found: {args.holdout}")
    check_output(args.output, [args.model, args.data, args.holdout], overwrite=args.force)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = collect_statistics(args.model, args.data, batch_size=args.batch_size,
                                   two_component=args.estimator == "two-component" or args.quality)
    for w in caught:
        print(f"relgraph: warning: {w.message}", file=sys.stderr)
    patterns = patterns_from(stats, args.estimator)
    save_patterns(args.output, patterns, args.estimator)
    inputs = next(iter(stats.values())).inputs
    print(f"wrote {args.output} ({args.estimator} patterns of {len(stats)} layers from {inputs} samples)")
    if args.quality:
        _print_quality(args, {"S_a": patterns_from(stats, "linear"), "S_a+-": patterns_from(stats, "two-component")})


def _print_quality(args, pattern_sets):
    rows = quality(args.model, args.holdout, pattern_sets, batch_size=args.batch_size)
    labels = ["S_x", "S_w", *pattern_sets]
    print(f"\nρ(S) = 1 − max_v corr(y, vᵀ(x − S(x))) per layer, mean over neurons (higher is better); "
          f"v fitted on the first half of {args.holdout}, ρ measured on the second (a convolution's samples "
          f"are its patches)")
    print(f"{'layer':32} {'op':5} {'D':>6} {'K':>5} {'samples v/ρ':>15} " + " ".join(f"{x:>7}" for x in labels))
    for r in rows:
        cells = " ".join("    n/a" if np.isnan(r.rho.get(x, np.nan)) else f"{r.rho[x]:7.3f}" for x in labels)
        extra = f"  ({r.constant} constant neurons left out)" if r.constant else ""
        extra += f"  ({r.measured} of {r.neurons} neurons)" if 0 < r.measured < r.neurons else ""
        extra += f"  {r.note}" if r.note else ""
        small = "  (fewer samples than features: v overfits)" if r.measured and r.samples[0] <= r.features else ""
        print(f"{r.layer[:32]:32} {r.op:5} {r.features:6d} {r.neurons:5d} {r.samples[0]:>7}/{r.samples[1]:<7} "
              f"{cells}{extra}{small}")
    print(f"note: {QUALITY_NOTE}")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def load_input(path: str, scale: float, sample=None) -> np.ndarray:
    """A .npy array, or an image (PNG, JPEG, WebP) times ``scale``, channels first. ``sample``: the model's
    per-sample shape; an image of another height and width is refused before it is converted."""
    if not os.path.isfile(path):
        raise RelgraphError(f"input file not found: {path}")
    if path.lower().endswith(".npy"):
        return _load_npy(path)
    if path.lower().endswith(IMAGE_EXTENSIONS):
        pixels = read_image(path)
        if sample and len(sample) >= 2 and None not in sample[-2:] and list(pixels.shape[:2]) != list(sample[-2:]):
            raise RelgraphError(f"the image is {pixels.shape[0]}×{pixels.shape[1]}, the model takes "
                                f"{sample[-2]}×{sample[-1]}")
        img = pixels.astype(np.float32) * np.float32(scale)
        return img[None] if img.ndim == 2 else np.transpose(img[..., :3], (2, 0, 1))
    raise RelgraphError(f"unsupported input format: {path} (use .npy, .png, .jpg or .webp)")


def _load_npy(path: str) -> np.ndarray:
    """A .npy array (never a pickle); an .npz archive under a .npy name is a one-line error."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: read chunk by chunk as explained
    except Exception as exc:
        raise RelgraphError(f"cannot read {path} as a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise RelgraphError(f"{path} is an .npz archive, not a .npy array: extract the array, or name it .npz")
    return array


def _explainer_input(explainer, path, scale):
    """The input batched and checked in dtype and shape (:meth:`Explainer.batched`); values not yet read."""
    sample = explainer.input_shape[1:]
    x = load_input(path, scale, sample)
    image = path.lower().endswith(IMAGE_EXTENSIONS)
    if x.ndim == len(sample) - 1 and sample and sample[0] == 1:  # a gray image for a one-channel model
        x = x[None]
    if image and x.ndim == len(sample) and sample and x.shape[0] != sample[0]:
        x = x.mean(0, keepdims=True) if sample[0] == 1 else np.repeat(x[:1], sample[0], 0)
    return explainer.batched(x)


EXPLAIN_OUTPUTS = (".png", ".npy", ".npz")
LISTED_SAMPLES = 20  # per-sample lines printed; a bigger batch ends in one line for the rest


def cmd_explain(args):
    """Explain in chunks of --batch-size samples, each written out as it comes (.npy, .npz), or kept for the
    heatmap strip (.png, the first MAX_TILES samples): memory follows the chunk, not the batch."""
    if args.text is not None:
        if args.input is not None:
            raise RelgraphError("give INPUT or --text, not both")
        return _explain_text(args)
    if args.input is None:
        raise RelgraphError("give an INPUT to explain (.npy or an image), or --text for an explainer with a tokenizer")
    if args.output is None:
        raise RelgraphError("-o/--output is required: a .png heatmap, .npy relevance or .npz")
    check_output(args.output, [args.input, args.explainer], overwrite=args.force)
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in EXPLAIN_OUTPUTS:
        raise RelgraphError(f"unsupported output format: {args.output} (use .png, .npy or .npz)")
    if args.batch_size < 1:
        raise RelgraphError(f"--batch-size must be at least 1, got {args.batch_size}")
    if ext == ".png":
        pillow()  # before any work: without Pillow the heatmap could not be written
    explainer = open_explainer(args.explainer, backend=args.backend, runtime=args.runtime)
    x = _explainer_input(explainer, args.input, args.scale)
    n = x.shape[0]
    if n == 0:
        raise RelgraphError(f"{args.input} holds no samples: there is nothing to explain")
    chunks = explainer.explain_chunks(x, args.target, batch_size=args.batch_size)
    with replacing(args.output) as temporary:
        if ext == ".png":
            drawn = []
            for start, out in chunks:
                _print_samples(start, out, n)
                drawn.extend(out["relevance"][:max(0, MAX_TILES - start)])
            if n > MAX_TILES:
                print(f"relgraph: note: the heatmap shows the first {MAX_TILES} of {n} samples", file=sys.stderr)
            with open(temporary, "wb") as f:
                f.write(encode_png(heatmap_strip(np.stack(drawn), x[:len(drawn)], size=256)))
        elif ext == ".npy":
            writer = None
            for start, out in chunks:
                _print_samples(start, out, n)
                if writer is None:
                    writer = NpyRows(temporary, n, out["relevance"].shape[1:], out["relevance"].dtype)
                writer.write(out["relevance"])
            writer.close()
        else:
            with NpzRows(temporary, n) as writer:
                for start, out in chunks:
                    _print_samples(start, out, n)
                    writer.write({**{k.replace("/", "__"): v for k, v in out["outputs"].items()},
                                  "target": out["target"]})
    print(f"wrote {args.output}")


def _print_samples(start: int, out: dict, n: int) -> None:
    for i in range(len(out["target"])):
        if start + i == LISTED_SAMPLES and n > LISTED_SAMPLES:
            print(f"... and {n - LISTED_SAMPLES} more samples")
        if start + i >= LISTED_SAMPLES:
            return
        c = int(out["target"][i])
        print(f"sample {start + i}: predicted {int(out['logits'][i].argmax())}, explained {c} "
              f"(logit {out['logits'][i, c]:.4g}), Σ relevance {out['relevance'][i].sum():.4g}, "
              f"bias {out['bias_relevance'][i]:.4g}")


def _explain_text(args):
    """--text: each text's tokens and their relevance on stdout; -o writes them shaded (.html or .png)."""
    ext = os.path.splitext(args.output)[1].lower() if args.output else None
    if args.output is not None:
        if ext not in TEXT_OUTPUTS:
            raise RelgraphError(f"unsupported output format for --text: {args.output} (use .html or .png)")
        check_output(args.output, [args.explainer], overwrite=args.force)
    if args.batch_size < 1:
        raise RelgraphError(f"--batch-size must be at least 1, got {args.batch_size}")
    explainer = open_explainer(args.explainer, backend=args.backend, runtime=args.runtime)
    encoder = TextEncoder.of(explainer)
    items = explain_text(explainer, args.text, args.target, batch_size=args.batch_size, encoder=encoder)
    classes = model_classes(explainer.metadata)
    for n, item in enumerate(items):
        print(f"text {n}: {caption(item, classes)}")
        for i, (token, r) in enumerate(zip(item.tokens, item.relevance)):
            print(f"  {i:4d} {token!r:24} {r:+.6g}")
    if args.output is None:
        return
    with replacing(args.output) as temporary:
        if ext == ".html":
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(render_html(items, classes))
        else:
            with open(temporary, "wb") as f:
                f.write(encode_png(render_png(items, classes)))
    print(f"wrote {args.output}")


def cmd_inspect(args):
    if args.target != "onnx":
        if args.input_shapes:
            raise RelgraphError("--input-shape applies when inspecting a model (--target onnx); a compiled "
                                "explainer has its shapes")
        return cmd_inspect_triton(args)
    composite, _ = composite_for(args.rule, args.rule_map, epsilon=args.epsilon, gamma=args.gamma, alpha=args.alpha,
                                 beta=args.beta, bounds=args.bounds, patterns=args.patterns,
                                 formulation=args.formulation)
    model, skipped = prepare(args.model, args.input_shapes)
    x, logits = explained_values(model)
    nodes = relevance_nodes(model.graph, x, logits)
    firsts = first_layers([n for n in nodes if n.op_type in RULES], x)
    missing, refused = [], []
    print(f"input {x.name} {list(x.shape)} → logits {logits.name} {list(logits.shape)}; rule {composite.name}")
    print(f"{'node':48} {'op':20} {'kind':11} rule")
    for node in nodes:  # what compile checks before its walk (relgraph.passes.relevance), node by node
        why = unsupported(node)
        if why is not None:
            missing.append((node.op_type, node.name, why))
            print(f"{node.name[:48]:48} {node.op_type:20} {'-':11} UNSUPPORTED: {why or 'no rule'}")
            continue
        kind, (choice, why) = kind_of(node), choose_rule(node, composite, node.name in firsts)
        if why:
            refused.append(why)
            print(f"{node.name[:48]:48} {node.op_type:20} {kind:11} REFUSED: {why}")
            continue
        first = " (first layer)" if node.name in firsts else ""
        print(f"{node.name[:48]:48} {node.op_type:20} {kind:11} {choice.rule}{first}")
    for note in skipped:
        print(f"note: {note}")
    if any(not isinstance(d, int) for d in list(x.shape)[1:]):
        spec = "x".join(["N"] + [str(d) if isinstance(d, int) else "?" for d in list(x.shape)[1:]])
        print(f"note: input '{x.name}' has dynamic dimensions: layers that need static shapes (strided "
              f"convolutions, pooling, slices) compile once --input-shape {x.name}={spec} fixes them (numbers for ?)")
    if missing:
        raise UnsupportedOpsError(missing, supported_ops())
    if refused:
        raise RelgraphError("; ".join(refused))


def cmd_check(args):
    """Per-layer account: R_in (at the node's outputs) = R_out (to its inputs) + R_bias + leak."""
    import onnxruntime as ort  # the [cpu] or [gpu] extra

    explainer = Explainer(args.explainer)  # a triton folder: its ONNX explainer
    x = explainer.prepare(_explainer_input(explainer, args.input, args.scale))
    if args.runtimes:
        return _print_runtimes(explainer.path, x, args.target)
    trace = json.loads(explainer.metadata.get("relgraph.trace", "[]"))
    proto = onnx.load(explainer.path)
    model, batch = fixed_part(proto) or (proto, None)
    t = explainer.targets(args.target, x.shape[0])
    feed = {explainer.input_name: x, "target": t, **explainer.side_inputs(None, x.shape[0])}
    if batch is not None:  # the per-layer values are inside the Scan: run its body on whole chunks
        rows = filled_rows(x.shape[0], batch)
        if len(rows) > x.shape[0]:
            print(f"note: this explainer runs chunks of {batch} samples; the last one is filled with copies of "
                  f"sample {x.shape[0] - 1}, counted below")
        feed = {k: v[rows] for k, v in feed.items()}
    known = {o.name for o in model.graph.output}
    # a trace entry is a value's name, or [v, q] for relevance handed over as the share q (R = v ⊙ q)
    entries = [e for step in trace for e in step["in"] + step["out"] + [step["bias"]] if e]
    names = sorted({n for e in entries for n in ([e] if isinstance(e, str) else e)} - known)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # a baseline is an initializer that is also an input, on purpose
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names, size = [o.name for o in session.get_outputs()], batch or len(feed["target"])
    chunks = [session.run(None, {k: v[i:i + size] for k, v in feed.items()})
              for i in range(0, len(feed["target"]), size)]
    # each value joined along its first axis: a sum over it, or of v ⊙ q, is the sum over the chunks
    values = {name: np.concatenate([np.atleast_1d(c[j]) for c in chunks]) for j, name in enumerate(names)}
    t = feed["target"]

    def total(entry):
        if entry is None:
            return 0.0
        if isinstance(entry, str):
            return float(np.asarray(values[entry], np.float64).sum())
        v, q = (np.asarray(values[n], np.float64) for n in entry)
        return float((v * q).sum())

    print(f"{'node':44} {'op':18} {'rule':16} {'R in':>12} {'R out':>12} {'R bias':>12} {'leak':>12}")
    leak_sum = 0.0
    for step in reversed(trace):
        r_in, r_out, r_bias = sum(map(total, step["out"])), sum(map(total, step["in"])), total(step["bias"])
        leak = r_in - r_out - r_bias
        leak_sum += leak
        print(f"{step['node'][:44]:44} {step['op']:18} {step['rule']:16} {r_in:12.5g} {r_out:12.5g} "
              f"{r_bias:12.5g} {leak:12.5g}")
    logits = values[explainer.logits_name]
    chosen = np.where(t < 0, logits.argmax(1), t)
    picked = float(logits[np.arange(len(t)), chosen].sum())
    rel, bias = float(values["relevance"].sum()), float(values["bias_relevance"].sum())
    if explainer.metadata.get("relgraph.output_init") == "logit":
        print(f"\nR_out {picked:.6g} = Σ relevance {rel:.6g} + Σ bias {bias:.6g} + leak {picked - rel - bias:.6g} "
              f"(Σ per-layer leak {leak_sum:.6g})")
    elif "baseline" in explainer.overridable_inputs():
        # DeepLIFT: the columns are multipliers m = ∂*f/∂a; what sums to a constant is Δa ⊙ m, to Δf
        reference = baseline_default(proto)
        f_base = explainer.explain(np.repeat(reference, len(t), 0) if len(reference) == 1 else reference,
                                   chosen)["logits"][np.arange(len(t)), chosen]
        delta = picked - float(f_base.astype(np.float64).sum())
        print(f"\nthe columns are DeepLIFT's multipliers, not relevance. Summation to delta: f(x) − f(baseline) "
              f"{delta:.6g} = Σ relevance {rel:.6g} + leak {delta - rel:.6g}")
    else:
        print(f"\n{explainer.rule} propagates gradients, not relevance: the columns are sums of ∂f/∂a, and "
              f"nothing is conserved (Σ relevance {rel:.6g})")


def _print_runtimes(path, x, target):
    rows = compare_runtimes(path, x, target)
    print(f"{'runtime':12} {'device':36} {'seconds':>8}   relative L2 (max |difference|) against onnxruntime")
    for row in rows:
        if row.skipped:
            print(f"{row.runtime:12} skipped: {row.skipped}")
            continue
        cells = "  ".join(f"{k} {row.relative[k]:.2e} ({row.absolute[k]:.2e})" for k in row.relative)
        print(f"{row.runtime:12} {row.device[:36]:36} {row.seconds:8.3f}   {cells or 'the reference'}")
    ran = [r for r in rows if r.relative]
    if ran:
        worst = max(ran, key=lambda r: r.relative["relevance"])
        print(f"\nlargest relevance difference: {worst.relative['relevance']:.2e} relative L2 ({worst.runtime}); "
              f"largest over all outputs: {max(max(r.relative.values()) for r in ran):.2e}")


def cmd_export_triton(args):
    folder = export_triton(args.explainer, args.repo, name=args.name, max_batch=args.max_batch,
                           overwrite=args.force)
    print(f"wrote {folder} (config.pbtxt, 1/model.onnx); serve with: "
          f"tritonserver --model-repository={os.path.abspath(args.repo)}")


def cmd_rules(args):
    print("rules and composites:", ", ".join(COMPOSITES))
    for kind, rules in KIND_RULES.items():
        print(f"  {kind:11} {', '.join(rules)}")
    print("supported ops:", ", ".join(supported_ops()))


if __name__ == "__main__":
    sys.exit(main())
