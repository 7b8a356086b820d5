"""Image degradation and AOPC (Samek et al. 2017): how faithful is a heatmap of an image?

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import RelgraphError
from ..progress import Progress

RANDOM = "random"                             # the baseline's label: random orders of the patches or tokens
PAPER_PATCH, PAPER_SIDE = 9, 224              # 9×9 patches on 224×224 images (Kindermans et al. 2018)
IMAGES_PER_RUN = 4096                         # degraded images per onnxruntime call (bounded by size too)
FLOATS_PER_RUN = 1 << 24


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
