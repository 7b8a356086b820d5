"""Dependency-free image I/O and relevance heatmap rendering.

This module only needs numpy and the standard library. It provides:

* :func:`write_png` / :func:`read_png` -- a minimal PNG encoder and a decoder
  for non-interlaced PNGs (8-bit gray, RGB, gray+alpha, RGBA, and palette or
  gray images with 1/2/4/8-bit samples).
* :func:`relevance_to_rgb` -- a diverging blue/white/red colormap that is
  symmetric around zero.
* :func:`overlay`, :func:`upscale` and :func:`heatmap_image` -- helpers to
  turn a relevance tensor into a viewable RGB image.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Iterator, Optional, Tuple, Union

import numpy as np

__all__ = [
    "write_png",
    "read_png",
    "relevance_to_rgb",
    "overlay",
    "upscale",
    "heatmap_image",
    "save_heatmap",
]

PathLike = Union[str, "os.PathLike[str]"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG color types and the number of samples per pixel for each.
_GRAY, _RGB, _PALETTE, _GRAY_ALPHA, _RGBA = 0, 2, 3, 4, 6
_CHANNELS = {_GRAY: 1, _RGB: 3, _PALETTE: 1, _GRAY_ALPHA: 2, _RGBA: 4}
_ALLOWED_DEPTHS = {
    _GRAY: (1, 2, 4, 8, 16),
    _RGB: (8, 16),
    _PALETTE: (1, 2, 4, 8),
    _GRAY_ALPHA: (8, 16),
    _RGBA: (8, 16),
}
_COLOR_TYPE_FOR_CHANNELS = {1: _GRAY, 2: _GRAY_ALPHA, 3: _RGB, 4: _RGBA}


# ---------------------------------------------------------------------------
# PNG writing
# ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    """Serialize one PNG chunk (length, type, data, CRC-32 of type+data)."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _as_png_pixels(image: np.ndarray) -> Tuple[np.ndarray, int]:
    """Validate an array for :func:`write_png`; return it as HxWxC and its color type."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_png expects a uint8 array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in _COLOR_TYPE_FOR_CHANNELS:
        raise ValueError(
            f"write_png expects an HxW, HxWx2, HxWx3 or HxWx4 array, got shape {np.shape(image)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"write_png cannot encode an empty image of shape {np.shape(image)}")
    return np.ascontiguousarray(arr), _COLOR_TYPE_FOR_CHANNELS[arr.shape[2]]


def encode_png(image: np.ndarray, compression: int = 6) -> bytes:
    """Encode a uint8 image (HxW, HxWx2, HxWx3 or HxWx4) as PNG bytes.

    Rows are stored with filter type 0 (None) and compressed with zlib.
    """
    pixels, color_type = _as_png_pixels(image)
    height, width, channels = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    rows = pixels.reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1)
    body = zlib.compress(raw.tobytes(), compression)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", body)
        + _chunk(b"IEND", b"")
    )


def write_png(path: PathLike, rgb_uint8: np.ndarray) -> None:
    """Write a uint8 image to ``path`` as an 8-bit PNG.

    Args:
        path: destination file name.
        rgb_uint8: array of shape HxW (grayscale), HxWx3 (RGB) or HxWx4
            (RGBA); HxWx2 (gray+alpha) is accepted as well.
    """
    data = encode_png(rgb_uint8)
    with open(path, "wb") as handle:
        handle.write(data)


# ---------------------------------------------------------------------------
# PNG reading
# ---------------------------------------------------------------------------


def _iter_chunks(data: bytes) -> Iterator[Tuple[bytes, bytes]]:
    """Yield ``(type, payload)`` for each chunk, verifying lengths and CRCs."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file: missing PNG signature")
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated PNG: incomplete chunk header")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"truncated PNG: chunk {kind!r} runs past end of file")
        payload = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise ValueError(f"corrupt PNG: CRC mismatch in chunk {kind!r}")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end + 4
    raise ValueError("truncated PNG: missing IEND chunk")


def _parse_header(payload: bytes) -> Tuple[int, int, int, int]:
    """Parse and validate IHDR; return ``(width, height, bit_depth, color_type)``."""
    if len(payload) != 13:
        raise ValueError("corrupt PNG: IHDR chunk must be 13 bytes")
    width, height, depth, color_type, compression, filter_method, interlace = struct.unpack(
        ">IIBBBBB", payload
    )
    if width == 0 or height == 0:
        raise ValueError(f"corrupt PNG: invalid size {width}x{height}")
    if color_type not in _CHANNELS:
        raise ValueError(f"unsupported PNG: unknown color type {color_type}")
    if depth not in _ALLOWED_DEPTHS[color_type]:
        raise ValueError(f"corrupt PNG: bit depth {depth} invalid for color type {color_type}")
    if depth == 16:
        raise ValueError("unsupported PNG: 16-bit samples are not supported (8-bit only)")
    if compression != 0 or filter_method != 0:
        raise ValueError("unsupported PNG: unknown compression or filter method")
    if interlace != 0:
        raise ValueError("unsupported PNG: interlaced (Adam7) images are not supported")
    return width, height, depth, color_type


def _paeth(a: int, b: int, c: int) -> int:
    """Paeth predictor from the PNG specification."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


def _unfilter_row(
    filter_type: int, row: bytearray, prior: bytearray, bpp: int
) -> bytearray:
    """Undo one PNG row filter in place and return the reconstructed row."""
    n = len(row)
    if filter_type == 0:  # None
        pass
    elif filter_type == 1:  # Sub
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif filter_type == 2:  # Up
        row[:] = ((np.frombuffer(row, np.uint8) + np.frombuffer(prior, np.uint8))).tobytes()
    elif filter_type == 3:  # Average
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + prior[i]) >> 1)) & 0xFF
    elif filter_type == 4:  # Paeth
        for i in range(n):
            if i >= bpp:
                left, upper_left = row[i - bpp], prior[i - bpp]
            else:
                left, upper_left = 0, 0
            row[i] = (row[i] + _paeth(left, prior[i], upper_left)) & 0xFF
    else:
        raise ValueError(f"corrupt PNG: unknown row filter type {filter_type}")
    return row


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Reverse the per-row filters of decompressed image data; return rows as bytes."""
    expected = height * (stride + 1)
    if len(raw) < expected:
        raise ValueError(
            f"corrupt PNG: image data has {len(raw)} bytes, expected {expected}"
        )
    out = np.empty((height, stride), dtype=np.uint8)
    prior = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = bytearray(raw[start + 1 : start + 1 + stride])
        prior = _unfilter_row(raw[start], row, prior, bpp)
        out[y] = np.frombuffer(prior, dtype=np.uint8)
    return out


def _unpack_samples(rows: np.ndarray, width: int, depth: int, channels: int) -> np.ndarray:
    """Split packed rows into an ``height x width*channels`` array of sample values."""
    if depth == 8:
        return rows[:, : width * channels]
    bits = np.unpackbits(rows, axis=1)
    count = width * channels
    bits = bits[:, : count * depth].reshape(rows.shape[0], count, depth)
    weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
    return (bits * weights).sum(axis=2).astype(np.uint8)


def _apply_palette(
    indices: np.ndarray, palette: Optional[bytes], alpha: Optional[bytes]
) -> np.ndarray:
    """Map palette indices to RGB (or RGBA when a tRNS chunk is present)."""
    if palette is None:
        raise ValueError("corrupt PNG: palette image without PLTE chunk")
    if len(palette) % 3 != 0 or not palette:
        raise ValueError("corrupt PNG: PLTE length is not a positive multiple of 3")
    table = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
    if alpha is not None:
        opacity = np.full((table.shape[0], 1), 255, dtype=np.uint8)
        given = np.frombuffer(alpha, dtype=np.uint8)[: table.shape[0]]
        opacity[: given.size, 0] = given
        table = np.concatenate([table, opacity], axis=1)
    if indices.size and int(indices.max()) >= table.shape[0]:
        raise ValueError("corrupt PNG: palette index out of range")
    return table[indices]


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes into a uint8 array; see :func:`read_png`."""
    header = None
    palette: Optional[bytes] = None
    transparency: Optional[bytes] = None
    idat = []
    for kind, payload in _iter_chunks(data):
        if kind == b"IHDR":
            header = _parse_header(payload)
        elif header is None:
            raise ValueError("corrupt PNG: first chunk is not IHDR")
        elif kind == b"PLTE":
            palette = payload
        elif kind == b"tRNS":
            transparency = payload
        elif kind == b"IDAT":
            idat.append(payload)
    if header is None:
        raise ValueError("corrupt PNG: missing IHDR chunk")
    if not idat:
        raise ValueError("corrupt PNG: missing IDAT chunk")
    width, height, depth, color_type = header
    channels = _CHANNELS[color_type]

    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"corrupt PNG: cannot decompress image data ({exc})") from None

    stride = (width * channels * depth + 7) // 8
    bpp = max(1, channels * depth // 8)
    rows = _unfilter(raw, height, stride, bpp)
    samples = _unpack_samples(rows, width, depth, channels)

    if color_type == _PALETTE:
        return _apply_palette(samples.reshape(height, width), palette, transparency)
    if color_type == _GRAY:
        if depth < 8:
            samples = (samples.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
        return np.ascontiguousarray(samples.reshape(height, width))
    return np.ascontiguousarray(samples.reshape(height, width, channels))


def read_png(path: PathLike) -> np.ndarray:
    """Read a non-interlaced PNG file into a uint8 numpy array.

    Supported: 8-bit gray (-> HxW), RGB (-> HxWx3), gray+alpha (-> HxWx2) and
    RGBA (-> HxWx4); palette images (-> HxWx3, or HxWx4 when the file has a
    ``tRNS`` chunk); gray images with 1, 2 or 4-bit samples are rescaled to
    0..255. Color-key transparency (``tRNS`` for gray/RGB) is ignored.

    Raises:
        ValueError: the file is not a PNG, is corrupt, is interlaced or uses
            16-bit samples.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    return decode_png(data)


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


def save_heatmap(
    path: PathLike,
    relevance: np.ndarray,
    image: Optional[np.ndarray] = None,
    size: int = 256,
) -> np.ndarray:
    """Render with :func:`heatmap_image`, write it as PNG and return the pixels."""
    rgb = heatmap_image(relevance, image=image, size=size)
    write_png(path, rgb)
    return rgb
