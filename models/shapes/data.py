"""Shapes on textures: a small image data set whose relevant region is known.

The class of an image is the shape of the one object in it (0 disc, 1 square, 2 triangle), drawn at a
random position and size over a background texture (0 horizontal stripes, 1 vertical stripes, 2 dots).
The mask is the object's pixels. How the texture relates to the class depends on the split:

- ``train``: the texture is the class's own (texture = class) with probability ``CORRELATION`` (0.95),
  otherwise one of the other two, uniformly: a spurious shortcut, like the wolves photographed on snow.
- ``heldout``: texture and class are independent (uniform), so the shortcut is right one time in three.
- ``anticorrelated``: the texture is always another class's: the shortcut is always wrong.
- ``balanced``: independent like ``heldout`` but other samples: the training data of a control model
  that has no shortcut to learn.

Every sample is drawn from its own generator, seeded with (SEED, split, index), so sample i of a split
is the same whatever else is generated, in any order, on any machine (numpy's PCG64 and float64 math).

Images are float32 [1, 32, 32] in [0, 1]: background 0.1, texture 0.45, object 0.75–1.0 (opaque),
plus Gaussian pixel noise (σ 0.04), clipped.
"""

from __future__ import annotations

import os

import numpy as np

SIZE = 32
CLASSES = ("disc", "square", "triangle")
TEXTURES = ("horizontal stripes", "vertical stripes", "dots")
SPLITS = {"train": 0, "heldout": 1, "anticorrelated": 2, "balanced": 3}
SEED = 2024
CORRELATION = 0.95

BACKGROUND, TEXTURE, NOISE = 0.1, 0.45, 0.04

_rows, _cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5  # pixel centres


def object_mask(shape: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Pixels whose centre lies inside the shape of class ``shape`` centred at (cy, cx), size ``r``.

    disc: (y−cy)² + (x−cx)² ≤ r²; square: max(|y−cy|, |x−cx|) ≤ 0.85·r (about the disc's area);
    triangle: apex up, (cy−r, cx), base at y = cy + 0.8·r from cx − 1.1·r to cx + 1.1·r.
    """
    dy, dx = _rows - cy, _cols - cx
    if shape == 0:
        return dy**2 + dx**2 <= r**2
    if shape == 1:
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.85 * r
    # inside the two slanted edges and above the base: |dx| ≤ half-width at that height
    height = 1.8 * r
    return (dy <= 0.8 * r) & (np.abs(dx) <= 1.1 * r * (dy + r) / height)


def texture_image(texture: int, period: int, phase: int) -> np.ndarray:
    """The background: stripes (rows or columns) or a grid of 2×2 dots, ``period`` pixels apart."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    if texture == 0:
        on = (rows + phase) % period < period // 2
    elif texture == 1:
        on = (cols + phase) % period < period // 2
    else:
        on = ((rows + phase) % period < 2) & ((cols + phase) % period < 2)
    return np.where(on, TEXTURE, BACKGROUND)


def texture_for(rng: np.random.Generator, label: int, split: str) -> int:
    """The texture of one sample of class ``label`` in ``split`` (see the module docstring)."""
    others = [t for t in range(len(TEXTURES)) if t != label]
    if split == "train":
        return label if rng.random() < CORRELATION else int(rng.choice(others))
    if split in ("heldout", "balanced"):
        return int(rng.integers(len(TEXTURES)))
    return int(rng.choice(others))


def make_sample(split: str, index: int) -> tuple[np.ndarray, int, int, np.ndarray]:
    """Sample ``index`` of ``split``: image float32 [1, 32, 32], label, texture, mask bool [1, 32, 32]."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    rng = np.random.default_rng((SEED, SPLITS[split], index))
    label = int(rng.integers(len(CLASSES)))
    texture = texture_for(rng, label, split)
    r = rng.uniform(5.0, 9.0)
    cy, cx = rng.uniform(r + 1, SIZE - r - 1, size=2)
    mask = object_mask(label, cy, cx, r)
    background = texture_image(texture, period=int(rng.integers(4, 7)), phase=int(rng.integers(6)))
    image = np.where(mask, rng.uniform(0.75, 1.0), background)
    image = np.clip(image + rng.normal(0.0, NOISE, image.shape), 0.0, 1.0)
    return image[None].astype(np.float32), label, texture, mask[None]


def make_split(split: str, count: int, start: int = 0) -> dict[str, np.ndarray]:
    """Samples start … start+count−1 of ``split`` as arrays x [N,1,32,32], y, texture [N], masks [N,1,32,32]."""
    samples = [make_sample(split, i) for i in range(start, start + count)]
    return {
        "x": np.stack([s[0] for s in samples]),
        "y": np.array([s[1] for s in samples], np.int64),
        "texture": np.array([s[2] for s in samples], np.int64),
        "masks": np.stack([s[3] for s in samples]),
    }


def main() -> None:
    """``python models/shapes/data.py SPLIT COUNT -o FILE.npz``: samples 0 … COUNT−1 of a split, as make_split."""
    import argparse

    p = argparse.ArgumentParser(description="Write samples of a shapes split to an .npz (x, y, texture, masks).")
    p.add_argument("split", choices=SPLITS)
    p.add_argument("count", type=int)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()
    if args.count < 1:
        raise SystemExit(f"data.py: error: COUNT must be at least 1, got {args.count}")
    if os.path.lexists(args.output):  # never replace a file (or what a link points to)
        raise SystemExit(f"data.py: error: {args.output} exists; choose another name")
    try:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "xb") as f:  # as named: savez would add ".npz" to a name without it
            np.savez_compressed(f, **make_split(args.split, args.count))
    except OSError as exc:
        raise SystemExit(f"data.py: error: cannot write {args.output}: {exc.strerror}") from None


if __name__ == "__main__":
    main()
