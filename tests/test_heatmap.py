"""Tests for relgraph.heatmap: image I/O through Pillow (files crafted by hand, by the PNG spec) and rendering."""

import io
import struct
import sys
import zlib

import numpy as np
import pytest

from relgraph.errors import RelgraphError
from relgraph.heatmap import (
    UnsupportedImage,
    decode_image,
    encode_png,
    heatmap_image,
    heatmap_strip,
    overlay,
    read_image,
    relevance_to_rgb,
    upscale,
    write_png,
)

Image = pytest.importorskip("PIL.Image")

SEEDS = [0, 1, 2, 3, 4]
SHAPES = [(1, 1), (7, 5), (8, 8), (33, 17), (64, 48)]
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def _random_image(rng, shape, channels, dtype=np.uint8):
    """Random image with smooth and noisy regions (exercises all filters)."""
    h, w = shape
    top = np.iinfo(dtype).max
    full = (h, w) if channels == 1 else (h, w, channels)
    noise = rng.integers(0, top + 1, size=full, dtype=dtype)
    ramp = (np.add.outer(np.arange(h), np.arange(w)) * (top // 255)).astype(dtype)
    if channels > 1:
        ramp = ramp[:, :, None].repeat(channels, axis=2)
    return np.where(rng.random(full) < 0.5, noise, ramp).astype(dtype)


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _raw_png(width, height, depth, color_type, data, interlace=0, extra=b""):
    """A PNG around already-filtered scanlines (for crafted test files)."""
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(data))
            + _chunk(b"IEND", b""))


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_rows(rows, filter_type, bpp):
    """Reference PNG filtering (spec section 9) of byte rows [H, stride] with one filter for all rows."""
    rows = rows.astype(int)
    out = []
    for y in range(rows.shape[0]):
        cur = rows[y]
        up = rows[y - 1] if y else np.zeros_like(cur)
        line = [filter_type]
        for i in range(len(cur)):
            left = cur[i - bpp] if i >= bpp else 0
            upper_left = up[i - bpp] if i >= bpp else 0
            predictor = [0, left, up[i], (left + up[i]) // 2, _paeth(left, up[i], upper_left)][filter_type]
            line.append((cur[i] - predictor) % 256)
        out.append(bytes(line))
    return b"".join(out)


def _scanlines(arr, channels, depth=8):
    """Byte rows [H, stride] of an 8- or 16-bit array (16-bit samples big-endian, as PNG stores them)."""
    h = arr.shape[0]
    return np.frombuffer(arr.astype(">u2" if depth == 16 else np.uint8).tobytes(), np.uint8).reshape(h, -1)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _interlaced(arr, channels, depth, filter_type):
    """Adam7 (spec section 8.2): seven reduced images (x0, y0, dx, dy), each filtered on its own."""
    data = b""
    for x0, y0, dx, dy in ADAM7:
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            rows = _scanlines(sub, channels, depth)
            data += _filter_rows(rows, filter_type, channels * depth // 8)
    return data


# ---------------------------------------------------------------------------
# Encoding: read back by Pillow
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_write_png_decoded_by_pillow(tmp_path, seed, channels):
    arr = _random_image(np.random.default_rng(seed), SHAPES[seed % len(SHAPES)], channels)
    path = tmp_path / "out.png"
    write_png(path, arr)
    with Image.open(path) as im:
        im.load()
        assert im.mode == MODES[channels]
        np.testing.assert_array_equal(np.asarray(im), arr)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left behind
    np.testing.assert_array_equal(read_image(path), arr)
    np.testing.assert_array_equal(decode_image(encode_png(arr)), arr)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 5), np.uint8), np.zeros(4, np.uint8),
            np.zeros((0, 3, 3), np.uint8)]
)
def test_write_png_rejects_bad_input(tmp_path, bad):
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", bad)
    assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------------------
# Decoding: files written by hand and by Pillow
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_each_filter(tmp_path, seed, filter_type, channels):
    arr = _random_image(np.random.default_rng(seed), (9, 11), channels)
    rows = _filter_rows(_scanlines(arr, channels), filter_type, channels)
    path = tmp_path / "f.png"
    path.write_bytes(_raw_png(11, 9, 8, COLOR_TYPES[channels], rows))
    np.testing.assert_array_equal(read_image(path), arr)


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit(seed, channels):
    """Gray keeps its precision, round(255·v/65535); Pillow keeps the high byte of 16-bit colour (v >> 8)
    and opens 16-bit gray + alpha as RGBA (gray in R, G and B)."""
    arr = _random_image(np.random.default_rng(seed), (6, 7), channels, np.uint16)
    rows = _filter_rows(_scanlines(arr, channels, 16), 4, 2 * channels)
    got = decode_image(_raw_png(7, 6, 16, COLOR_TYPES[channels], rows))
    if channels == 1:
        np.testing.assert_array_equal(got, np.round(arr / 257.0).astype(np.uint8))
    else:
        expected = arr.astype(int) >> 8
        if channels == 2:
            expected = expected[..., [0, 0, 0, 1]]
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got.astype(int), expected)


@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (13, 9), (16, 16)])
@pytest.mark.parametrize("channels,depth", [(1, 8), (3, 8), (4, 8), (1, 16)])
def test_interlaced(shape, channels, depth):
    dtype = np.uint16 if depth == 16 else np.uint8
    arr = _random_image(np.random.default_rng(sum(shape)), shape, channels, dtype)
    data = _interlaced(arr, channels, depth, filter_type=4)
    got = decode_image(_raw_png(shape[1], shape[0], depth, COLOR_TYPES[channels], data, interlace=1))
    expected = np.round(arr / 257.0).astype(np.uint8) if depth == 16 else arr
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_depth_gray(depth):
    """Samples of 1, 2 or 4 bits, packed high bits first, scale to 0..255 as v·255/(2^depth − 1)."""
    rng = np.random.default_rng(depth)
    values = rng.integers(0, 2**depth, size=(5, 13))
    per_byte = 8 // depth
    padded = np.zeros((5, -(-13 // per_byte) * per_byte), int)
    padded[:, :13] = values
    shifts = depth * np.arange(per_byte - 1, -1, -1)
    packed = (padded.reshape(5, -1, per_byte) << shifts).sum(axis=2).astype(np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in packed)
    got = decode_image(_raw_png(13, 5, depth, 0, rows))
    np.testing.assert_array_equal(got, (values * 255 // (2**depth - 1)).astype(np.uint8))


def test_one_bit_image_from_pillow(tmp_path):
    bits = np.random.default_rng(0).random((13, 21)) < 0.5
    path = tmp_path / "bw.png"
    Image.fromarray(bits).save(path, format="PNG")
    got = read_image(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.where(bits, 255, 0))


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("colors", [2, 4, 16, 200])
def test_palette(seed, colors):
    """Palette images (1-, 2-, 4- and 8-bit indices, PLTE) decode to RGB by the palette."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(colors, 3), dtype=np.uint8)
    indices = rng.integers(0, colors, size=(9, 19))
    depth = next(d for d in (1, 2, 4, 8) if colors <= 2**d)
    per_byte = 8 // depth
    padded = np.zeros((9, -(-19 // per_byte) * per_byte), int)
    padded[:, :19] = indices
    packed = (padded.reshape(9, -1, per_byte) << depth * np.arange(per_byte - 1, -1, -1)).sum(2).astype(np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in packed)
    got = decode_image(_raw_png(19, 9, depth, 3, rows, extra=_chunk(b"PLTE", palette.tobytes())))
    np.testing.assert_array_equal(got, palette[indices])


def test_palette_with_transparency():
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(8, 3), dtype=np.uint8)
    alpha = np.array([0, 128, 255, 10], np.uint8)  # tRNS may be shorter than PLTE: the rest is opaque
    indices = rng.integers(0, 8, size=(6, 7)).astype(np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in indices)
    extra = _chunk(b"PLTE", palette.tobytes()) + _chunk(b"tRNS", alpha.tobytes())
    got = decode_image(_raw_png(7, 6, 8, 3, rows, extra=extra))
    opacity = np.concatenate([alpha, np.full(4, 255, np.uint8)])
    np.testing.assert_array_equal(got, np.concatenate([palette, opacity[:, None]], axis=1)[indices])


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_multiple_idat(seed):
    arr = _random_image(np.random.default_rng(seed), (40, 30), 3)
    data = zlib.compress(_filter_rows(_scanlines(arr, 3), 1, 3))
    pieces = [data[i:i + 97] for i in range(0, len(data), 97)]
    header = struct.pack(">IIBBBBB", 30, 40, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + b"".join(_chunk(b"IDAT", p) for p in pieces)
           + _chunk(b"IEND", b""))
    np.testing.assert_array_equal(decode_image(png), arr)


def _smooth(shape, channels):
    y, x = np.mgrid[:shape[0], :shape[1]]
    planes = [127 + 100 * np.sin(x / 7 + c) * np.cos(y / 9 - c) for c in range(channels)]
    return np.clip(np.stack(planes, -1).squeeze(-1) if channels == 1 else np.stack(planes, -1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3), ("CMYK", 3)])
def test_jpeg(mode, channels):
    """JPEG is lossy: a smooth picture comes back within a few levels; CMYK comes back as RGB."""
    arr = _smooth((48, 64), channels)
    image = Image.fromarray(arr)
    buffer = io.BytesIO()
    (image.convert("CMYK") if mode == "CMYK" else image).save(buffer, format="JPEG", quality=95)
    got = decode_image(buffer.getvalue())
    assert got.shape == arr.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - arr).mean() < 2.0 and np.abs(got.astype(int) - arr).max() < 24


@pytest.mark.parametrize("channels", [3, 4])
def test_webp_lossless(channels):
    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    arr = _random_image(np.random.default_rng(channels), (17, 23), channels)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="WEBP", lossless=True, exact=True)
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), arr)


def test_rejects_other_formats_and_broken_files(tmp_path):
    with pytest.raises(UnsupportedImage, match="neither PNG nor JPEG"):
        decode_image(b"GIF89a not a png at all")
    good = encode_png(np.zeros((4, 4), np.uint8))
    bad_crc = bytearray(good)
    bad_crc[20] ^= 0xFF  # inside IHDR
    for broken in (bytes(bad_crc), good[:-30], good[:40]):
        with pytest.raises(RelgraphError, match="cannot read the PNG"):
            decode_image(broken)
    with pytest.raises(RelgraphError, match="cannot read"):
        read_image(tmp_path / "missing.png")


def test_without_pillow_one_line_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    for call in (lambda: decode_image(b"\x89PNG\r\n\x1a\n" + bytes(40)), lambda: encode_png(np.zeros((2, 2), np.uint8))):
        with pytest.raises(UnsupportedImage) as info:
            call()
        assert "Pillow" in str(info.value) and "pip install" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# Colormap and rendering
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_colormap_signs(seed):
    rng = np.random.default_rng(seed)
    rel = rng.normal(size=(16, 12))
    rel[rng.random(rel.shape) < 0.2] = 0.0
    rgb = relevance_to_rgb(rel).astype(int)
    assert rgb.shape == (16, 12, 3)
    red, blue = rgb[..., 0], rgb[..., 2]
    pos, neg, zero = rel > 0, rel < 0, rel == 0
    assert np.all(red[pos] > blue[pos])
    assert np.all(blue[neg] > red[neg])
    assert np.all(rgb[zero] == 255)


@pytest.mark.parametrize("seed", SEEDS)
def test_colormap_symmetric(seed):
    rng = np.random.default_rng(seed)
    rel = rng.normal(size=(9, 9))
    rgb = relevance_to_rgb(rel).astype(int)
    flipped = relevance_to_rgb(-rel).astype(int)
    np.testing.assert_array_equal(rgb[..., 0], flipped[..., 2])
    np.testing.assert_array_equal(rgb[..., 1], flipped[..., 1])


def test_colormap_saturates_at_percentile():
    rel = np.linspace(-1.0, 1.0, 201).reshape(1, -1)
    rgb = relevance_to_rgb(rel, percentile=50)
    assert tuple(rgb[0, -1]) == (255, 0, 0)
    assert tuple(rgb[0, 0]) == (0, 0, 255)


def test_colormap_all_zero_and_nan():
    assert np.all(relevance_to_rgb(np.zeros((5, 4))) == 255)
    rel = np.array([[np.nan, 1.0], [-1.0, 0.0]])
    rgb = relevance_to_rgb(rel)
    assert np.all(rgb[0, 0] == 255)


def test_upscale_nearest():
    img = np.arange(6, dtype=np.uint8).reshape(2, 3)
    big = upscale(img, 4)
    assert big.shape == (8, 12)
    np.testing.assert_array_equal(big[::4, ::4], img)
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert upscale(rgb, 3).shape == (6, 6, 3)
    with pytest.raises(ValueError):
        upscale(img, 0)


@pytest.mark.parametrize("image", [
    np.linspace(0, 16, 64).reshape(8, 8),
    np.linspace(0, 255, 64).astype(np.uint8).reshape(8, 8),
    np.random.default_rng(0).random((8, 8, 3)),
    np.random.default_rng(0).random((1, 8, 8)),
])
def test_overlay_shapes(image):
    rel = np.random.default_rng(1).normal(size=(8, 8))
    out = overlay(image, rel)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)


def test_overlay_alpha_extremes():
    image = np.linspace(0, 1, 16).reshape(4, 4)
    rel = np.random.default_rng(2).normal(size=(4, 4))
    np.testing.assert_array_equal(overlay(image, rel, alpha=1.0), relevance_to_rgb(rel))
    gray = overlay(image, rel, alpha=0.0)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    assert gray[0, 0, 0] == 0 and gray[-1, -1, 0] == 255


def test_heatmap_image_digit_sized(tmp_path):
    rng = np.random.default_rng(3)
    rel = rng.normal(size=(1, 8, 8))
    image = rng.random((1, 8, 8)).astype(np.float32)
    out = heatmap_image(rel, image=image, size=256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    plain = heatmap_image(rng.normal(size=(3, 10, 20)), size=200)
    assert plain.shape == (100, 200, 3)
    path = tmp_path / "h.png"
    write_png(path, out)
    np.testing.assert_array_equal(read_image(path), out)


def test_heatmap_strip_draws_the_first_tiles_side_by_side():
    rng = np.random.default_rng(4)
    rel, images = rng.normal(size=(5, 1, 8, 8)), rng.random((5, 1, 8, 8))
    strip = heatmap_strip(rel, images, size=64, max_tiles=3)
    assert strip.shape == (64, 3 * 64 + 2 * 8, 3)
    for n in range(3):
        np.testing.assert_array_equal(strip[:, n * 72:n * 72 + 64], heatmap_image(rel[n], image=images[n], size=64))
    assert np.all(strip[:, 64:72] == 255) and np.all(strip[:, 136:144] == 255)
    np.testing.assert_array_equal(heatmap_strip(rel[:1], size=64), heatmap_image(rel[0], size=64))
    with pytest.raises(ValueError):
        heatmap_strip(rel[:0])
