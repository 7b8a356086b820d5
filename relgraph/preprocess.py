"""From an uploaded picture to the model's input, as the model's own metadata says.

A model states how images become inputs in its ONNX ``metadata_props`` (the compiler carries them into the
explainer), under two keys:

``relgraph.preprocess`` (JSON)::

    {"channels": 1 | 3, "height": H, "width": W, "scale": 1/255, "mean": [...], "std": [...],
     "invert": false | true | "auto", "autocontrast": false | true}

``relgraph.classes`` (JSON): the class names, index = class.

For a decoded image p (uint8, H'×W'×{1,3,4}) the input is, channel by channel c,

    q = area_resize(to_channels(p))                           (H×W, float)
    q = 255 − q                  when invert (or "auto" and the border is brighter than the whole image)
    q = 255·(q − min q)/(max q − min q)                       when autocontrast (and max q > min q)
    x_c = (scale·q_c − mean_c) / std_c

``to_channels`` puts transparent pixels on white (an alpha-drawn digit reads as ink on paper) and takes
the luma 0.299R + 0.587G + 0.114B for one channel. ``area_resize`` averages each output pixel's footprint
with fractional coverage (a box filter), which is how scikit-learn's 8×8 digits were made from 32×32
bitmaps; the picture is stretched to H×W, not cropped.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

import numpy as np

from .errors import RelgraphError

PREPROCESS_KEY = "relgraph.preprocess"
MAX_PIXELS = 40_000_000  # a few hundred bytes of PNG can inflate to gigabytes: refuse before decoding
CLASSES_KEY = "relgraph.classes"


class UnsupportedImage(RelgraphError):
    """An image the service cannot read in this installation (HTTP 415, not 400)."""


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
        q = area_resize(to_channels(pixels, self.channels), self.height, self.width)
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


# ------------------------------------------------------------------------------------------- decoding


def decode_image(data: bytes) -> np.ndarray:
    """PNG (built in) or JPEG (with Pillow) bytes → uint8 H×W or H×W×{2,3,4}, told apart by their magic."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        from .heatmap import decode_png

        width, height = struct.unpack(">II", data[16:24]) if len(data) >= 24 else (0, 0)
        if width * height > MAX_PIXELS:
            raise RelgraphError(f"the image is {width}×{height}: more than {MAX_PIXELS:,} pixels")
        try:
            return decode_png(data)
        except ValueError as exc:
            raise RelgraphError(f"cannot read the PNG: {exc}") from None
    if data.startswith(b"\xff\xd8\xff"):
        return _decode_jpeg(data)
    raise UnsupportedImage("the image is neither PNG nor JPEG")


def _decode_jpeg(data: bytes) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise UnsupportedImage("JPEG images need Pillow (pip install pillow); send a PNG instead") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # Pillow raises many types for broken files
        raise RelgraphError(f"cannot read the JPEG: {exc}") from None


# ------------------------------------------------------------------------------------------- geometry


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 H×W[×{2,3,4}] → float64 H×W×channels; alpha composites onto white, one channel is the luma."""
    p = np.asarray(pixels, np.float64)
    if p.ndim == 2:
        p = p[..., None]
    if p.ndim != 3 or p.shape[2] not in (1, 2, 3, 4):
        raise RelgraphError(f"unsupported image layout {list(np.shape(pixels))}")
    if p.shape[2] in (2, 4):  # over white: a transparent background is paper
        alpha = p[..., -1:] / 255.0
        p = p[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    if channels == 1 and p.shape[2] == 3:
        p = p @ np.array([[0.299], [0.587], [0.114]])
    if channels == 3 and p.shape[2] == 1:
        p = np.repeat(p, 3, axis=2)
    return p


def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """The [size_out, size_in] box-filter matrix: row i averages input span [i·s, (i+1)·s), s = in/out,
    each input pixel weighted by the length of its overlap with that span (rows sum to 1)."""
    edges = np.arange(size_out + 1) * (size_in / size_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """H'×W'×C → height×width×C by area averaging (separable: rows, then columns)."""
    rows, cols = area_weights(image.shape[0], height), area_weights(image.shape[1], width)
    tall = np.tensordot(rows, image, axes=(1, 0))  # two small products, never height×width×H'×W'
    return np.moveaxis(np.tensordot(tall, cols, axes=(1, 1)), 2, 1)


def border_is_brighter(image: np.ndarray) -> bool:
    """True for dark ink on light paper: the one-pixel frame is brighter than the image as a whole."""
    frame = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return float(frame.mean()) > float(image.mean())
