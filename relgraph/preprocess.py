"""From an uploaded picture to the model's input, as the model's own metadata says.

A model states how images become inputs in its ONNX ``metadata_props`` (the compiler carries them into the
explainer), under two keys:

``relgraph.preprocess`` (JSON)::

    {"channels": 1 | 3, "height": H, "width": W, "scale": 1/255, "mean": [...], "std": [...],
     "invert": false | true | "auto", "autocontrast": false | true}

``relgraph.classes`` (JSON): the class names, index = class.

For a decoded image p (uint8, H'×W'×{1,3,4}) the input is, channel by channel c,

    q = to_channels(box_resize(p))                            (H×W, float)
    q = 255 − q                  when invert (or "auto" and the border is brighter than the whole image)
    q = 255·(q − min q)/(max q − min q)                       when autocontrast (and max q > min q)
    x_c = (scale·q_c − mean_c) / std_c

``to_channels`` puts transparent pixels on white (an alpha-drawn digit reads as ink on paper) and takes
the luma 0.299R + 0.587G + 0.114B for one channel. ``box_resize`` is Pillow's box filter: each output
pixel is the mean of the input pixels whose centres fall in its footprint; for an integer ratio that is
the area average, which is how scikit-learn's 8×8 digits were made from 32×32 bitmaps. The picture is
stretched to H×W, not cropped. Both steps are linear in the pixels once colour is premultiplied by
alpha, so the resize runs first, on the picture's own uint8 planes one at a time, and the picture is
never held in floating point at full size.

Decoding (:func:`decode_image`) is :func:`relgraph.heatmap.decode_image`, with its limits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .errors import RelgraphError
from .heatmap import MAX_PIXELS, UnsupportedImage, decode_image, pillow

__all__ = ["PREPROCESS_KEY", "CLASSES_KEY", "MAX_PIXELS", "UnsupportedImage", "Preprocess", "decode_image",
           "model_preprocess", "model_classes", "box_resize", "to_channels", "border_is_brighter"]

PREPROCESS_KEY = "relgraph.preprocess"
CLASSES_KEY = "relgraph.classes"


@dataclass(frozen=True)
class Preprocess:
    channels: int
    height: int
    width: int
    scale: float = 1 / 255
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    invert: bool | str = False
    autocontrast: bool = False

    @classmethod
    def from_json(cls, text: str) -> "Preprocess":
        try:
            spec = json.loads(text)
            pre = cls(channels=int(spec["channels"]), height=int(spec["height"]), width=int(spec["width"]),
                      scale=float(spec.get("scale", 1 / 255)),
                      mean=tuple(float(m) for m in spec.get("mean", [0.0])),
                      std=tuple(float(s) for s in spec.get("std", [1.0])),
                      invert=spec.get("invert", False), autocontrast=bool(spec.get("autocontrast", False)))
        except (ValueError, TypeError, KeyError) as exc:
            raise RelgraphError(f"{PREPROCESS_KEY} is not valid: {exc!r}") from None
        if pre.channels not in (1, 3) or pre.height < 1 or pre.width < 1:
            raise RelgraphError(f"{PREPROCESS_KEY} needs channels 1 or 3 and a positive height and width")
        if len(pre.mean) not in (1, pre.channels) or len(pre.std) not in (1, pre.channels) or 0.0 in pre.std:
            raise RelgraphError(f"{PREPROCESS_KEY}: mean and std need 1 or {pre.channels} values, std non-zero")
        if pre.invert not in (True, False, "auto"):
            raise RelgraphError(f"{PREPROCESS_KEY}: invert must be true, false or \"auto\"")
        return pre

    def as_dict(self) -> dict:
        return {"channels": self.channels, "height": self.height, "width": self.width, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std), "invert": self.invert,
                "autocontrast": self.autocontrast}

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded pixels → (input x float32 [C, H, W], the resized picture uint8 H×W[×3] to draw on)."""
        q = to_channels(box_resize(pixels, self.height, self.width), self.channels, premultiplied=True)
        picture = np.clip(np.round(q), 0, 255).astype(np.uint8)
        if self.invert is True or (self.invert == "auto" and border_is_brighter(q)):
            q = 255.0 - q
        if self.autocontrast and q.max() > q.min():
            q = 255.0 * (q - q.min()) / (q.max() - q.min())
        mean = np.asarray(self.mean, np.float64)[:, None, None]
        std = np.asarray(self.std, np.float64)[:, None, None]
        x = (self.scale * np.moveaxis(q, -1, 0) - mean) / std
        return x.astype(np.float32), picture if self.channels == 3 else picture[..., 0]


def model_preprocess(metadata: dict) -> Preprocess | None:
    text = metadata.get(PREPROCESS_KEY)
    return None if text is None else Preprocess.from_json(text)


def model_classes(metadata: dict) -> list[str] | None:
    text = metadata.get(CLASSES_KEY)
    if text is None:
        return None
    try:
        classes = json.loads(text)
    except ValueError:
        raise RelgraphError(f"{CLASSES_KEY} is not a JSON list of names") from None
    if not isinstance(classes, list):
        raise RelgraphError(f"{CLASSES_KEY} is not a JSON list of names")
    return [str(c) for c in classes]


# ------------------------------------------------------------------------------------------- geometry


def _layout(pixels: np.ndarray) -> np.ndarray:
    p = np.asarray(pixels)
    if p.ndim == 2:
        p = p[..., None]
    if p.ndim != 3 or p.shape[2] not in (1, 2, 3, 4) or 0 in p.shape:
        raise RelgraphError(f"unsupported image layout {list(np.shape(pixels))}")
    return p


def to_channels(pixels: np.ndarray, channels: int, *, premultiplied: bool = False) -> np.ndarray:
    """H×W[×{2,3,4}] → float64 H×W×channels; alpha composites onto white, one channel is the luma.

    q = p·α/255 + 255·(1 − α/255); with ``premultiplied`` (what :func:`box_resize` returns for a
    picture with alpha) the colour planes already hold p·α/255.
    """
    p = np.asarray(_layout(pixels), np.float64)
    if p.shape[2] in (2, 4):  # over white: a transparent background is paper
        alpha = p[..., -1:] / 255.0
        colour = p[..., :-1] if premultiplied else p[..., :-1] * alpha
        p = colour + 255.0 * (1.0 - alpha)
    if channels == 1 and p.shape[2] == 3:
        p = p @ np.array([[0.299], [0.587], [0.114]])
    if channels == 3 and p.shape[2] == 1:
        p = np.repeat(p, 3, axis=2)
    return p


def _resize_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """One H'×W' plane → height×width by Pillow's box filter, in float32 (Pillow's "F" mode).

    A uint8 plane goes to Pillow as it is and becomes float32 there: 5 bytes a pixel at the peak, not 8.
    """
    Image = pillow()
    if plane.dtype == np.uint8:
        image = Image.fromarray(np.ascontiguousarray(plane)).convert("F")
    else:
        image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BOX), np.float64)


def box_resize(pixels: np.ndarray, height: int, width: int, *, premultiply: bool = True) -> np.ndarray:
    """H'×W'[×C] → float64 height×width×C by Pillow's box filter, one plane at a time (float32 inside).

    Output pixel (i, j) is the mean of the input pixels whose centres fall in [i·s, (i+1)·s) ×
    [j·t, (j+1)·t), s = H'/height, t = W'/width. With alpha (C = 2 or 4) and ``premultiply`` the colour
    planes come back premultiplied, resize(p·α/255), next to resize(α): the resize is linear, so
    :func:`to_channels` then puts them on white exactly as it would the full-size picture.
    """
    p = _layout(pixels)
    planes = p.shape[2]
    out = np.empty((height, width, planes))
    alpha = p[..., -1].astype(np.float32) / np.float32(255) if premultiply and planes in (2, 4) else None
    for c in range(planes):
        plane = p[..., c] if alpha is None or c == planes - 1 else p[..., c] * alpha
        out[..., c] = _resize_plane(plane, height, width)
    return out


def border_is_brighter(image: np.ndarray) -> bool:
    """True for dark ink on light paper: the one-pixel frame is brighter than the image as a whole."""
    frame = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return float(frame.mean()) > float(image.mean())
