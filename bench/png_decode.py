#!/usr/bin/env python
"""How long does relgraph take to decode a big PNG whose every row uses the Paeth filter (the slowest one to
undo)? Goal: a 6000×6000 RGB picture in under 1 s. Also times the server's preprocessing of it to 224×224,
and, as the floor no decoder goes under, zlib inflating the same image data alone.

    python bench/png_decode.py --size 6000 --runs 3

The picture (a smooth gradient with noise, so the filter matters) is filtered and compressed here, in
blocks of rows, and the decoded pixels are checked against it before anything is timed.

Where pyspng is installed (libspng: SIMD unfiltering; not a relgraph dependency), it is timed too, as the
fastest PNG decoder on PyPI: how far under Pillow a decoder can get on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
import zlib

import numpy as np

from relgraph.heatmap import decode_image
from relgraph.preprocess import Preprocess


def picture_rows(size: int, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of the test picture, uint8 [rows, size, 3]."""
    y, x = np.mgrid[start:stop, 0:size].astype(np.int64)
    c = np.arange(3)
    noise = ((x[..., None] * 73856093) ^ (y[..., None] * 19349663) ^ (c * 83492791)) % 24  # same rows however cut
    planes = np.stack([(x + y) * 255 // (2 * size), x * 255 // size, y * 255 // size], -1)
    return (planes + noise).clip(0, 255).astype(np.uint8)


def paeth_rows(rows: np.ndarray, above: np.ndarray) -> bytes:
    """PNG filter type 4 (Paeth, spec section 9.4) for each row, given the row above the first one."""
    cur = rows.reshape(len(rows), -1).astype(np.int16)
    up = np.concatenate([above.reshape(1, -1).astype(np.int16), cur[:-1]])
    left = np.zeros_like(cur)
    left[:, 3:] = cur[:, :-3]
    upper_left = np.zeros_like(up)
    upper_left[:, 3:] = up[:, :-3]
    p = left + up - upper_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upper_left)
    predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upper_left))
    residual = ((cur - predictor) % 256).astype(np.uint8)
    return np.concatenate([np.full((len(rows), 1), 4, np.uint8), residual], axis=1).tobytes()


def paeth_png(size: int, block: int = 256) -> bytes:
    deflate = zlib.compressobj(6)
    data, above = [], np.zeros((size, 3), np.uint8)
    for start in range(0, size, block):
        rows = picture_rows(size, start, min(start + block, size))
        data.append(deflate.compress(paeth_rows(rows, above)))
        above = rows[-1]
    data.append(deflate.flush())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(data))
            + chunk(b"IEND", b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    png = paeth_png(args.size)
    pixels = decode_image(png)
    for start in range(0, args.size, 256):  # the decoder undid the filter: the pixels generated
        np.testing.assert_array_equal(pixels[start:start + 256], picture_rows(args.size, start,
                                                                              min(start + 256, args.size)))
    del pixels
    imagenet = Preprocess(channels=3, height=224, width=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    idat = png[png.index(b"IDAT") + 4:-16]
    assert len(zlib.decompress(idat)) == args.size * (3 * args.size + 1)
    times = {"zlib.decompress (floor)": [], "decode_image": [], "preprocess to 224×224": []}
    try:
        import pyspng
    except ImportError:
        pyspng = None
    else:
        np.testing.assert_array_equal(pyspng.load(png), decode_image(png))
        times["pyspng.load (libspng)"] = []
    for _ in range(args.runs):
        timed(times["zlib.decompress (floor)"], zlib.decompress, idat)  # inflating alone: what any decoder pays
        pixels = timed(times["decode_image"], decode_image, png)
        timed(times["preprocess to 224×224"], imagenet, pixels)
        del pixels
        if pyspng is not None:
            timed(times["pyspng.load (libspng)"], pyspng.load, png)
    print(f"{args.size}×{args.size} RGB PNG, every row Paeth-filtered, {len(png) / 2**20:.1f} MiB "
          f"(wall and CPU seconds: a loaded machine inflates the first, hardly the second):")
    for label, runs in times.items():
        wall, cpu = zip(*runs)
        print(f"  {label:22} wall median {statistics.median(wall):.3f} s, CPU median {statistics.median(cpu):.3f} s "
              f"(wall runs: {', '.join(f'{t:.3f}' for t in wall)})")


def timed(into: list, f, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = f(*args)
    into.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


if __name__ == "__main__":
    main()
