"""Train the shapes CNN on the spuriously correlated split (and a control without the shortcut); export to ONNX.

Deterministic (fixed seeds, one CPU thread, ``torch.use_deterministic_algorithms``) and offline: the data
come from ``data.py``. Writes, next to this file:

* ``shapes_cnn.onnx``  -- input ``input`` float32 [N,1,32,32] in [0,1], output ``logits`` [N,3];
  opset 17, IR version 10, checked against torch with onnxruntime.
* ``shapes_control_cnn.onnx`` -- the same network trained the same way on the ``balanced`` split (texture
  independent of the class): a control that cannot use the texture.
* ``heldout.npz``      -- the decorrelated held-out split: ``x`` float16 [N,1,32,32], ``y``, ``texture``
  int64 [N], ``masks`` bool [N,1,32,32] (the object's pixels).
* ``train.npz``        -- the first training samples (``x`` float16, ``y``), to fit PatternAttribution's
  patterns on training data.
* ``samples_train.png``, ``samples_heldout.png`` -- the first 8 images of each split.

Usage (from the repository root)::

    python models/shapes/train.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from data import CLASSES, make_split  # noqa: E402
from reproducible import configure_determinism  # noqa: E402

SEED = 0
NUM_TRAIN, NUM_HELDOUT, NUM_PATTERN_FIT = 6000, 300, 300
# model file → the split it is trained on
TRAINING = {"shapes_cnn.onnx": "train", "shapes_control_cnn.onnx": "balanced"}
MAX_ONNX_DIFF = 1e-4
MAX_ONNX_BYTES = 2 * 1024 * 1024


def build_model():
    """Three Conv(3×3)–ReLU–MaxPool(2) blocks (8, 16, 32 channels) and a Linear(512 → 3), all with biases."""
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, 8), *block(8, 16), *block(16, 32), nn.Flatten(), nn.Linear(32 * 4 * 4, 3))


def train(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    """Adam (lr 3e-3), cross-entropy, batch 64, cosine schedule; no augmentation."""
    import torch
    from torch import nn

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = 64
    steps = epochs * ((len(xt) + batch - 1) // batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(xt), batch):
            index = order[start:start + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[index]), yt[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
        print(f"epoch {epoch + 1:2d}/{epochs}  train loss {total / len(xt):.4f}")
    model.eval()


def logits_of(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def export_onnx(model, path: Path) -> None:
    """TorchScript exporter (a flat, stable graph), opset 17, IR version 10, full checker."""
    import onnx
    import torch

    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(model, (torch.zeros(1, 1, 32, 32),), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(tmp))
    tmp.unlink()
    proto.ir_version = 10
    proto.doc_string = "shapes-on-textures CNN (models/shapes), classes disc/square/triangle, inputs in [0,1]"
    # what `relgraph serve` needs to take a picture: 32x32 grayscale, pixel / 255; and the class names
    for key, value in (("relgraph.preprocess", {"channels": 1, "height": 32, "width": 32, "scale": 1 / 255,
                                                "mean": [0.0], "std": [1.0]}),
                       ("relgraph.classes", list(CLASSES))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    if path.stat().st_size >= MAX_ONNX_BYTES:
        raise RuntimeError(f"{path.name} is {path.stat().st_size} bytes, expected < {MAX_ONNX_BYTES}")


def onnx_difference(path: Path, x: np.ndarray, reference: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diff = float(np.abs(session.run(["logits"], {"input": x})[0] - reference).max())
    if diff >= MAX_ONNX_DIFF:
        raise RuntimeError(f"onnxruntime differs from torch by {diff:.3g}")
    return diff


def write_samples(path: Path, x: np.ndarray) -> None:
    """The images side by side, 4× enlarged, as an 8-bit gray PNG."""
    from relgraph.heatmap import upscale, write_png

    gap = np.full((x.shape[2], 2), 255, np.uint8)
    tiles = [t for img in x for t in (np.round(img[0] * 255).astype(np.uint8), gap)][:-1]
    write_png(path, upscale(np.concatenate(tiles, axis=1), 4))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    configure_determinism(args.seed)
    import torch

    started = time.perf_counter()
    splits = {name: make_split(name, NUM_TRAIN if name in TRAINING.values() else NUM_HELDOUT)
              for name in ("train", "balanced", "heldout", "anticorrelated")}
    # the held-out split is committed as float16: evaluate on exactly the values on disk
    for name in ("heldout", "anticorrelated"):
        splits[name]["x"] = splits[name]["x"].astype(np.float16).astype(np.float32)
    models = {}
    for filename, split in TRAINING.items():
        torch.manual_seed(args.seed)  # both start from the same weights
        print(f"{filename}: trained on the {split} split")
        models[filename] = build_model()
        train(models[filename], splits[split]["x"], splits[split]["y"], args.epochs, args.seed)
        for name in (split, "heldout", "anticorrelated"):
            logits = logits_of(models[filename], splits[name]["x"])
            print(f"  {name:15} accuracy {accuracy(logits, splits[name]['y']):.4f}  (agrees with the texture's "
                  f"class {accuracy(logits, splits[name]['texture']):.4f}; texture = class in "
                  f"{np.mean(splits[name]['texture'] == splits[name]['y']):.3f})")

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    held = splits["heldout"]
    for filename, model in models.items():
        export_onnx(model, out / filename)
        diff = onnx_difference(out / filename, held["x"], logits_of(model, held["x"]))
        print(f"{filename}: {(out / filename).stat().st_size} bytes, onnxruntime vs torch max abs diff {diff:.3g}")
    np.savez_compressed(out / "heldout.npz", x=held["x"].astype(np.float16), y=held["y"],
                        texture=held["texture"], masks=held["masks"])
    fit = splits["train"]
    np.savez_compressed(out / "train.npz", x=fit["x"][:NUM_PATTERN_FIT].astype(np.float16),
                        y=fit["y"][:NUM_PATTERN_FIT])
    write_samples(out / "samples_train.png", fit["x"][:8])
    write_samples(out / "samples_heldout.png", held["x"][:8])
    print(f"classes {', '.join(CLASSES)}; done in {time.perf_counter() - started:.1f} s (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
