"""Hostile files for the image decoder and the command line: bombs, thin and 1-bit pictures, outputs that are
inputs. Each case runs in one driver process (so imports and warm-up cost nothing): its exit status (or, for
the decoder the server uses, its HTTP-like class: 200, 400, 415) and message, its time (≤ 2 s) and the peak
growth of its resident memory (≤ 200 MB, VmHWM from /proc after resetting it through clear_refs) are
recorded, and after every case a correct explain still gives what a direct Explainer call gives."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import relgraph
from relgraph.compiler import compile

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits" / "digits_cnn.onnx"
SAMPLES = ROOT / "models" / "digits" / "samples.npy"
SECONDS, GROWTH_MB = 2.0, 200.0

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads memory from /proc")
pytest.importorskip("PIL")


# ------------------------------------------------------------------------------------------- crafted files


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def ihdr(width: int, height: int, depth: int = 8, color_type: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))


def png(*chunks: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + chunk(b"IEND", b"")


def zlib_zeros(mib: int) -> bytes:
    """A valid zlib stream of ``mib`` MiB of zeros in about 1 KiB per MiB, without compressing them all: after a
    full flush every MiB of zeros deflates to the same bytes; the Adler-32 of n zeros is (n mod 65521)·2¹⁶ + 1."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()
    return b"\x78\xda" + block * mib + end + struct.pack(">I", (((mib << 20) % 65521) << 16) | 1)


def test_zlib_zeros_is_what_it_claims():
    assert zlib.decompress(zlib_zeros(3)) == bytes(3 << 20)


def rows(height: int, row_bytes: int) -> bytes:
    """Filter type 0 and zero samples for every row, compressed."""
    return zlib.compress(bytes(height * (row_bytes + 1)), 9)


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- the driver

DRIVER = r"""
import contextlib, io, json, sys, time
import numpy as np
from relgraph.cli import main
from relgraph.errors import RelgraphError
from relgraph.explainer import Explainer
from relgraph.heatmap import UnsupportedImage
from relgraph.preprocess import decode_image, model_preprocess

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0

spec = json.loads(sys.argv[1])
explainer = Explainer(spec["explainer"])
preprocess = model_preprocess(explainer.metadata)
reference = explainer.explain(np.load(spec["samples"]), target=3)["relevance"]
good = ["explain", spec["explainer"], spec["samples"], "--target", "3", "-o", spec["good"], "--force"]

def run(case):
    if case["kind"] == "cli":
        return main(case["argv"]), ""
    try:
        with open(case["path"], "rb") as f:
            x, _ = preprocess(decode_image(f.read()))
        return 200, str(list(x.shape))
    except UnsupportedImage as exc:
        return 415, str(exc)
    except RelgraphError as exc:
        return 400, str(exc)

out = []
with contextlib.redirect_stdout(io.StringIO()):
    main(good)  # warm-up: everything imported and allocated once
    for case in spec["cases"]:
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        err = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err):
            code, detail = run(case)
        seconds = time.perf_counter() - start
        growth = status("VmHWM") - before
        with contextlib.redirect_stderr(io.StringIO()):
            after = main(good)
        ok = after == 0 and np.allclose(np.load(spec["good"]), reference, rtol=1e-6, atol=1e-7)
        out.append({"name": case["name"], "code": code, "message": err.getvalue() + detail, "seconds": seconds,
                    "growth_mb": growth, "good_after": bool(ok)})
print(json.dumps(out), file=sys.__stdout__)
"""


def _cases(folder: Path, explainer: Path) -> list[tuple[dict, int, str]]:
    """(case, expected status, a phrase of its message)."""
    files = {
        "inflation-bomb.png": png(ihdr(1, 1), chunk(b"IDAT", zlib_zeros(1100))),  # 1 MiB → 1.1 GiB, header 1×1
        "duplicated-ihdr.png": png(ihdr(1, 1), ihdr(12000, 12000), chunk(b"IDAT", rows(1, 1))),
        "big-ihdr.png": png(ihdr(7000, 7000), chunk(b"IDAT", rows(1, 7000))),  # 49 MP, one row of data
        "thin.png": png(ihdr(10_000_000, 1), chunk(b"IDAT", rows(1, 10_000_000))),
        "one-bit-bomb.png": png(ihdr(30000, 30000, depth=1), chunk(b"IDAT", zlib_zeros(108))),
        "one-bit-big.png": png(ihdr(4000, 4000, depth=1), chunk(b"IDAT", rows(4000, 500))),
        "text-bomb.png": png(ihdr(8, 8), chunk(b"zTXt", b"comment\0\0" + zlib_zeros(64)), chunk(b"IDAT", rows(8, 8))),
        "truncated.png": png(ihdr(8, 8), chunk(b"IDAT", rows(8, 8)[:-6]))[:-12],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    model, samples = folder / "m.onnx", folder / "x.npy"
    model.write_bytes(MODEL.read_bytes())
    samples.write_bytes(SAMPLES.read_bytes())
    os.symlink(model, folder / "model-link.onnx")
    os.link(explainer, folder / "explainer-link.onnx")
    os.link(samples, folder / "samples-link.npy")
    (folder / "repo" / "e").mkdir(parents=True)
    os.link(explainer, folder / "repo" / "e" / "held.onnx")

    def cli(name, *argv):
        return {"name": name, "kind": "cli", "argv": [str(a) for a in argv]}

    def decode(name, file):
        return {"name": name, "kind": "decode", "path": str(folder / file)}

    out = str(folder / "out.npy")
    too_many = "over 40,000,000 pixels"
    return [
        (cli("inflation-bomb", "explain", explainer, folder / "inflation-bomb.png", "-o", out), 2,
         "the image is 1×1, the model takes 8×8"),
        (decode("inflation-bomb/decode", "inflation-bomb.png"), 200, "[1, 8, 8]"),
        (cli("duplicated-ihdr", "explain", explainer, folder / "duplicated-ihdr.png", "-o", out), 2, too_many),
        (decode("duplicated-ihdr/decode", "duplicated-ihdr.png"), 400, too_many),
        (cli("big-ihdr", "explain", explainer, folder / "big-ihdr.png", "-o", out), 2, "more than 40,000,000 pixels"),
        (decode("big-ihdr/decode", "big-ihdr.png"), 400, "more than 40,000,000 pixels"),
        (cli("thin", "explain", explainer, folder / "thin.png", "-o", out), 2, "the image is 1×10000000"),
        (decode("thin/decode", "thin.png"), 200, "[1, 8, 8]"),
        (cli("one-bit-bomb", "explain", explainer, folder / "one-bit-bomb.png", "-o", out), 2, too_many),
        (decode("one-bit-big/decode", "one-bit-big.png"), 200, "[1, 8, 8]"),
        (decode("text-bomb/decode", "text-bomb.png"), 400, "cannot read the PNG"),
        (decode("truncated/decode", "truncated.png"), 400, "cannot read the PNG"),
        (cli("compile-over-symlinked-model", "compile", model, "-o", folder / "model-link.onnx", "--force"), 2,
         "refusing to overwrite the input"),
        (cli("explain-over-hardlinked-explainer", "explain", explainer, samples, "-o",
             folder / "explainer-link.onnx", "--force"), 2, "refusing to overwrite the input"),
        (cli("explain-over-hardlinked-input", "explain", explainer, samples, "-o", folder / "samples-link.npy",
             "--force"), 2, "refusing to overwrite the input"),
        (cli("export-triton-over-its-input", "export-triton", folder / "repo" / "e" / "held.onnx", "--repo",
             folder / "repo", "--name", "e", "--force"), 2, "holds the input"),
    ]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    explainer = folder / "digits.onnx"
    compile(str(MODEL), rule="epsilon-plus-flat", output=str(explainer))
    cases = _cases(folder, explainer)
    guarded = [folder / n for n in ("m.onnx", "x.npy", "digits.onnx")]
    digests = [digest(p) for p in guarded]
    spec = {"explainer": str(explainer), "samples": str(folder / "x.npy"), "good": str(folder / "good.npy"),
            "cases": [c for c, _, _ in cases]}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert [digest(p) for p in guarded] == digests  # no input was touched
    # the reference for "good after": the same explain, straight through the API
    direct = relgraph.Explainer(explainer).explain(np.load(SAMPLES), target=3)["relevance"]
    np.testing.assert_allclose(np.load(folder / "good.npy"), direct, rtol=1e-6, atol=1e-7)
    return {c["name"]: (got[c["name"]], code, needle) for c, code, needle in cases}


CASE_NAMES = ["inflation-bomb", "inflation-bomb/decode", "duplicated-ihdr", "duplicated-ihdr/decode", "big-ihdr",
              "big-ihdr/decode", "thin", "thin/decode", "one-bit-bomb", "one-bit-big/decode", "text-bomb/decode",
              "truncated/decode", "compile-over-symlinked-model", "explain-over-hardlinked-explainer",
              "explain-over-hardlinked-input", "export-triton-over-its-input"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_case(results, name):
    got, code, needle = results[name]
    assert got["code"] == code, got
    assert needle in got["message"], got
    if code == 2:  # one line, no traceback
        lines = [line for line in got["message"].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("relgraph: error:"), got
    assert got["seconds"] <= SECONDS, got
    assert got["growth_mb"] <= GROWTH_MB, got
    assert got["good_after"], got


def test_one_bit_picture_is_explained_as_its_pixels(tmp_path):
    """A 1-bit 8×8 PNG is explained as the 0/1 picture it is (pixel 255 · 1/255)."""
    Image = pytest.importorskip("PIL.Image")
    bits = np.random.default_rng(5).random((8, 8)) < 0.4
    picture = tmp_path / "bits.png"
    Image.fromarray(bits).save(picture)
    with Image.open(picture) as im:
        assert im.mode == "1"
    explainer = tmp_path / "digits.onnx"
    compile(str(MODEL), rule="epsilon-plus-flat", output=str(explainer))
    out = tmp_path / "r.npy"
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "explain", str(explainer), str(picture),
                           "--target", "1", "-o", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    direct = relgraph.Explainer(explainer).explain(bits[None, None].astype(np.float32), target=1)["relevance"]
    np.testing.assert_allclose(np.load(out), direct, rtol=1e-5, atol=1e-7)


def test_explain_memory_follows_the_chunk(tmp_path):
    """relgraph explain of 20,000 digits grows resident memory by less than 64 MB (one session call on all of
    them: about 1.1 GB), and writes what one direct call on the first rows gives."""
    explainer = tmp_path / "digits.onnx"
    compile(str(MODEL), rule="epsilon-plus-flat", output=str(explainer))
    x = np.load(ROOT / "models" / "digits" / "test_x.npy")
    big = np.resize(x, (20000, *x.shape[1:]))
    np.save(tmp_path / "big.npy", big)
    np.save(tmp_path / "small.npy", x[:8])
    script = r"""
import contextlib, io, sys
from relgraph.cli import main
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
e, small, big, out = sys.argv[1:]
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["explain", e, small, "-o", out]) == 0
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    assert main(["explain", e, big, "-o", out, "--force"]) == 0
print(status("VmHWM") - before)
"""
    out = tmp_path / "r.npy"
    proc = subprocess.run([sys.executable, "-c", script, str(explainer), str(tmp_path / "small.npy"),
                           str(tmp_path / "big.npy"), str(out)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    growth = float(proc.stdout.strip().splitlines()[-1])
    assert growth < 64, growth
    saved = np.load(out, mmap_mode="r")
    assert saved.shape == big.shape
    direct = relgraph.Explainer(explainer)
    for rows in (slice(0, 300), slice(19700, 20000)):  # the first chunks and the last, short one
        np.testing.assert_allclose(saved[rows], direct.explain(big[rows], batch_size=None)["relevance"],
                                   rtol=1e-6, atol=1e-7)


def test_triton_folder_never_writes_over_its_model(tmp_path):
    """compile --target triton -o DIR --force, where DIR/explainer.onnx is the model itself (a hard link)."""
    pytest.importorskip("triton")
    from relgraph.errors import RelgraphError
    from relgraph.lowering import compile_triton

    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL.read_bytes())
    (tmp_path / "out").mkdir()
    os.link(model, tmp_path / "out" / "explainer.onnx")
    before = digest(model)
    with pytest.raises(RelgraphError, match="refusing to overwrite the input"):
        compile_triton(str(model), str(tmp_path / "out"), overwrite=True, rule="epsilon")
    assert digest(model) == before
