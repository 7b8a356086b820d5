#!/usr/bin/env python
"""lxt 2.1's AttnLRP (efficient mode) on CPU: its explanation ÷ a no-grad torch forward, and seconds per batch.

Runs in lxt's own environment (transformers 4.52.4, lxt 2.1; see bench/lxt_crosscheck.py). The models are the
ones bench/bench_transformers.py times relgraph on: BERT-base (``BertConfig()``, 128 tokens, 2 classes) and
ViT-B/16 (torchvision's ``vit_b_16``, the ViT lxt patches, with its CP-LRP: lxt's default map for it), random weights (``torch.manual_seed(0)``), float32.
An explanation is lxt's protocol: the patched model's forward on the input embeddings (pixels) with gradients, the
backward pass from the predicted logit, R = x ⊙ x.grad. Medians of ``--repeats`` runs after a warm-up.

    python bench/lxt_timing.py --models bert,vit --batches 1,8 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_PATCHED: set = set()


def patch(module) -> None:
    """lxt's monkey patch, once per module (a second one warns and patches nothing)."""
    from lxt.efficient import monkey_patch

    if module not in _PATCHED:
        monkey_patch(module)
        _PATCHED.add(module)


def bert(batch: int):
    from transformers.models.bert import modeling_bert

    patch(modeling_bert)
    torch.manual_seed(0)
    model = modeling_bert.BertForSequenceClassification(
        modeling_bert.BertConfig(num_labels=2, attn_implementation="eager")).eval()
    ids = torch.randint(1000, 30000, (batch, 128))

    def forward():
        with torch.no_grad():
            model(input_ids=ids)

    def explain():
        x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=x).logits
        logits.max(1).values.sum().backward()
        return x * x.grad

    return forward, explain


def vit(batch: int):
    import torchvision

    patch(torchvision.models.vision_transformer)
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16().eval()
    pixels = torch.randn(batch, 3, 224, 224)

    def forward():
        with torch.no_grad():
            model(pixels)

    def explain():
        x = pixels.clone().requires_grad_(True)
        model(x).max(1).values.sum().backward()
        return x * x.grad

    return forward, explain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert,vit")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':6} {'batch':>5} {'torch forward s':>16} {'lxt explain s':>14} {'ratio':>7}")
    for name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            forward, explain = {"bert": bert, "vit": vit}[name](batch)
            t_forward, t_explain = timed(forward, args.repeats), timed(explain, args.repeats)
            print(f"{name:6} {batch:5d} {t_forward:16.4f} {t_explain:14.4f} {t_explain / t_forward:6.2f}×")


if __name__ == "__main__":
    main()
