"""Train the bundled 8x8 digits CNN and export it to ONNX.

The script is deterministic (fixed seeds, deterministic algorithms, a single
CPU thread) and uses scikit-learn's bundled ``load_digits`` data set, so it
runs offline. It writes, next to this file:

* ``digits_cnn.onnx``     -- the classifier (input ``input`` [N,1,8,8] float32
  in [0,1], output ``logits`` [N,10]), opset 17, IR version 10, with the
  ``relgraph.preprocess`` and ``relgraph.classes`` metadata that ``relgraph serve``
  uses to turn uploaded pictures into inputs.
* ``samples.npy`` / ``sample_labels.npy`` -- the first 8 test images / labels.
* ``test_x.npy`` / ``test_y.npy``         -- the whole test split.
* ``train_x.npy``         -- the training images (to fit PatternAttribution's patterns on).
* ``sample0.png``         -- the first test image as an 8x8 grayscale PNG.

Usage (from the repository root)::

    python models/digits/train.py
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from reproducible import configure_determinism  # noqa: E402

SEED = 0
NUM_TEST = 297
NUM_SAMPLES = 8
MIN_ACCURACY = 0.95
MAX_ONNX_DIFF = 1e-4
MAX_ONNX_BYTES = 2 * 1024 * 1024

# How a picture becomes an input (relgraph serve reads these from the model's metadata_props): sklearn's
# digits are light ink on black, 8x8 area averages of 32x32 bitmaps, 0..16 scaled to [0, 1]; a photo of a
# dark digit on white paper is recognized by its brighter border and inverted, then stretched to 0..255.
PREPROCESS = {"channels": 1, "height": 8, "width": 8, "scale": 1 / 255, "mean": [0.0], "std": [1.0],
              "invert": "auto", "autocontrast": True}
CLASSES = [str(d) for d in range(10)]


def load_split() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the digits data set scaled to [0, 1]; the last 297 samples form the test split.

    Returns:
        ``(train_x, train_y, test_x, test_y)`` with images as float32
        [N,1,8,8] and labels as int64 [N].
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    split = len(images) - NUM_TEST
    return images[:split], labels[:split], images[split:], labels[split:]


def build_model():
    """Small CNN with a BatchNorm, a MaxPool and a bias in every layer.

    Shapes: [N,1,8,8] -> conv 16 -> conv 32 -> maxpool -> [N,32,4,4]
    -> conv 32 -> flatten 512 -> linear 10.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=True),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2),
        nn.Conv2d(32, 32, kernel_size=3, padding=1, bias=True),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10, bias=True),
    )


def random_shift(images, generator, max_shift: int = 1):
    """Translate each image by a random offset of up to ``max_shift`` pixels (zero fill)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


def train(model, train_x: np.ndarray, train_y: np.ndarray, epochs: int, seed: int) -> None:
    """Train ``model`` in place with Adam, a cosine learning-rate schedule and
    random one-pixel translations as augmentation."""
    import torch
    from torch import nn

    x = torch.from_numpy(train_x)
    y = torch.from_numpy(train_y)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch_size = 64
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(random_shift(x[index], generator)), y[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}/{epochs}  train loss {total / len(x):.4f}")
    model.eval()


def predict(model, images: np.ndarray) -> np.ndarray:
    """Return the model's logits for ``images`` as a numpy array."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def _torchscript_export(model, dummy, path: Path) -> None:
    """Run the TorchScript-based ONNX exporter with the settings of this model."""
    import torch

    with warnings.catch_warnings():
        # The TorchScript exporter is requested on purpose (flat, stable graph);
        # the constant-folding advice targets models in training mode, not this one.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
        )


def annotate(onnx_model) -> None:
    """Write the preprocessing and class names into ``metadata_props`` (replacing earlier values)."""
    import json

    props = {p.key: p.value for p in onnx_model.metadata_props}
    props.update({"relgraph.preprocess": json.dumps(PREPROCESS), "relgraph.classes": json.dumps(CLASSES)})
    del onnx_model.metadata_props[:]
    for key, value in props.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx(model, path: Path) -> None:
    """Export to ONNX (opset 17, dynamic batch), set IR version 10, check and save.

    ``TrainingMode.PRESERVE`` keeps BatchNormalization as its own node instead
    of folding it into the preceding convolution (the model is in eval mode,
    so the node is exported in inference form).
    """
    import onnx
    import torch

    tmp_path = path.with_suffix(".tmp.onnx")
    _torchscript_export(model, torch.zeros(1, 1, 8, 8, dtype=torch.float32), tmp_path)
    onnx_model = onnx.load(str(tmp_path))
    tmp_path.unlink()
    onnx_model.ir_version = 10
    onnx_model.doc_string = "8x8 digits CNN (scikit-learn load_digits), inputs in [0,1]"
    annotate(onnx_model)
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))
    size = path.stat().st_size
    if size >= MAX_ONNX_BYTES:
        raise RuntimeError(f"{path.name} is {size} bytes, expected < {MAX_ONNX_BYTES}")


def verify_onnx(path: Path, images: np.ndarray, reference: np.ndarray) -> float:
    """Run the ONNX model with onnxruntime and compare to the torch logits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": images})[0]
    diff = float(np.max(np.abs(logits - reference)))
    if diff >= MAX_ONNX_DIFF:
        raise RuntimeError(f"onnxruntime differs from torch by {diff:.3g}")
    return diff


def save_artifacts(out_dir: Path, train_x: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> None:
    """Save the training images, the test split, the first samples and a PNG of the first sample."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from relgraph.heatmap import write_png

    np.save(out_dir / "train_x.npy", train_x.astype(np.float32))
    np.save(out_dir / "test_x.npy", test_x.astype(np.float32))
    np.save(out_dir / "test_y.npy", test_y.astype(np.int64))
    np.save(out_dir / "samples.npy", test_x[:NUM_SAMPLES].astype(np.float32))
    np.save(out_dir / "sample_labels.npy", test_y[:NUM_SAMPLES].astype(np.int64))
    pixels = np.clip(np.round(test_x[0, 0] * 255.0), 0, 255).astype(np.uint8)
    write_png(out_dir / "sample0.png", pixels)


def main(argv=None) -> int:
    """Train, evaluate, export and verify the digits CNN."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE, help="output folder")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    args = parser.parse_args(argv)

    configure_determinism(args.seed)
    import torch

    started = time.perf_counter()
    train_x, train_y, test_x, test_y = load_split()
    print(f"train {len(train_x)} samples, test {len(test_x)} samples")

    model = build_model()
    train(model, train_x, train_y, args.epochs, args.seed)
    logits = predict(model, test_x)
    accuracy = float(np.mean(logits.argmax(axis=1) == test_y))
    print(f"test accuracy: {accuracy:.4f} ({int(round(accuracy * len(test_y)))}/{len(test_y)})")
    if accuracy <= MIN_ACCURACY:
        raise RuntimeError(f"test accuracy {accuracy:.4f} is not above {MIN_ACCURACY}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "digits_cnn.onnx"
    export_onnx(model, onnx_path)
    diff = verify_onnx(onnx_path, test_x, logits)
    print(f"onnxruntime vs torch max abs diff: {diff:.3g}")
    save_artifacts(args.out_dir, train_x, test_x, test_y)
    print(
        f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes) "
        f"in {time.perf_counter() - started:.1f} s (torch {torch.__version__})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
