"""Tests for relgraph.heatmap: PNG I/O (checked against Pillow) and rendering."""

import io
import struct
import zlib

import numpy as np
import pytest

from relgraph.heatmap import (
    heatmap_image,
    overlay,
    read_png,
    relevance_to_rgb,
    upscale,
    write_png,
)

Image = pytest.importorskip("PIL.Image")

SEEDS = [0, 1, 2, 3, 4]
SHAPES = [(1, 1), (7, 5), (8, 8), (33, 17), (64, 48)]


def _random_image(rng, shape, channels):
    """Random uint8 image with smooth and noisy regions (exercises all filters)."""
    h, w = shape
    full = (h, w) if channels == 1 else (h, w, channels)
    noise = rng.integers(0, 256, size=full, dtype=np.uint8)
    ramp = np.add.outer(np.arange(h), np.arange(w)).astype(np.uint8)
    if channels > 1:
        ramp = ramp[:, :, None].repeat(channels, axis=2)
    mask = rng.random(full) < 0.5
    return np.where(mask, noise, ramp).astype(np.uint8)


def _raw_png(width, height, depth, color_type, rows):
    """Assemble a PNG from already-filtered scanlines (for crafted test files)."""
    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _pil_save(img, path, **kwargs):
    img.save(path, format="PNG", **kwargs)


# ---------------------------------------------------------------------------
# write_png -> Pillow
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_write_png_decoded_by_pillow(tmp_path, seed, channels, mode):
    rng = np.random.default_rng(seed)
    shape = SHAPES[seed % len(SHAPES)]
    arr = _random_image(rng, shape, channels)
    path = tmp_path / "out.png"
    write_png(path, arr)
    with Image.open(path) as im:
        im.load()
        assert im.mode == mode
        np.testing.assert_array_equal(np.asarray(im), arr)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_write_read_round_trip(tmp_path, seed, channels):
    rng = np.random.default_rng(seed)
    arr = _random_image(rng, (13, 29), channels)
    path = tmp_path / "rt.png"
    write_png(path, arr)
    back = read_png(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, arr)


def test_write_png_crc_and_structure(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "crc.png"
    write_png(path, arr)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc
        kinds.append(kind)
        pos += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 5), np.uint8), np.zeros(4, np.uint8)]
)
def test_write_png_rejects_bad_input(tmp_path, bad):
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", bad)


# ---------------------------------------------------------------------------
# Pillow -> read_png
# ---------------------------------------------------------------------------

# Pillow picks a filter per row adaptively and has no option to force one;
# ``optimize`` makes it try all five. Forced filters are covered separately
# by ``test_read_png_each_filter``.
PIL_SETTINGS = [
    {},
    {"optimize": True},
    {"compress_level": 0},
    {"compress_level": 1},
    {"compress_level": 9},
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("settings", PIL_SETTINGS, ids=lambda s: repr(s))
@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_read_png_pillow_encoded(tmp_path, seed, settings, channels, mode):
    rng = np.random.default_rng(seed)
    arr = _random_image(rng, SHAPES[(seed + 2) % len(SHAPES)], channels)
    path = tmp_path / "pil.png"
    _pil_save(Image.fromarray(arr, mode=mode), path, **settings)
    np.testing.assert_array_equal(read_png(path), arr)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_rows(arr, filter_type):
    """Reference PNG filtering of an 8-bit HxWxC array with one filter for all rows."""
    h, w, c = arr.shape
    rows = arr.reshape(h, w * c).astype(int)
    out = []
    for y in range(h):
        cur = rows[y]
        up = rows[y - 1] if y else np.zeros_like(cur)
        line = [filter_type]
        for i in range(w * c):
            left = cur[i - c] if i >= c else 0
            upper_left = up[i - c] if i >= c else 0
            predictor = [
                0,
                left,
                up[i],
                (left + up[i]) // 2,
                _paeth(left, up[i], upper_left),
            ][filter_type]
            line.append((cur[i] - predictor) % 256)
        out.append(bytes(line))
    return b"".join(out)


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("channels,color_type", [(1, 0), (2, 4), (3, 2), (4, 6)])
def test_read_png_each_filter(tmp_path, seed, filter_type, channels, color_type):
    rng = np.random.default_rng(seed)
    arr = _random_image(rng, (9, 11), channels)
    arr3 = arr.reshape(9, 11, channels)
    path = tmp_path / "f.png"
    path.write_bytes(_raw_png(11, 9, 8, color_type, _filter_rows(arr3, filter_type)))
    with Image.open(path) as ref:  # the hand-filtered file is valid for Pillow
        np.testing.assert_array_equal(np.asarray(ref), arr)
    np.testing.assert_array_equal(read_png(path), arr)


@pytest.mark.parametrize("seed", SEEDS)
def test_read_png_low_bit_depth_gray(tmp_path, seed):
    rng = np.random.default_rng(seed)
    bits = rng.random((13, 21)) < 0.5
    path = tmp_path / "bw.png"
    Image.fromarray(bits).save(path, format="PNG")
    with Image.open(path) as ref:
        expected = np.asarray(ref.convert("L"))
    np.testing.assert_array_equal(read_png(path), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_read_png_gray_alpha(tmp_path, seed):
    rng = np.random.default_rng(seed)
    arr = _random_image(rng, (11, 9), 2)
    path = tmp_path / "la.png"
    _pil_save(Image.fromarray(arr, mode="LA"), path)
    np.testing.assert_array_equal(read_png(path), arr)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("colors", [2, 4, 16, 200])
@pytest.mark.parametrize("settings", [{}, {"optimize": True}], ids=["plain", "optimize"])
def test_read_png_palette(tmp_path, seed, colors, settings):
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(colors, 3), dtype=np.uint8)
    indices = rng.integers(0, colors, size=(21, 19), dtype=np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette(palette.reshape(-1).tolist())
    path = tmp_path / "p.png"
    _pil_save(im, path, **settings)
    with Image.open(path) as ref:
        expected = np.asarray(ref.convert("RGB"))
    np.testing.assert_array_equal(read_png(path), expected)


def test_read_png_palette_with_transparency(tmp_path):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(8, 3), dtype=np.uint8)
    indices = rng.integers(0, 8, size=(6, 7), dtype=np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette(palette.reshape(-1).tolist())
    path = tmp_path / "pt.png"
    _pil_save(im, path, transparency=bytes([0, 128, 255, 10]))
    with Image.open(path) as ref:
        expected = np.asarray(ref.convert("RGBA"))
    np.testing.assert_array_equal(read_png(path), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_read_png_multiple_idat(tmp_path, seed):
    rng = np.random.default_rng(seed)
    arr = _random_image(rng, (40, 30), 3)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    data = buf.getvalue()
    # Split the single IDAT payload into several chunks.
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    payload = data[start + 8 : start + 8 + length]
    pieces = np.array_split(np.frombuffer(payload, np.uint8), 5)
    chunks = b""
    for piece in pieces:
        body = piece.tobytes()
        crc = zlib.crc32(b"IDAT" + body) & 0xFFFFFFFF
        chunks += struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", crc)
    rebuilt = data[:start] + chunks + data[start + 12 + length :]
    path = tmp_path / "multi.png"
    path.write_bytes(rebuilt)
    with Image.open(path) as ref:
        np.testing.assert_array_equal(np.asarray(ref), arr)
    np.testing.assert_array_equal(read_png(path), arr)


def test_read_png_rejects_non_png(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"GIF89a not a png at all")
    with pytest.raises(ValueError, match="not a PNG"):
        read_png(path)


def test_read_png_rejects_16_bit(tmp_path):
    arr = (np.arange(20, dtype=">u2") * 3000).reshape(4, 5)
    rows = b"".join(b"\x00" + row.tobytes() for row in arr)
    path = tmp_path / "16.png"
    path.write_bytes(_raw_png(5, 4, 16, 0, rows))
    with Image.open(path) as ref:  # Pillow accepts the file, so it is valid
        ref.load()
    with pytest.raises(ValueError, match="16-bit"):
        read_png(path)


def test_read_png_rejects_interlaced(tmp_path):
    arr = np.zeros((4, 4), np.uint8)
    path = tmp_path / "i.png"
    write_png(path, arr)
    data = bytearray(path.read_bytes())
    # IHDR payload starts at byte 16; the interlace flag is its last byte.
    data[16 + 12] = 1
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="interlaced"):
        read_png(path)


def test_read_png_rejects_bad_crc(tmp_path):
    path = tmp_path / "c.png"
    write_png(path, np.zeros((2, 2), np.uint8))
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        read_png(path)


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
    np.testing.assert_array_equal(read_png(path), out)
