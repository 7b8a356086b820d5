"""``relgraph evaluate``: how faithful is a heatmap? Image degradation and AOPC (Samek et al. 2017).

A heatmap is faithful when the pixels it calls relevant are the ones the model needs. The experiment
(Samek et al., "Evaluating the visualization of what a deep neural network has learned", IEEE TNNLS 2017;
as used by Kindermans et al. 2018, Sec. 5) measures it by destroying the most relevant regions first:

1. split each image [C, H, W] into non-overlapping p×p patches (the last row and column of patches are
   cropped where p does not divide H or W), and sum the heatmap over each patch and all channels;
2. order the patches by that sum, most relevant first (ties: lower patch index first);
3. for n = 0 … L, L = min(steps, #patches), replace the first n patches by the per-channel mean of the
   evaluation data (Samek et al. draw random values; the mean removes the information without adding
   texture) and read the model's softmax probability p(x⁽ⁿ⁾) of the target class;
4. AOPC = ⟨ 1/(L+1) · Σ_{k=0..L} (p(x⁽⁰⁾) − p(x⁽ᵏ⁾)) ⟩ over the samples: the area over the perturbation
   curve. A steeper drop, a larger AOPC, a better heatmap.

The baseline is a random order of the patches (the mean of ``random_orders`` seeded orders per sample).
Where the data come with ground-truth masks of the relevant object, the share of positive relevance
that falls inside the mask, Σ R⁺·m / Σ R⁺ per sample, says how much of the explanation is on the object
and how much on the background; a uniform heatmap would score the mask's area.

Token models (int64 ``input_ids``, explained per token) are evaluated by token ablation instead, the protocol of
the AttnLRP paper's Table 1 (Achtibat et al., ICML 2024): set token embeddings to zero most relevant first (MoRF)
and least relevant first (LeRF), and compare the areas under the two curves (:func:`evaluate_tokens`).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from .errors import RelgraphError
from .files import check_output, replacing
from .graph import Builder, load_model, to_proto
from .passes.relevance import explained_values, token_ids
from .progress import Progress

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "digits" / "digits_cnn.onnx"
DEFAULT_DATA = ROOT / "models" / "digits" / "test_x.npy"
DEFAULT_LABELS = ROOT / "models" / "digits" / "test_y.npy"
DEFAULT_METHODS = ("gradient", "input-x-gradient", "epsilon", "epsilon-plus-flat", "patternattribution")
TOKEN_METHODS = ("attnlrp", "cp-lrp", "input-x-gradient")  # the default methods on a token model
KEEP = "relgraph.keep"                                      # the token ablation model's per-token scale
TOKEN_GRID = 21                                             # fractions removed at which mean curves are drawn
RANDOM = "random"
PATTERN_METHODS = ("patternnet", "patternattribution")
BOX_METHODS = ("zbox", "epsilon-gamma-box")   # need input bounds: the data's range
TRAIN_FILES = ("train_x.npy", "train.npz")     # training data beside a model, for fitting patterns
PAPER_PATCH, PAPER_SIDE = 9, 224              # 9×9 patches on 224×224 images (Kindermans et al. 2018)
IMAGES_PER_RUN = 4096                         # degraded images per onnxruntime call (bounded by size too)
FLOATS_PER_RUN = 1 << 24


# ------------------------------------------------------------------------------------------------ the experiment


def default_patch(height: int, width: int) -> int:
    """The patch side that covers the same fraction of the image as 9 px of 224 px, rounded, at least 1.

    224×224 → 9, 64×64 → 3, 32×32 and 8×8 → 1 (single pixels).
    """
    return max(1, round(PAPER_PATCH * min(height, width) / PAPER_SIDE))


def patch_grid(height: int, width: int, patch: int) -> tuple[np.ndarray, int]:
    """Patch index of every pixel, [H, W] (row-major over the ⌈H/p⌉×⌈W/p⌉ patches), and the patch count."""
    if patch < 1:
        raise RelgraphError(f"--patch must be at least 1, got {patch}")
    rows, cols = -(-height // patch), -(-width // patch)
    grid = (np.arange(height)[:, None] // patch) * cols + np.arange(width)[None, :] // patch
    return grid, rows * cols


def patch_scores(relevance: np.ndarray, grid: np.ndarray, count: int) -> np.ndarray:
    """Σ relevance over each patch and every channel: [N, C, H, W] → [N, count] (float64)."""
    per_pixel = np.asarray(relevance, np.float64).sum(axis=1).reshape(len(relevance), -1)
    flat = grid.reshape(-1)
    return np.stack([np.bincount(flat, weights=r, minlength=count) for r in per_pixel])


def most_relevant_first(scores: np.ndarray) -> np.ndarray:
    """Patch orders [N, count]: decreasing score, ties in patch order (a stable sort)."""
    return np.argsort(-scores, axis=1, kind="stable")


def random_orders(n: int, count: int, orders: int, seed: int) -> np.ndarray:
    """``orders`` seeded random permutations of the patches per sample: [orders, N, count]."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permuted(np.tile(np.arange(count), (n, 1)), axis=1) for _ in range(orders)])


def degraded(x: np.ndarray, orders: np.ndarray, grid: np.ndarray, fill: np.ndarray, steps: int) -> np.ndarray:
    """x⁽ᵏ⁾ for k = 0 … steps: the first k patches of each order replaced by ``fill`` (per channel).

    x [B, C, H, W], orders [B, count] → [B, steps+1, C, H, W]. A pixel is replaced at step k when its
    patch's rank in the order is below k.
    """
    b = len(x)
    rank = np.empty_like(orders)
    rank[np.arange(b)[:, None], orders] = np.arange(orders.shape[1])[None, :]
    pixel_rank = rank[:, grid]                                             # [B, H, W]
    k = np.arange(steps + 1)
    removed = pixel_rank[:, None, None, :, :] < k[None, :, None, None, None]  # [B, K, 1, H, W]
    return np.where(removed, fill[None, None, :, None, None], x[:, None]).astype(np.float32)


def aopc(curves: np.ndarray) -> np.ndarray:
    """Per sample 1/(L+1) Σ_{k=0..L} (p₀ − p_k) for curves [N, L+1] (p_k at step k)."""
    curves = np.asarray(curves, np.float64)
    return (curves[:, :1] - curves).mean(axis=1)


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """The mean and its standard error s/√n (NaN for a single value)."""
    values = np.asarray(values, np.float64)
    stderr = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(stderr)


def positive_share(relevance: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Σ R⁺·m / Σ R⁺ per sample (R⁺ = max(R, 0) per element, the mask broadcast over channels).

    NaN for a sample without positive relevance.
    """
    r = np.maximum(np.asarray(relevance, np.float64), 0.0).reshape(len(relevance), -1)
    m = np.broadcast_to(masks, relevance.shape).reshape(len(relevance), -1)
    total = r.sum(axis=1)
    inside = (r * m).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


class Scorer:
    """The model's softmax probability of a target class, p(x)[t], with onnxruntime in batches.

    ``proto``: the classifier. Its first output is taken as probabilities when a Softmax produces it, as
    log-probabilities after a LogSoftmax, and as logits otherwise (then a float64 softmax is applied).
    """

    def __init__(self, proto):
        import onnxruntime as ort

        output = proto.graph.output[0].name
        producer = next((n.op_type for n in proto.graph.node if output in n.output), None)
        self.kind = {"Softmax": "probabilities", "LogSoftmax": "log-probabilities"}.get(producer, "logits")
        self.input_name = proto.graph.input[0].name
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        self.sample_shape = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RelgraphError(f"onnxruntime cannot run the model: {str(exc).splitlines()[0]}") from None
        self.output = output

    def check(self, x: np.ndarray) -> None:
        """Raise unless ``x`` [N, …] fits the model's input."""
        if len(x.shape) - 1 != len(self.sample_shape) or any(
                d is not None and d != s for d, s in zip(self.sample_shape, x.shape[1:])):
            expected = ", ".join("?" if d is None else str(d) for d in self.sample_shape)
            raise RelgraphError(f"the data have shape {list(x.shape)}, the model expects [N, {expected}]")

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N, K] (float64)."""
        return self.normalized(self.session.run([self.output], {self.input_name: x})[0])

    def normalized(self, out: np.ndarray) -> np.ndarray:
        """The model's output as class probabilities [N, K] (float64), whatever :attr:`kind` it is."""
        out = np.asarray(out, np.float64)
        if self.kind == "probabilities":
            return out
        if self.kind == "logits":
            out = out - out.max(axis=1, keepdims=True)
        p = np.exp(out)
        return p / p.sum(axis=1, keepdims=True) if self.kind == "logits" else p

    def target_probability(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return self.probabilities(x)[np.arange(len(x)), targets]


def perturbation_curves(scorer: Scorer, x: np.ndarray, targets: np.ndarray, orders: np.ndarray,
                        grid: np.ndarray, fill: np.ndarray, steps: int, progress=None) -> np.ndarray:
    """p(x⁽ᵏ⁾)[target] for k = 0 … steps and each sample: [N, steps+1]."""
    per_image = int(np.prod(x.shape[1:]))
    images = max(1, min(IMAGES_PER_RUN, FLOATS_PER_RUN // per_image))
    batch = max(1, images // (steps + 1))
    curves = np.empty((len(x), steps + 1))
    for start in range(0, len(x), batch):
        sl = slice(start, start + batch)
        xs = degraded(x[sl], orders[sl], grid, fill, steps)
        flat = xs.reshape(-1, *x.shape[1:])
        p = scorer.target_probability(flat, np.repeat(targets[sl], steps + 1))
        curves[sl] = p.reshape(-1, steps + 1)
        if progress is not None:
            progress.update(len(xs))
    return curves


@dataclass
class Evaluation:
    """What :func:`evaluate` measured; ``curves`` are the mean p over samples at each step."""
    aopc: dict
    stderr: dict
    curves: dict
    per_sample: dict
    patch: int
    patches: int
    steps: int
    fill: list
    mask_share: dict = field(default_factory=dict)
    mask_area: float | None = None


def evaluate(scorer: Scorer, x: np.ndarray, targets: np.ndarray, relevances: dict, *, patch: int,
             steps: int = 100, masks=None, fill=None, random_orders_count: int = 5, seed: int = 0,
             progress: bool = False) -> Evaluation:
    """Image degradation of ``x`` [N, C, H, W] by each heatmap in ``relevances`` (label → [N, C, H, W]),
    plus the random baseline. ``fill`` defaults to the per-channel mean of ``x``."""
    n, c, h, w = x.shape
    grid, count = patch_grid(h, w, patch)
    steps = min(steps, count)
    fill = x.mean(axis=(0, 2, 3)) if fill is None else np.asarray(fill, np.float32)
    random = random_orders(n, count, random_orders_count, seed) if random_orders_count else None
    total = (len(relevances) + (random_orders_count or 0)) * n * (steps + 1)
    curves, per_sample = {}, {}
    with Progress(total, "degrading", min_total=20000) as bar:
        bar.enabled = bar.enabled and progress
        for label, relevance in relevances.items():
            orders = most_relevant_first(patch_scores(relevance, grid, count))
            curves[label] = perturbation_curves(scorer, x, targets, orders, grid, fill, steps, bar)
        if random is not None:
            runs = [perturbation_curves(scorer, x, targets, o, grid, fill, steps, bar) for o in random]
            curves[RANDOM] = np.mean(runs, axis=0)
            per_sample[RANDOM] = np.mean([aopc(run) for run in runs], axis=0)
    per_sample = {label: per_sample.get(label, aopc(curve)) for label, curve in curves.items()}
    stats = {label: mean_and_stderr(v) for label, v in per_sample.items()}
    result = Evaluation(aopc={k: s[0] for k, s in stats.items()}, stderr={k: s[1] for k, s in stats.items()},
                        curves={k: v.mean(axis=0) for k, v in curves.items()}, per_sample=per_sample,
                        patch=patch, patches=count, steps=steps, fill=[float(v) for v in fill])
    if masks is not None:
        for label, relevance in relevances.items():
            share = positive_share(relevance, masks)
            result.mask_share[label] = float(np.nanmean(share)) if np.any(np.isfinite(share)) else float("nan")
        result.mask_area = float(np.broadcast_to(masks, x.shape).mean())
    return result


# ------------------------------------------------------------------------------------------------ token ablation


def ablation_model(model_path: str):
    """The token classifier with one more input, ``relgraph.keep`` [N, S] (float): the embedding lookup's output
    e = E[ids] becomes e ⊙ keep[…, None] before anything reads it.

    keep = 1 is the model itself; keep = 0 sets that token's embedding to zero, exactly the ablation of the
    AttnLRP protocol, at the value a token explainer explains (the word embedding, before position and
    token-type embeddings are added, which stay). Replacing the id by the pad id instead substitutes the pad
    token's embedding, which is zero only where the model was trained with a padding index (Hugging Face's
    BERT), not in general (GPT-2, Llama).
    """
    model = load_model(model_path)
    x, _ = explained_values(model)
    ids = token_ids(x)
    if ids is None:
        raise RelgraphError(f"{model_path} is not fed token ids: token ablation needs a model with int64 "
                            f"input_ids read by an embedding lookup")
    out = model.graph.outputs[0]
    if out.shape is None or len(out.shape) != 2:
        raise RelgraphError(f"token ablation scores classifiers with logits [N, classes]; '{out.name}' has shape "
                            f"{None if out.shape is None else list(out.shape)}")
    uses = list(x.uses())
    keep = ir.Value(name=KEEP, shape=ir.Shape(ids.shape), type=ir.TensorType(x.dtype))
    model.graph.inputs.append(keep)
    b = Builder(model.graph, prefix="ablation")
    scaled = b.op("Mul", x, b.op("Unsqueeze", keep, b.ints([-1])))
    for node, index in uses:
        node.replace_input_with(index, scaled)
    model.graph.sort()
    return to_proto(model)


class TokenScorer(Scorer):
    """p(x)[t] of a token classifier with some token embeddings set to zero (:func:`ablation_model`)."""

    def __init__(self, model_path: str):
        proto = ablation_model(model_path)
        super().__init__(proto)
        keep = next(v for v in proto.graph.input if v.name == KEEP)
        self.keep_dtype = onnx.helper.tensor_dtype_to_np_dtype(keep.type.tensor_type.elem_type)  # the embedding's
        names = [i.name for i in self.session.get_inputs()]
        other = [n for n in names if n not in (self.input_name, KEEP, "attention_mask", "token_type_ids")]
        if other:
            raise RelgraphError(f"token ablation feeds input_ids, attention_mask and token_type_ids; the model "
                                f"also needs {', '.join(other)}")
        self.names = names

    def check(self, ids: np.ndarray) -> None:
        if ids.ndim != 2 or (self.sample_shape[0] is not None and ids.shape[1] != self.sample_shape[0]):
            raise RelgraphError(f"the token ids have shape {list(ids.shape)}, the model expects "
                                f"[N, {self.sample_shape[0] or '?'}]")

    def ablated(self, ids: np.ndarray, mask: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Class probabilities [N, K] with token embeddings scaled by ``keep`` [N, S] (0: removed)."""
        feed = {self.input_name: ids, KEEP: keep.astype(self.keep_dtype)}
        if "attention_mask" in self.names:
            feed["attention_mask"] = mask
        if "token_type_ids" in self.names:  # one segment, as Hugging Face's default
            feed["token_type_ids"] = np.zeros_like(ids)
        return self.normalized(self.session.run([self.output], feed)[0])


def token_ranks(relevance: np.ndarray, mask: np.ndarray, morf: bool = True) -> np.ndarray:
    """Each token's place in the removal order, [N, S]: decreasing relevance (MoRF) or increasing (LeRF), ties
    in sequence order; padding (mask 0) gets S: it is never removed."""
    n, s = relevance.shape
    key = np.where(mask > 0, -relevance if morf else relevance, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    ranks = np.empty_like(order)
    ranks[np.arange(n)[:, None], order] = np.arange(s)[None, :]
    return np.where(mask > 0, ranks, s)


def random_token_ranks(mask: np.ndarray, orders: int, seed: int) -> np.ndarray:
    """``orders`` seeded random removal orders of each sample's tokens, [orders, N, S] (padding: S)."""
    rng = np.random.default_rng(seed)
    return np.stack([token_ranks(rng.random(mask.shape), mask) for _ in range(orders)])


def token_curves(scorer: TokenScorer, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray, ranks: np.ndarray,
                 progress=None) -> np.ndarray:
    """p_k = p(x⁽ᵏ⁾)[target] for k = 0 … S, x⁽ᵏ⁾ the sample with the embeddings of its k first tokens in the
    order set to zero: [N, S+1] (past a sample's length L every token is removed and p_k = p_L)."""
    n, s = ids.shape
    steps = np.arange(s + 1)
    batch = max(1, IMAGES_PER_RUN // (s + 1))
    curves = np.empty((n, s + 1))
    for start in range(0, n, batch):
        sl = slice(start, start + batch)
        keep = (ranks[sl, None, :] >= steps[None, :, None]).reshape(-1, s)          # [B·(S+1), S]
        p = scorer.ablated(np.repeat(ids[sl], s + 1, axis=0), np.repeat(mask[sl], s + 1, axis=0), keep)
        curves[sl] = p[np.arange(len(keep)), np.repeat(targets[sl], s + 1)].reshape(-1, s + 1)
        if progress is not None:
            progress.update(len(keep))
    return curves


def token_auc(curves: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per sample the area under p over the fraction of tokens removed, t_k = k/L ∈ [0, 1] (trapezoids):
    A = Σ_{k=0..L−1} (p_k + p_{k+1}) / (2L), L the sample's token count; samples of any length compare."""
    n, width = curves.shape
    k = np.arange(width)[None, :]
    length = np.asarray(lengths)[:, None]
    weights = np.where(k < length, 1.0, 0.0) + np.where((k > 0) & (k <= length), 1.0, 0.0)
    return (weights * curves).sum(axis=1) / (2.0 * lengths)


def curves_on_grid(curves: np.ndarray, lengths: np.ndarray, points: int = TOKEN_GRID) -> np.ndarray:
    """The mean curve over samples at ``points`` evenly spaced fractions removed (each sample's curve linearly
    interpolated between its k/L)."""
    grid = np.linspace(0.0, 1.0, points)
    return np.mean([np.interp(grid, np.arange(L + 1) / L, c[:L + 1]) for c, L in zip(curves, lengths)], axis=0)


@dataclass
class TokenEvaluation:
    """What :func:`evaluate_tokens` measured. ``auc[label]`` = {"morf", "lerf"} means over samples (the random
    baseline: one order, under "morf" and "lerf" alike), ``delta`` = mean of A_LeRF − A_MoRF, ``stderr`` their
    standard errors under the same keys; ``curves[label][order]``: the mean curve at ``grid``."""
    auc: dict
    delta: dict
    stderr: dict
    curves: dict
    per_sample: dict
    grid: list
    lengths: np.ndarray


def evaluate_tokens(scorer: TokenScorer, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray, relevances: dict,
                    *, random_orders_count: int = 5, seed: int = 0, progress: bool = False) -> TokenEvaluation:
    """Token ablation (the AttnLRP paper's Table 1 protocol) of token ids [N, S] by each token relevance in
    ``relevances`` (label → [N, S]), plus a random order.

    Each sample's L tokens (mask 1, [CLS] included) are removed one at a time, their embeddings set to zero
    (:func:`ablation_model`), most relevant first (MoRF) and least relevant first (LeRF); the softmax probability
    of the target is read after each step (:func:`token_curves`). A_MoRF and A_LeRF are the areas under the two
    curves over the fraction removed (:func:`token_auc`), and ΔA = A_LeRF − A_MoRF: a faithful explanation drops
    the probability fast when its relevant tokens go first (small A_MoRF) and slowly when they go last (large
    A_LeRF), so the larger ΔA, the better.
    """
    mask = np.asarray(mask)
    lengths = (mask > 0).sum(axis=1)
    if np.any(lengths == 0):
        raise RelgraphError(f"sample {int(np.argmin(lengths))} has no token (its attention mask is all zero)")
    n, s = ids.shape
    total = (2 * len(relevances) + random_orders_count) * n * (s + 1)
    per_sample, curves = {}, {}
    with Progress(total, "ablating", min_total=20000) as bar:
        bar.enabled = bar.enabled and progress
        for label, relevance in relevances.items():
            for order, morf in (("morf", True), ("lerf", False)):
                run = token_curves(scorer, ids, mask, targets, token_ranks(relevance, mask, morf), bar)
                per_sample.setdefault(label, {})[order] = token_auc(run, lengths)
                curves.setdefault(label, {})[order] = curves_on_grid(run, lengths)
        if random_orders_count:
            runs = [token_curves(scorer, ids, mask, targets, r, bar)
                    for r in random_token_ranks(mask, random_orders_count, seed)]
            area = np.mean([token_auc(run, lengths) for run in runs], axis=0)
            mean_curve = np.mean([curves_on_grid(run, lengths) for run in runs], axis=0)
            per_sample[RANDOM] = {"morf": area, "lerf": area}
            curves[RANDOM] = {"morf": mean_curve, "lerf": mean_curve}
    auc, delta, stderr = {}, {}, {}
    for label, areas in per_sample.items():
        stats = {order: mean_and_stderr(a) for order, a in areas.items()}
        stats["delta"] = mean_and_stderr(areas["lerf"] - areas["morf"])
        auc[label] = {order: stats[order][0] for order in ("morf", "lerf")}
        delta[label] = stats["delta"][0]
        stderr[label] = {order: v[1] for order, v in stats.items()}
    return TokenEvaluation(auc=auc, delta=delta, stderr=stderr, curves=curves, per_sample=per_sample,
                           grid=[float(t) for t in np.linspace(0.0, 1.0, TOKEN_GRID)], lengths=lengths)


# ------------------------------------------------------------------------------------------------ data


@dataclass
class Dataset:
    x: np.ndarray
    labels: np.ndarray | None
    masks: np.ndarray | None
    source: str


def _read_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise RelgraphError(f"{what} not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise RelgraphError(f"cannot read {what} {path} as a .npy array: {exc}") from None


def load_dataset(data, labels=None, masks=None) -> Dataset:
    """Images, and optionally labels and masks, from a .npy (images only), a .npz or a folder.

    A .npz holds ``x`` and optionally ``y`` and ``masks``; a folder holds ``x.npy`` and optionally
    ``y.npy`` and ``masks.npy``. ``labels`` / ``masks`` paths override what the data carry. Images are
    converted to float32 (float16 on disk is fine); labels to int64; masks to bool.
    """
    path = Path(data)
    arrays = {}
    if path.is_dir():
        for key, name in (("x", "x.npy"), ("y", "y.npy"), ("masks", "masks.npy")):
            if (path / name).is_file():
                arrays[key] = _read_npy(path / name, name)
        if "x" not in arrays:
            raise RelgraphError(f"data folder {path} has no x.npy (expected x.npy, y.npy, masks.npy)")
    elif not path.exists():
        raise RelgraphError(f"data not found: {path}")
    elif path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x", "y", "masks") if k in z.files}
        except Exception as exc:
            raise RelgraphError(f"cannot read {path} as a .npz archive: {exc}") from None
        if "x" not in arrays:
            raise RelgraphError(f"{path} has no array 'x' (expected x, and optionally y and masks)")
    elif path.suffix.lower() == ".npy":
        arrays["x"] = _read_npy(path, "data")
    else:
        raise RelgraphError(f"data must be a .npy, a .npz or a folder, got {path}")
    if labels is not None:
        arrays["y"] = _read_npy(Path(labels), "labels")
    if masks is not None:
        arrays["masks"] = _read_npy(Path(masks), "masks")
    return _checked(arrays, str(path))


def _checked(arrays: dict, source: str) -> Dataset:
    x = arrays["x"]
    if x.dtype.kind != "f":
        raise RelgraphError(f"data {source} has dtype {x.dtype}; expected floating-point images")
    x = x.astype(np.float32)
    if x.ndim != 4:
        raise RelgraphError(f"data {source} has shape {list(x.shape)}; evaluate needs images [N, C, H, W]")
    if not np.all(np.isfinite(x)):
        raise RelgraphError(f"data {source} contains NaN or infinite values")
    y = arrays.get("y")
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise RelgraphError(f"labels must be integers of shape [{len(x)}] (one per image), got "
                                f"{y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    m = arrays.get("masks")
    if m is not None:
        if m.ndim == 3:
            m = m[:, None]
        if m.ndim != 4 or len(m) != len(x) or m.shape[2:] != x.shape[2:] or m.shape[1] not in (1, x.shape[1]):
            raise RelgraphError(f"masks have shape {list(arrays['masks'].shape)}; for images {list(x.shape)} "
                                f"they must be [N, H, W], [N, 1, H, W] or [N, C, H, W]")
        m = m.astype(bool)
    return Dataset(x, y, m, source)


@dataclass
class TokenData:
    ids: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    source: str


def is_token_data(path) -> bool:
    """Whether ``path`` is a .npz of token ids (it holds ``input_ids``)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "input_ids" in z.files
    except Exception:
        return False


def load_token_data(path, labels=None) -> TokenData:
    """Token ids from a .npz: ``input_ids`` int [N, S], optionally ``attention_mask`` [N, S] (default all ones)
    and ``y`` int [N]; ``labels`` (a .npy) overrides ``y``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("input_ids", "attention_mask", "y") if k in z.files}
    except Exception as exc:
        raise RelgraphError(f"cannot read {path} as a .npz archive: {exc}") from None
    ids = arrays["input_ids"]
    if ids.dtype.kind not in "iu" or ids.ndim != 2:
        raise RelgraphError(f"input_ids in {path} must be integers [N, S], got {ids.dtype} {list(ids.shape)}")
    mask = arrays.get("attention_mask", np.ones_like(ids))
    if mask.shape != ids.shape or mask.dtype.kind not in "iub":
        raise RelgraphError(f"attention_mask in {path} must be integers of the ids' shape {list(ids.shape)}, got "
                            f"{mask.dtype} {list(mask.shape)}")
    y = _read_npy(Path(labels), "labels") if labels is not None else arrays.get("y")
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(ids),):
            raise RelgraphError(f"labels must be integers of shape [{len(ids)}] (one per sequence), got "
                                f"{y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    return TokenData(ids.astype(np.int64), mask.astype(np.int64), y, str(path))


# ------------------------------------------------------------------------------------------------ models, methods


def _is_explainer(path: str) -> bool:
    from .explainer import is_explainer, read_onnx

    return is_explainer(read_onnx(path, weights=False))


def forward_of(explainer_path: str):
    """The classifier inside an explainer: the subgraph from its input to its logits."""
    from onnx.utils import Extractor

    proto = onnx.load(explainer_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    return Extractor(proto).extract_model([meta["relgraph.input"]], [meta["relgraph.logits"]])


def check_methods(methods: list[str]) -> None:
    from .rules import RULE_NAMES

    for m in methods:
        if m != RANDOM and m not in RULE_NAMES:
            raise RelgraphError(f"unknown method '{m}' (known: {', '.join(RULE_NAMES)}, {RANDOM})")


def training_data(model_path: str, train: str | None, data_path: str) -> str | None:
    """Where to fit patterns: ``--train``, else a training split beside the model; never the evaluation data."""
    if train is None:
        folder = Path(model_path).resolve().parent
        train = next((str(folder / f) for f in TRAIN_FILES if (folder / f).is_file()), None)
        if train is None:
            return None
    if Path(train).resolve() == Path(data_path).resolve():
        raise RelgraphError("patterns must be fitted on training data, not on the evaluation data: "
                            "pass another --train")
    return train


def compile_methods(model_path: str, methods: list[str], folder: str, *, bounds, train, explicit: bool,
                    notes: list) -> dict[str, str]:
    """Compile one explainer per method into ``folder``; label → path.

    Pattern methods fit two-component patterns (Kindermans et al.'s best estimator, S_a±) on ``train``;
    without training data they are left out with a note unless the user asked for them.
    """
    from .compiler import compile
    from .export import save

    paths, patterns = {}, None
    for method in methods:
        if method == RANDOM:
            continue
        kwargs = {}
        if method in BOX_METHODS:
            kwargs["bounds"] = bounds
        if method in PATTERN_METHODS:
            if train is None:
                if explicit:
                    raise RelgraphError(f"{method} needs training data to fit its patterns: pass --train DATA")
                notes.append(f"{method} left out: no training data to fit patterns on (pass --train DATA)")
                continue
            if patterns is None:
                patterns = _fit_patterns(model_path, train, notes)
            kwargs["patterns"] = patterns
        result = compile(model_path, rule=method, write=False, **kwargs)
        paths[method] = os.path.join(folder, f"{method}.onnx")
        save(result.skeleton, paths[method], overwrite=True, aside=result.weights)
    return paths


def _fit_patterns(model_path: str, train: str, notes: list) -> dict:
    from .patterns import fit_patterns

    data = load_dataset(train).x
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patterns = fit_patterns(model_path, data, estimator="two-component", progress=True)
    notes.extend(str(w.message) for w in caught)
    notes.append(f"patterns: two-component (S_a±), fitted on {len(data)} samples of {train}")
    return patterns


def token_relevance_of(explainer_path: str, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """A token explainer's relevance per token, [N, S]."""
    from .explainer import Explainer

    explainer = Explainer(explainer_path, spinning=False)
    if not explainer.tokens:
        raise RelgraphError(f"{explainer_path} does not explain token ids; the data are token ids")
    inputs = {"attention_mask": mask} if "attention_mask" in explainer.inputs else None
    return explainer.explain(ids, targets, inputs=inputs)["relevance"]


def relevance_of(explainer_path: str, x: np.ndarray, targets: np.ndarray, batch: int = 256) -> np.ndarray:
    from .explainer import Explainer

    explainer = Explainer(explainer_path, spinning=False)
    if explainer.input_shape[1:] != list(x.shape[1:]):
        raise RelgraphError(f"{explainer_path} expects inputs {explainer.input_shape}, the data are "
                            f"{list(x.shape)}")
    return np.concatenate([explainer.explain(x[i:i + batch], targets[i:i + batch])["relevance"]
                           for i in range(0, len(x), batch)])


# ------------------------------------------------------------------------------------------------ command


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
        from . import plot

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
        from . import plot

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
    from .explainer import read_onnx

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
