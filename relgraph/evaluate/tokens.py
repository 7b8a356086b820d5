"""Token ablation: how faithful is a relevance per token? The protocol of the AttnLRP paper's Table 1
(Achtibat et al., ICML 2024).

Token models (int64 ``input_ids``, explained per token) are evaluated by setting token embeddings to zero most
relevant first (MoRF) and least relevant first (LeRF), and comparing the areas under the two curves
(:func:`evaluate_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from ..errors import RelgraphError
from ..graph import Builder, load_model, to_proto
from ..passes.relevance import explained_values, token_ids
from ..progress import Progress
from .images import IMAGES_PER_RUN, RANDOM, Scorer, mean_and_stderr

KEEP = "relgraph.keep"                                      # the token ablation model's per-token scale
TOKEN_GRID = 21                                             # fractions removed at which mean curves are drawn


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
