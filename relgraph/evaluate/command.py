"""The ``relgraph evaluate`` command: options, the default bundled model and data, the printed table, the JSON
report and the plots."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .. import plot
from ..errors import RelgraphError
from ..explainer import is_explainer, read_onnx
from ..files import check_output, replacing
from .data import Dataset, is_token_data, load_dataset, load_token_data
from .images import RANDOM, Evaluation, Scorer, default_patch, evaluate
from .methods import (DEFAULT_METHODS, TOKEN_METHODS, check_methods, compile_methods, forward_of, relevance_of,
                      token_relevance_of, training_data)
from .tokens import TokenScorer, evaluate_tokens

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "digits" / "digits_cnn.onnx"
DEFAULT_DATA = ROOT / "models" / "digits" / "test_x.npy"
DEFAULT_LABELS = ROOT / "models" / "digits" / "test_y.npy"


def add_command(sub) -> None:
    e = sub.add_parser("evaluate", help="faithfulness of heatmaps: image degradation (AOPC) and mask share",
                       description="Remove the most relevant patches first and watch the target's probability "
                                   "fall (Samek et al. 2017); AOPC per method against a random order. On token "
                                   "data (a .npz with input_ids), set token embeddings to zero most and least "
                                   "relevant first and report both areas and their difference (AttnLRP's "
                                   "protocol).")
    e.add_argument("models", nargs="*", metavar="EXPLAINER_OR_MODEL",
                   help="a model (one explainer is compiled per --methods) and/or compiled explainers "
                        "(default: the bundled digits model)")
    e.add_argument("--data", help=".npy images [N, C, H, W], .npz (x, y, masks) or a folder (x.npy, y.npy, "
                                  "masks.npy); default: the bundled digits test split. A .npz of token ids "
                                  "(input_ids, attention_mask, y) is evaluated by token ablation (MoRF and LeRF)")
    e.add_argument("--labels", help=".npy int labels [N]: the target class (default: the predicted class)")
    e.add_argument("--target", choices=("label", "predicted"),
                   help="the class whose probability is tracked (default: the label where labels are given)")
    e.add_argument("--masks", help=".npy masks [N, H, W] of the relevant region (default: from --data)")
    e.add_argument("--methods", help=f"comma-separated rules (default: {','.join(DEFAULT_METHODS)}; token data: "
                                     f"{','.join(TOKEN_METHODS)}); '{RANDOM}' is always the baseline")
    e.add_argument("--train", help="training data to fit patterns on (default: train_x.npy or train.npz "
                                   "beside the model)")
    e.add_argument("--patch", type=int, help="patch side in pixels (default: 9 px per 224 px of image side, "
                                             "at least 1)")
    e.add_argument("--steps", type=int, default=100, help="patches removed, at most (default 100); token data: "
                                                          "every token is removed")
    e.add_argument("--samples", type=int, help="use the first N samples (default: all)")
    e.add_argument("--random-orders", type=int, default=5, help="random orders averaged for the baseline")
    e.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    e.add_argument("--json", help="write the results as JSON")
    e.add_argument("--plot", help="PNG of the perturbation curves")
    e.add_argument("--heatmaps", help="PNG grid of the first inputs and each method's heatmap")
    e.add_argument("--force", action="store_true", help="overwrite existing output files")
    e.set_defaults(run=cmd_evaluate)


def cmd_evaluate(args) -> None:
    outputs = [p for p in (args.json, args.plot, args.heatmaps) if p]
    _check_options(args, outputs)
    model, explainers = _split_models(args.models)
    if args.data and is_token_data(args.data):
        return _evaluate_tokens_command(args, model, explainers)
    data = _dataset(args, model, explainers)
    methods = _methods(args, model)
    x = data.x if args.samples is None else data.x[:args.samples]
    fill = data.x.mean(axis=(0, 2, 3))  # the mean of all the data, not only of the samples evaluated
    notes = []

    scorer = Scorer(onnx.load(model) if model else forward_of(explainers[0]))
    scorer.check(x)
    probabilities = np.concatenate([scorer.probabilities(x[i:i + 512]) for i in range(0, len(x), 512)])
    predicted = probabilities.argmax(1)
    labels = None if data.labels is None else data.labels[:len(x)]
    targets, by_label = _choose_targets(args, probabilities, labels)
    masks = None if data.masks is None else data.masks[:len(x)]

    with tempfile.TemporaryDirectory(prefix="relgraph-evaluate-") as folder:
        paths = {}
        if model is not None and (methods or not explainers):
            train = training_data(model, args.train, args.data or str(DEFAULT_DATA))
            paths = compile_methods(model, methods or list(DEFAULT_METHODS), folder,
                                    bounds=(float(data.x.min()), float(data.x.max())), train=train,
                                    explicit=bool(methods), notes=notes)
        compiled = set(paths)
        paths.update(_labelled(explainers, paths))
        relevances = {label: relevance_of(p, x, targets) for label, p in paths.items()}
    result = evaluate(scorer, x, targets, relevances, patch=args.patch or default_patch(*x.shape[2:]),
                      steps=args.steps, masks=masks, fill=fill, random_orders_count=args.random_orders,
                      seed=args.seed, progress=True)
    accuracy = None if labels is None else float(np.mean(predicted == labels))
    _print_table(result, x, model or explainers[0], data, by_label, accuracy, notes)
    sources = {k: "compiled" if k in compiled else os.path.abspath(v) for k, v in paths.items()}
    report = _report(result, model or explainers[0], data, len(x), by_label, accuracy, args, sources)
    if args.json:
        _write_json(args.json, report)
    if args.plot or args.heatmaps:
        if not plot.available():
            print(f"note: plots need matplotlib: pip install 'relgraph[eval]' (skipped "
                  f"{', '.join(p for p in (args.plot, args.heatmaps) if p)})")
            return
        if args.plot:
            with replacing(args.plot) as temporary:
                plot.perturbation_curves(temporary, result, title=f"{Path(report['model']).name} on "
                                                                  f"{Path(data.source).name}")
            print(f"wrote {args.plot}")
        if args.heatmaps:
            with replacing(args.heatmaps) as temporary:
                plot.heatmap_grid(temporary, x, relevances, targets, predicted, masks, result.mask_share)
            print(f"wrote {args.heatmaps}")


def _evaluate_tokens_command(args, model, explainers) -> None:
    """``relgraph evaluate`` on token data: :func:`evaluate_tokens` for each method, a table, JSON and a plot."""
    for flag, value in (("--patch", args.patch), ("--masks", args.masks), ("--train", args.train),
                        ("--heatmaps", args.heatmaps)):
        if value is not None:
            raise RelgraphError(f"{flag} is for images; token data are ablated token by token")
    if model is None:
        raise RelgraphError("token ablation scores the plain model: give the model as well as the explainers")
    methods = _methods(args, model)
    data = load_token_data(args.data, args.labels)
    n = len(data.ids) if args.samples is None else min(args.samples, len(data.ids))
    ids, mask = data.ids[:n], data.mask[:n]
    scorer = TokenScorer(model)
    scorer.check(ids)
    probabilities = np.concatenate([scorer.ablated(ids[i:i + 512], mask[i:i + 512], np.ones(ids[i:i + 512].shape))
                                    for i in range(0, n, 512)])
    labels = None if data.labels is None else data.labels[:n]
    targets, by_label = _choose_targets(args, probabilities, labels)
    notes = []
    with tempfile.TemporaryDirectory(prefix="relgraph-evaluate-") as folder:
        paths = {}
        if methods or not explainers:
            paths = compile_methods(model, methods or list(TOKEN_METHODS), folder, bounds=None, train=None,
                                    explicit=True, notes=notes)
        compiled = set(paths)
        paths.update(_labelled(explainers, paths))
        relevances = {label: token_relevance_of(p, ids, mask, targets) for label, p in paths.items()}
    result = evaluate_tokens(scorer, ids, mask, targets, relevances, random_orders_count=args.random_orders,
                             seed=args.seed, progress=True)
    accuracy = None if labels is None else float(np.mean(probabilities.argmax(1) == labels))
    target = "the label" if by_label else "the predicted class"
    print(f"{Path(model).name} on {n} sequences of {data.source}: token embeddings set to zero one token at a "
          f"time ({result.lengths.min()}–{result.lengths.max()} tokens per sequence), most relevant first (MoRF) "
          f"and least relevant first (LeRF); p = softmax probability of {target}; AUC over the fraction removed")
    if accuracy is not None:
        print(f"accuracy on these samples: {accuracy:.4f}")
    print(f"{'method':28} {'AUC MoRF':>9} {'± s.e.':>7} {'AUC LeRF':>9} {'± s.e.':>7} {'ΔA LeRF−MoRF':>13} {'± s.e.':>7}")
    for label, auc in result.auc.items():
        e = result.stderr[label]
        print(f"{label:28} {auc['morf']:9.4f} {e['morf']:7.4f} {auc['lerf']:9.4f} {e['lerf']:7.4f} "
              f"{result.delta[label]:13.4f} {e['delta']:7.4f}")
    for note in notes:
        print(f"note: {note}")
    sources = {k: "compiled" if k in compiled else os.path.abspath(v) for k, v in paths.items()}
    if args.json:
        _write_json(args.json, {
            "auc": result.auc, "delta": result.delta, "stderr": result.stderr,
            "curves": {k: {o: [float(p) for p in c] for o, c in v.items()} for k, v in result.curves.items()},
            "fraction_removed": result.grid, "model": str(model), "data": data.source, "samples": n,
            "target": "label" if by_label else "predicted", "accuracy": accuracy,
            "ablation": "token embedding set to zero", "random_orders": args.random_orders, "seed": args.seed,
            "methods": sources})
    if args.plot:
        if not plot.available():
            print(f"note: plots need matplotlib: pip install 'relgraph[eval]' (skipped {args.plot})")
            return
        with replacing(args.plot) as temporary:
            plot.token_ablation_curves(temporary, result, title=f"{Path(model).name} on {Path(data.source).name}")
        print(f"wrote {args.plot}")


def _methods(args, model) -> list[str] | None:
    """--methods as a list (None when not given), checked."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if methods:
        check_methods(methods)
    if methods and model is None:
        raise RelgraphError("--methods needs a plain model to compile; explainers are evaluated as they are")
    return methods


def _choose_targets(args, probabilities: np.ndarray, labels) -> tuple[np.ndarray, bool]:
    """The tracked class of each sample (the label where there are labels, unless --target predicted) and
    whether it is the label."""
    if labels is not None and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        bad = labels[(labels < 0) | (labels >= probabilities.shape[1])][0]
        raise RelgraphError(f"label {bad} is out of range for a model with {probabilities.shape[1]} classes")
    if args.target == "label" and labels is None:
        raise RelgraphError("--target label needs labels: pass --labels Y.npy (or y in the data)")
    by_label = labels is not None and args.target != "predicted"
    return (labels if by_label else probabilities.argmax(1)), by_label


def _check_options(args, outputs) -> None:
    if args.steps < 1:
        raise RelgraphError(f"--steps must be at least 1, got {args.steps}")
    if args.samples is not None and args.samples < 1:
        raise RelgraphError(f"--samples must be at least 1, got {args.samples}")
    if args.patch is not None and args.patch < 1:
        raise RelgraphError(f"--patch must be at least 1, got {args.patch}")
    if args.random_orders < 0:
        raise RelgraphError(f"--random-orders must be ≥ 0, got {args.random_orders}")
    for path in outputs:
        check_output(path, [*args.models, args.data, args.labels, args.masks, args.train], overwrite=args.force)
    if len(set(map(os.path.abspath, outputs))) != len(outputs):
        raise RelgraphError("--json, --plot and --heatmaps must be different files")
    for path, ext in ((args.plot, ".png"), (args.heatmaps, ".png"), (args.json, ".json")):
        if path and not path.lower().endswith(ext):
            raise RelgraphError(f"{path}: expected a {ext} file")


def _is_explainer(path: str) -> bool:
    return is_explainer(read_onnx(path, weights=False))


def _split_models(paths: list[str]) -> tuple[str | None, list[str]]:
    if not paths:
        if not DEFAULT_MODEL.is_file():
            raise RelgraphError(f"no model given and the bundled {DEFAULT_MODEL} is not here: pass a model")
        return str(DEFAULT_MODEL), []
    models = [p for p in paths if not _is_explainer(p)]
    if len(models) > 1:
        raise RelgraphError(f"give at most one plain model (the one scored), got {len(models)}: "
                            f"{', '.join(models)}")
    return (models[0] if models else None), [p for p in paths if p not in models]


def _dataset(args, model, explainers) -> Dataset:
    if args.data is None:
        if model is None or Path(model).resolve() != DEFAULT_MODEL.resolve():
            raise RelgraphError("--data is required (the default data belong to the bundled digits model)")
        return load_dataset(DEFAULT_DATA, args.labels or DEFAULT_LABELS, args.masks)
    return load_dataset(args.data, args.labels, args.masks)


def _labelled(explainers: list[str], taken: dict) -> dict[str, str]:
    """Explainers by their rule name, or their file name where two share one."""
    out = {}
    for path in explainers:
        meta = {p.key: p.value for p in read_onnx(path, weights=False).metadata_props}
        label = meta.get("relgraph.rule") or Path(path).stem
        out[label if label not in out and label not in taken else Path(path).name] = path
    return out


def _print_table(result: Evaluation, x, model, data: Dataset, labelled: bool, accuracy, notes) -> None:
    n, _, h, w = x.shape
    target = "the label" if labelled else "the predicted class"
    print(f"{Path(model).name} on {n} samples of {data.source}: {result.patch}×{result.patch} patches "
          f"({result.patches} per {h}×{w} image), {result.steps} removed, replaced by the per-channel data "
          f"mean {', '.join(f'{v:.4g}' for v in result.fill)}; p = softmax probability of {target}")
    if accuracy is not None:
        print(f"accuracy on these samples: {accuracy:.4f}")
    masks = bool(result.mask_share)
    header = f"{'method':28} {'AOPC':>8} {'± s.e.':>8}" + (f" {'R⁺ on mask':>11} {'R⁺ off mask':>12}"
                                                           if masks else "")
    print(header)
    for label in result.aopc:
        row = f"{label:28} {result.aopc[label]:8.4f} {result.stderr[label]:8.4f}"
        if masks:
            share = result.mask_share.get(label)
            row += (f" {share:11.3f} {1 - share:12.3f}" if share is not None
                    else f" {result.mask_area:11.3f} {1 - result.mask_area:12.3f}  (mask area: a uniform map)")
        print(row)
    for note in notes:
        print(f"note: {note}")


def _report(result: Evaluation, model, data: Dataset, n, labelled, accuracy, args, sources) -> dict:
    def clean(v):
        return None if isinstance(v, float) and not np.isfinite(v) else v

    report = {
        "aopc": {k: clean(v) for k, v in result.aopc.items()},
        "aopc_stderr": {k: clean(v) for k, v in result.stderr.items()},
        "curves": {k: [float(p) for p in v] for k, v in result.curves.items()},
        "model": str(model),
        "data": data.source,
        "samples": n,
        "target": "label" if labelled else "predicted",
        "accuracy": accuracy,
        "patch": result.patch,
        "patches": result.patches,
        "steps": result.steps,
        "replacement": "per-channel mean of the data",
        "fill": result.fill,
        "random_orders": args.random_orders,
        "seed": args.seed,
        "methods": sources,
    }
    if result.mask_share:
        report["mask_share"] = {k: clean(v) for k, v in result.mask_share.items()}
        report["mask_area"] = result.mask_area
    return report


def _write_json(path: str, report: dict) -> None:
    with replacing(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
