#!/usr/bin/env python
"""The AttnLRP explainer ÷ the forward pass, on BERT-base and ViT-B/16 (random seeded weights), onnxruntime CPU.

Each model is built from its Hugging Face config (BERT-base: 12 layers, hidden 768, 12 heads, 128 tokens, two
classes; ViT-B/16: 224×224, patch 16, 12 layers, hidden 768, 1000 classes) or taken from torchvision (``tv-vit``:
``vit_b_16``, sequence-first attention, the ViT lxt patches), exported once with
``torch.onnx.export(dynamo=True, opset 18)`` into bench/.cache with a dynamic batch axis, and compiled with
``--rule attnlrp`` (and ``cp-lrp``). For each batch size the forward model and the explainers run in one
onnxruntime session each, same threads, medians of ``--repeats`` runs after a warm-up, one after the other in
one process. The compile time is printed too.

    python bench/bench_transformers.py                                   # BERT and HF ViT, batch 1 and 8
    python bench/bench_transformers.py --models tv-vit                   # torchvision's ViT-B/16
    python bench/bench_transformers.py --models bert --batches 1 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

SEED = 0
SEQ = 128


def build(model: str):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    if model == "bert":
        return BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="sdpa")).eval()
    if model == "tv-vit":  # torchvision's ViT-B/16, the ViT lxt patches (bench/lxt_timing.py)
        import torchvision

        return torchvision.models.vit_b_16().eval()
    return ViTForImageClassification(ViTConfig(num_labels=1000, attn_implementation="sdpa")).eval()


def example(model: str, batch: int) -> dict:
    rng = np.random.default_rng(SEED)
    if model == "bert":
        return {"input_ids": rng.integers(1000, 30000, (batch, SEQ)).astype(np.int64),
                "attention_mask": np.ones((batch, SEQ), np.int64)}
    return {"pixel_values": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}


def export(model: str, cache: Path) -> Path:
    import torch

    path = cache / f"{model}-seed{SEED}.onnx"
    if path.exists():
        return path
    net = build(model)
    feed = example(model, 2)
    names = list(feed)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *args):
            if model == "tv-vit":
                return self.net(*args)
            return self.net(**dict(zip(names, args))).logits

    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits().eval(), tuple(torch.from_numpy(feed[k]) for k in names), str(path),
                          input_names=names, output_names=["logits"], dynamo=True, opset_version=18,
                          dynamic_shapes=(tuple({0: batch} for _ in names),))
    return path


def session(path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(fn, repeats: int) -> float:
    """The median of ``repeats`` calls after a warm-up (relgraph.bench's timer)."""
    from relgraph.bench import time_call

    return statistics.median(time_call(fn, repeats, warmup=1))


def main() -> None:
    import relgraph

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert,vit")
    parser.add_argument("--rules", default="attnlrp,cp-lrp")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", default=str(BENCH_DIR / ".cache"))
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{'model':6} {'rule':8} {'batch':>5} {'forward s':>10} {'explainer s':>12} {'ratio':>7}")
    for model in args.models.split(","):
        path = export(model, cache)
        forward = session(path, args.threads)
        explainers = {}
        for rule in args.rules.split(","):
            out = cache / f"{model}-seed{SEED}.{rule}.onnx"
            start = time.perf_counter()
            relgraph.compile(str(path), rule=rule, output=str(out), overwrite=True)
            print(f"{model:6} {rule:8} compiled in {time.perf_counter() - start:.1f} s")
            explainers[rule] = session(out, args.threads)
        for batch in map(int, args.batches.split(",")):
            feed = example(model, batch)
            t_forward = timed(lambda: forward.run(None, feed), args.repeats)
            for rule, s in explainers.items():
                full = dict(feed, target=np.full(batch, -1, np.int64))
                t = timed(lambda: s.run(None, full), args.repeats)
                print(f"{model:6} {rule:8} {batch:5d} {t_forward:10.4f} {t:12.4f} {t / t_forward:6.2f}×")


if __name__ == "__main__":
    main()
