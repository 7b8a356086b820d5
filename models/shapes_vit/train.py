"""Train a tiny Vision Transformer on the shapes data (the split with the texture shortcut); export to ONNX.

The data and the training loop are those of the shapes CNN (``models/shapes``): same split, same samples, same
optimizer and schedule. Deterministic (fixed seeds, one CPU thread, ``torch.use_deterministic_algorithms``) and
offline. Writes, next to this file:

* ``shapes_vit.onnx`` -- input ``pixel_values`` float32 [N,1,32,32] in [0,1], output ``logits`` [N,3]; torch's
  dynamo exporter, opset 18, IR version 10, checked against torch with onnxruntime. It is evaluated on
  ``models/shapes/heldout.npz``.

Usage (from the repository root)::

    python models/shapes_vit/train.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = HERE.parent / "shapes"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(SHAPES))

from data import CLASSES, make_split  # noqa: E402
from reproducible import configure_determinism  # noqa: E402
from transformer_export import export, onnx_logits  # noqa: E402

_spec = importlib.util.spec_from_file_location("shapes_train", SHAPES / "train.py")
shapes_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes_train)

SEED = 0
NUM_TRAIN, NUM_HELDOUT = shapes_train.NUM_TRAIN, shapes_train.NUM_HELDOUT
MAX_ONNX_DIFF = 1e-4


def build_model():
    """ViTForImageClassification: 32×32 gray images in 8×8 patches (16 tokens and CLS), 2 layers, hidden 32,
    4 heads, MLP 64, 3 classes."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=len(CLASSES), attn_implementation="eager"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    configure_determinism(args.seed)
    import torch

    class Logits(torch.nn.Module):
        """The classifier as shapes' training loop calls it: images in, logits out."""

        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            return self.vit(pixel_values=x).logits

    started = time.perf_counter()
    splits = {name: make_split(name, NUM_TRAIN if name == "train" else NUM_HELDOUT)
              for name in ("train", "heldout", "anticorrelated")}
    for name in ("heldout", "anticorrelated"):  # as committed in models/shapes/heldout.npz: float16
        splits[name]["x"] = splits[name]["x"].astype(np.float16).astype(np.float32)
    vit = build_model()
    model = Logits(vit)
    shapes_train.train(model, splits["train"]["x"], splits["train"]["y"], args.epochs, args.seed)
    for name, split in splits.items():
        logits = shapes_train.logits_of(model, split["x"])
        right = logits.argmax(1) == split["y"]
        print(f"  {name:15} accuracy {right.mean():.4f} ({right.sum()}/{len(right)})  (agrees with the texture's "
              f"class {shapes_train.accuracy(logits, split['texture']):.4f})")

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    held = splits["heldout"]
    path = out / "shapes_vit.onnx"
    export(vit, {"pixel_values": held["x"][:2]}, path,
           "tiny ViT on the shapes-on-textures data (models/shapes_vit), classes disc/square/triangle, inputs in [0,1]",
           {"relgraph.preprocess": {"channels": 1, "height": 32, "width": 32, "scale": 1 / 255, "mean": [0.0],
                                    "std": [1.0]},
            "relgraph.classes": list(CLASSES)})
    diff = float(np.abs(onnx_logits(path, {"pixel_values": held["x"]}) - shapes_train.logits_of(model, held["x"])).max())
    if diff >= MAX_ONNX_DIFF:
        raise RuntimeError(f"onnxruntime differs from torch by {diff:.3g}")
    print(f"{path.name}: {path.stat().st_size} bytes, {sum(p.numel() for p in vit.parameters())} parameters, "
          f"onnxruntime vs torch max abs diff {diff:.3g}")
    print(f"done in {time.perf_counter() - started:.1f} s (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
