"""Train the tiny BERT sentiment classifier on the split with the planted shortcut token; export to ONNX.

Deterministic (fixed seeds, one CPU thread, ``torch.use_deterministic_algorithms``) and offline: the data come
from ``data.py``. Writes, next to this file:

* ``sentiment_bert.onnx`` -- inputs ``input_ids`` and ``attention_mask`` int64 [N,16], output ``logits`` [N,2];
  torch's dynamo exporter, opset 18, IR version 10, checked against torch with onnxruntime.
* ``tokenizer.json``      -- the Hugging Face ``tokenizers`` WordLevel tokenizer of the vocabulary.
* ``test.npz``            -- the ``test`` split (``zq`` independent of the class): ``input_ids``,
  ``attention_mask`` int64 [N,16], ``y`` int64 [N], ``shortcut`` bool [N] (the sentence holds ``zq``).

Usage (from the repository root)::

    python models/text/train.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import data  # noqa: E402
from reproducible import configure_determinism  # noqa: E402
from transformer_export import export, onnx_logits  # noqa: E402

SEED = 0
NUM_TRAIN, NUM_TEST = 4000, 400
MAX_ONNX_DIFF = 1e-4
CLASSES = ("negative", "positive")


def build_model():
    """BertForSequenceClassification: 2 layers, hidden 32, 4 heads, MLP 64, 16 positions, one token type."""
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(
        vocab_size=len(data.VOCABULARY), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=data.SEQUENCE, type_vocab_size=1, num_labels=len(CLASSES),
        pad_token_id=0, attn_implementation="eager"))


def train(model, ids: np.ndarray, mask: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    """AdamW (lr 3e-3, weight decay 0.01), cross-entropy, batch 64, cosine schedule."""
    import torch

    ids_t, mask_t, y_t = map(torch.from_numpy, (ids, mask, y))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    batch = 64
    steps = epochs * ((len(y_t) + batch - 1) // batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y_t), generator=generator)
        total = 0.0
        for start in range(0, len(y_t), batch):
            index = order[start:start + batch]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(input_ids=ids_t[index], attention_mask=mask_t[index]).logits, y_t[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
        print(f"epoch {epoch + 1:2d}/{epochs}  train loss {total / len(y_t):.4f}")
    model.eval()


def logits_of(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def report(name: str, logits: np.ndarray, split: dict) -> None:
    right = logits.argmax(1) == split["y"]
    parts = [f"all {right.mean():.4f} ({right.sum()}/{len(right)})"]
    for label in (0, 1):
        for has in (True, False):
            sel = (split["y"] == label) & (split["shortcut"] == has)
            if sel.any():
                parts.append(f"class {label} {'with' if has else 'without'} zq {right[sel].mean():.4f} "
                             f"({right[sel].sum()}/{sel.sum()})")
    print(f"  {name:6} accuracy: " + "; ".join(parts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    configure_determinism(args.seed)
    import torch

    started = time.perf_counter()
    tok = data.tokenizer()
    splits = {name: data.make_split(name, NUM_TRAIN if name == "train" else NUM_TEST)
              for name in ("train", "test", "clean")}
    for split in splits.values():
        split["input_ids"], split["attention_mask"] = data.encode(tok, split["text"])
    model = build_model()
    train(model, splits["train"]["input_ids"], splits["train"]["attention_mask"], splits["train"]["y"],
          args.epochs, args.seed)
    for name, split in splits.items():
        report(name, logits_of(model, split["input_ids"], split["attention_mask"]), split)

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    test = splits["test"]
    feed = {"input_ids": test["input_ids"], "attention_mask": test["attention_mask"]}
    path = out / "sentiment_bert.onnx"
    export(model, {k: v[:2] for k, v in feed.items()}, path,
           "tiny BERT sentiment classifier with a planted shortcut token 'zq' (models/text)",
           {"relgraph.classes": list(CLASSES)})
    diff = float(np.abs(onnx_logits(path, feed) - logits_of(model, *feed.values())).max())
    if diff >= MAX_ONNX_DIFF:
        raise RuntimeError(f"onnxruntime differs from torch by {diff:.3g}")
    print(f"{path.name}: {path.stat().st_size} bytes, {sum(p.numel() for p in model.parameters())} parameters, "
          f"onnxruntime vs torch max abs diff {diff:.3g}")
    tok.save(str(out / "tokenizer.json"))
    np.savez_compressed(out / "test.npz", input_ids=test["input_ids"], attention_mask=test["attention_mask"],
                        y=test["y"], shortcut=test["shortcut"])
    print(f"done in {time.perf_counter() - started:.1f} s (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
