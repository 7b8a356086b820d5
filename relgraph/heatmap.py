"""Image I/O through Pillow, with limits, and relevance heatmap rendering.

Decoding and encoding go through Pillow (an optional dependency: ``pip install 'relgraph[cpu]'``), never
through code of our own. A picture from outside is hostile until proven otherwise, so decoding is bounded
before a single pixel is decoded: the header's size (what Pillow will decode, the last IHDR included) must
stay within :data:`MAX_PIXELS` and :data:`MAX_DECODED_BYTES`, PNG text chunks within Pillow's
``MAX_TEXT_CHUNK`` / ``MAX_TEXT_MEMORY`` set below, and a truncated file is an error, not a grey picture.
Decompression is streamed by Pillow into the image's own buffer, so a small file whose data inflates far
beyond its header stops at the header's size.

* :func:`decode_image` / :func:`read_image` -- PNG (any bit depth, interlaced, palette), JPEG or WebP →
  uint8 H×W, H×W×2 (gray + alpha), H×W×3 or H×W×4. :func:`decode_png` / :func:`read_png` are the same.
* :func:`encode_png` / :func:`write_png` -- uint8 H×W[×{2,3,4}] → an 8-bit PNG (written atomically).
* :func:`relevance_to_rgb` -- a diverging blue/white/red colormap that is symmetric around zero.
* :func:`overlay`, :func:`upscale`, :func:`heatmap_image` and :func:`heatmap_strip` -- from relevance to
  a viewable RGB image; the strip draws at most :data:`MAX_TILES` samples, one at a time.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Optional, Union

import numpy as np

from .errors import RelgraphError
from .files import replacing

__all__ = [
    "MAX_PIXELS",
    "MAX_DECODED_BYTES",
    "UnsupportedImage",
    "decode_image",
    "read_image",
    "decode_png",
    "read_png",
    "encode_png",
    "write_png",
    "relevance_to_rgb",
    "overlay",
    "upscale",
    "heatmap_image",
    "heatmap_strip",
]

PathLike = Union[str, "os.PathLike[str]"]

MAX_PIXELS = 40_000_000  # a few hundred bytes of PNG can describe gigapixels: refuse before decoding
MAX_DECODED_BYTES = 192 * 2**20  # what Pillow holds once decoded (16-bit gray: 2 bytes a pixel; RGBA: 4)
MAX_TEXT_CHUNK = 256 * 2**10  # one PNG text chunk (Pillow's default: 1 MiB)
MAX_TEXT_MEMORY = 2**20  # all text chunks of one PNG (Pillow's default: 64 MiB)
MAX_TILES = 64  # samples drawn side by side in one heatmap strip
INSTALL_PILLOW = "pip install 'relgraph[cpu]' (or pip install pillow)"

# The formats relgraph reads, told apart by their first bytes; nothing else is handed to Pillow.
_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
_CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2,
                    "I;16N": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "RGBa": 4, "CMYK": 4, "I": 4, "F": 4}


class UnsupportedImage(RelgraphError):
    """An image this installation cannot read: not PNG, JPEG or WebP, or Pillow missing (HTTP 415, not 400)."""


def image_format(head: bytes) -> Optional[str]:
    """"PNG", "JPEG" or "WEBP" from a file's first 12 bytes; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def pillow():
    """Pillow's Image module with relgraph's limits in force, or a one-line error naming what to install."""
    try:
        from PIL import Image, ImageFile, PngImagePlugin
    except ImportError:
        raise UnsupportedImage(f"reading and writing images needs Pillow, which is not installed: "
                               f"{INSTALL_PILLOW}") from None
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a partly grey picture
    PngImagePlugin.MAX_TEXT_CHUNK = MAX_TEXT_CHUNK
    PngImagePlugin.MAX_TEXT_MEMORY = MAX_TEXT_MEMORY
    return Image


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def _check_size(width: int, height: int, mode: str, kind: str, max_pixels: int) -> None:
    """The header check: run on ``Image.open``'s size, before ``load()`` decodes anything."""
    pixels = width * height
    if pixels > max_pixels:
        raise RelgraphError(f"the {_FORMATS[kind]} image is {width}×{height}: more than {max_pixels:,} pixels")
    decoded = pixels * _BYTES_PER_PIXEL.get(mode, 4)
    if decoded > MAX_DECODED_BYTES:
        raise RelgraphError(f"the {_FORMATS[kind]} image is {width}×{height} {mode}: {decoded / 2**20:.0f} MiB "
                            f"decoded, more than {MAX_DECODED_BYTES / 2**20:.0f} MiB")


def _as_uint8(image) -> np.ndarray:
    """A loaded Pillow image → uint8 H×W (gray), H×W×2 (gray + alpha), H×W×3 (RGB) or H×W×4 (RGBA).

    1-bit gray becomes 0/255; 16-bit gray v becomes round(255·v/65535) (Pillow keeps it as "I;16");
    palette images become RGB, or RGBA when they carry transparency; CMYK and YCbCr become RGB.
    """
    mode = image.mode
    if mode.startswith("I"):  # 16- or 32-bit gray
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode == "La":
        image = image.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "a" in image.getbands() else "RGB")
    return np.array(image, dtype=np.uint8)


def _decode(source, kind: Optional[str], max_pixels: int) -> np.ndarray:
    if kind is None:
        raise UnsupportedImage("the image is neither PNG nor JPEG nor WebP")
    Image = pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=(kind,)) as image:
                _check_size(image.width, image.height, image.mode, kind, max_pixels)
                image.load()
                return _as_uint8(image)
    except RelgraphError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own, larger cap
        raise RelgraphError(f"the {_FORMATS[kind]} image is over {max_pixels:,} pixels ({exc})") from None
    except Exception as exc:  # Pillow raises many types for broken files (OSError, SyntaxError, ValueError...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RelgraphError(f"cannot read the {_FORMATS[kind]}: {reason}") from None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """PNG, JPEG or WebP bytes → uint8 pixels (see :func:`_as_uint8`), within the limits above.

    Raises :class:`UnsupportedImage` for another format or without Pillow, :class:`RelgraphError` for a
    broken file or one over the limits.
    """
    return _decode(io.BytesIO(data), image_format(bytes(data[:12])), max_pixels)


def read_image(path: PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """:func:`decode_image` of a file, streamed from disk."""
    try:
        with open(path, "rb") as f:
            kind = image_format(f.read(12))
            f.seek(0)
            return _decode(f, kind, max_pixels)
    except OSError as exc:
        raise RelgraphError(f"cannot read {path}: {exc.strerror}") from None


decode_png = decode_image
read_png = read_image


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _pillow_image(pixels: np.ndarray):
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"a PNG is written from a uint8 array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in _CHANNEL_MODES):
        raise ValueError(f"a PNG is written from an H×W, H×W×2, H×W×3 or H×W×4 array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {arr.shape}")
    return pillow().fromarray(np.ascontiguousarray(arr))


def encode_png(image: np.ndarray, compression: int = 6) -> bytes:
    """A uint8 H×W, H×W×2, H×W×3 or H×W×4 array as 8-bit PNG bytes (zlib level ``compression``)."""
    buffer = io.BytesIO()
    _pillow_image(image).save(buffer, format="PNG", compress_level=compression)
    return buffer.getvalue()


def write_png(path: PathLike, rgb_uint8: np.ndarray) -> None:
    """Write a uint8 image to ``path`` as an 8-bit PNG, atomically (see :func:`relgraph.files.replacing`)."""
    image = _pillow_image(rgb_uint8)
    with replacing(path) as temporary:
        image.save(temporary, format="PNG")


# ---------------------------------------------------------------------------
# Heatmap rendering
# ---------------------------------------------------------------------------


def _relevance_2d(relevance: np.ndarray) -> np.ndarray:
    """Reduce a relevance tensor of shape [H,W], [C,H,W] or [1,C,H,W] to HxW."""
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim == 4 and rel.shape[0] == 1:
        rel = rel[0]
    if rel.ndim == 3:
        rel = rel.sum(axis=0)
    if rel.ndim != 2:
        raise ValueError(
            f"relevance must have shape [H,W], [C,H,W] or [1,C,H,W], got {np.shape(relevance)}"
        )
    return np.nan_to_num(rel, nan=0.0, posinf=0.0, neginf=0.0)


def relevance_to_rgb(relevance: np.ndarray, *, percentile: float = 99.5) -> np.ndarray:
    """Map an HxW relevance map to an HxWx3 uint8 image with a diverging colormap.

    Zero maps to white, positive values fade to red and negative values to
    blue. The scale is symmetric: values are divided by the given percentile
    of ``|relevance|`` and clipped to [-1, 1]. An all-zero map renders white.
    Non-finite values are treated as zero.
    """
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim != 2:
        raise ValueError(f"relevance_to_rgb expects an HxW map, got shape {rel.shape}")
    rel = np.nan_to_num(rel, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.percentile(np.abs(rel), percentile)) if rel.size else 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        scale = float(np.abs(rel).max()) if rel.size else 0.0
    if scale <= 0.0:
        scale = 1.0
    value = np.clip(rel / scale, -1.0, 1.0)
    pos = np.clip(value, 0.0, 1.0)
    neg = np.clip(-value, 0.0, 1.0)
    red = 1.0 - neg
    green = 1.0 - pos - neg
    blue = 1.0 - pos
    rgb = np.stack([red, green, blue], axis=-1)
    # Flooring keeps every non-zero relevance visibly off-white.
    return np.floor(rgb * 255.0).astype(np.uint8)


def _to_hwc(image: np.ndarray) -> np.ndarray:
    """Bring an image to HxW or HxWxC layout, accepting channel-first input."""
    img = np.asarray(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[2] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img


def _to_gray01(image: np.ndarray) -> np.ndarray:
    """Convert an image (HxW / HxWx3 / HxWx4, uint8 or float) to grayscale in [0, 1]."""
    img = _to_hwc(image)
    is_uint8 = img.dtype == np.uint8
    img = img.astype(np.float64)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[:, :, :3] @ np.array([0.299, 0.587, 0.114])
    if img.ndim != 2:
        raise ValueError(f"image must be HxW, HxWx3 or HxWx4, got shape {np.shape(image)}")
    if is_uint8:
        return img / 255.0
    img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(img.min()), float(img.max())
    if hi - lo <= 0.0:
        return np.full_like(img, 0.5)
    return (img - lo) / (hi - lo)


def overlay(image: np.ndarray, relevance: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a relevance heatmap over a grayscale version of ``image``.

    Args:
        image: HxW or HxWx3 (also CxHxW) image, either uint8 or float in any
            range (floats are min-max normalized).
        relevance: HxW relevance map with the same spatial size as ``image``.
        alpha: heatmap opacity in [0, 1].

    Returns:
        HxWx3 uint8 image ``(1 - alpha) * gray + alpha * heatmap``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = _to_gray01(image)
    heat = relevance_to_rgb(_relevance_2d(relevance)).astype(np.float64) / 255.0
    if gray.shape != heat.shape[:2]:
        raise ValueError(
            f"image size {gray.shape} does not match relevance size {heat.shape[:2]}"
        )
    blended = (1.0 - alpha) * gray[:, :, None] + alpha * heat
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge an HxW or HxWxC image by an integer factor (nearest neighbour)."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"upscale factor must be a positive integer, got {factor}")
    arr = np.asarray(img)
    if arr.ndim < 2:
        raise ValueError(f"upscale expects an HxW or HxWxC image, got shape {arr.shape}")
    if factor == 1:
        return arr.copy()
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def heatmap_image(
    relevance: np.ndarray, image: Optional[np.ndarray] = None, size: int = 256
) -> np.ndarray:
    """Render a relevance tensor as a viewable uint8 RGB image.

    Args:
        relevance: relevance of shape [H,W], [C,H,W] or [1,C,H,W]; channels
            are summed.
        image: optional input image (same spatial size) to overlay on.
        size: target length of the longer side; the image is enlarged by the
            nearest integer factor (never shrunk).

    Returns:
        uint8 array of shape (H*k)x(W*k)x3.
    """
    rel = _relevance_2d(relevance)
    rgb = relevance_to_rgb(rel) if image is None else overlay(image, rel)
    factor = max(1, int(round(size / max(rel.shape))))
    return upscale(rgb, factor)


def heatmap_strip(
    relevance: np.ndarray, images: Optional[np.ndarray] = None, size: int = 256, max_tiles: int = MAX_TILES
) -> np.ndarray:
    """The heatmaps of the first ``max_tiles`` samples of ``relevance`` [N, ...] side by side, 8 white
    pixels apart, each over ``images[n]`` when given (see :func:`heatmap_image`).

    Tiles are drawn one at a time into the strip, so memory is the strip's, not N float64 copies.
    """
    count = min(len(relevance), max_tiles)
    if count == 0:
        raise ValueError("no samples to draw")
    strip = None
    for n in range(count):
        tile = heatmap_image(relevance[n], image=None if images is None else images[n], size=size)
        if strip is None:
            step = tile.shape[1] + 8
            strip = np.full((tile.shape[0], step * count - 8, 3), 255, np.uint8)
        strip[:, n * step:n * step + tile.shape[1]] = tile
    return strip
