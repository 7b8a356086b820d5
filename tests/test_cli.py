"""The command line on the bundled model, and every kind of bad input: one line, non-zero exit, inputs untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import relgraph
from relgraph.heatmap import read_image

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits" / "digits_cnn.onnx"
SAMPLES = ROOT / "models" / "digits" / "samples.npy"


def run(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return proc.returncode, proc.stdout, proc.stderr


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("relgraph: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits.lrp.onnx"
    code, stdout, err = run("compile", MODEL, "--rule", "lrp", "-o", out)
    assert code == 0, err
    return out


def test_compile_explain_png(explainer, tmp_path):
    png = tmp_path / "heat.png"
    code, out, err = run("explain", explainer, SAMPLES, "-o", png)
    assert code == 0, err
    img = read_image(png)
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] >= 200
    assert out.count("sample ") == 8


def test_explain_npy_matches_api(explainer, tmp_path):
    npy = tmp_path / "r.npy"
    code, _, err = run("explain", explainer, SAMPLES, "--target", "3", "-o", npy)
    assert code == 0, err
    direct = relgraph.Explainer(explainer).explain(np.load(SAMPLES), target=3)["relevance"]
    np.testing.assert_allclose(np.load(npy), direct, rtol=1e-6)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_explain_image_input(explainer, tmp_path, fmt):
    """An 8×8 gray picture (PNG, lossless WebP, JPEG) explained as pixels/255, as Pillow itself decodes it."""
    Image = pytest.importorskip("PIL.Image")
    with Image.open(ROOT / "models" / "digits" / "sample0.png") as im:
        pixels = np.asarray(im.convert("L"))
    picture = tmp_path / f"digit.{fmt.lower()}"
    Image.fromarray(pixels).save(picture, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    with Image.open(picture) as im:
        decoded = np.asarray(im.convert("L"), np.float32)
    if fmt != "JPEG":
        np.testing.assert_array_equal(decoded, pixels)
    npy = tmp_path / "r.npy"
    code, _, err = run("explain", explainer, picture, "--target", "2", "-o", npy)
    assert code == 0, err
    direct = relgraph.Explainer(explainer).explain((decoded / 255)[None, None], target=2)["relevance"]
    np.testing.assert_allclose(np.load(npy), direct, rtol=1e-5, atol=1e-7)
    big = tmp_path / "big.png"
    Image.fromarray(np.kron(pixels, np.ones((2, 2), np.uint8))).save(big)
    code, _, err = run("explain", explainer, big, "-o", tmp_path / "r2.npy")
    assert_one_line_error(code, err, "the image is 16×16, the model takes 8×8")


def test_default_output_beside_model_never_overwrites(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(MODEL.read_bytes())
    before = digest(model)
    code, _, err = run("compile", model, "--rule", "epsilon")
    assert code == 0, err
    assert (tmp_path / "m.epsilon.onnx").exists()
    code, _, err = run("compile", model, "--rule", "epsilon")
    assert_one_line_error(code, err, "exists")
    code, _, err = run("compile", model, "--rule", "epsilon", "-o", model, "--force")
    assert_one_line_error(code, err, "overwrite the input")
    assert digest(model) == before


def test_check_reports_conservation(explainer):
    code, out, err = run("check", explainer, SAMPLES)
    assert code == 0, err
    assert "leak" in out and "/9/Gemm" in out


def test_inspect_lists_rules():
    code, out, err = run("inspect", MODEL, "--rule", "epsilon-plus-flat")
    assert code == 0, err
    assert "flat (first layer)" in out and "zplus" in out


def _unsupported_model(path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Sin", ["a"], ["b"], name="weird_sin"),
             helper.make_node("Cos", ["b"], ["c"], name="weird_cos"),
             helper.make_node("Flatten", ["c"], ["logits"], name="f")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.save(m, path)


@pytest.mark.parametrize("case", ["garbage", "missing", "unknown-rule", "bad-map", "unsupported", "wrong-shape",
                                  "wrong-dtype", "bad-target", "missing-bounds", "bad-alpha", "not-explainer"])
def test_bad_input(case, tmp_path, explainer):
    before = digest(MODEL)
    if case == "garbage":
        bad = tmp_path / "g.onnx"
        bad.write_bytes(b"\x00not an onnx model\xff" * 10)
        code, _, err = run("compile", bad)
        assert_one_line_error(code, err, "not a readable ONNX model")
        assert bad.read_bytes() == b"\x00not an onnx model\xff" * 10
    elif case == "missing":
        code, _, err = run("compile", tmp_path / "nope.onnx")
        assert_one_line_error(code, err, "not found")
    elif case == "unknown-rule":
        code, _, err = run("compile", MODEL, "--rule", "lrp-magic", "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, "unknown rule 'lrp-magic'", "epsilon-plus-flat")
    elif case == "bad-map":
        m = tmp_path / "map.toml"
        m.write_text('base = "epsilon"\n[op_types]\nConv = "zplusplus"\n')
        code, _, err = run("compile", MODEL, "--rule-map", m, "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, "unknown rule 'zplusplus'")
        m.write_text("base = [unclosed\n")
        code, _, err = run("compile", MODEL, "--rule-map", m, "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, "not valid TOML")
        m.write_text('base = "epsilon"\n[op_types]\nRelu = "zplus"\n')
        code, _, err = run("compile", MODEL, "--rule-map", m, "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, "does not apply to Relu")
        for params, message in (("bounds = [0.0, 1.0, 2.0]", "bounds must be [LOW, HIGH]"),
                                ("bounds = 1.0", "bounds must be [LOW, HIGH]"),
                                ("gamma = \"big\"", "parameter 'gamma' must be a number"),
                                ("delta = 0.5", "unknown parameter(s) delta")):
            m.write_text(f'base = "epsilon"\nfirst = "zbox"\n[params]\n{params}\n')
            code, _, err = run("compile", MODEL, "--rule-map", m, "-o", tmp_path / "o.onnx")
            assert_one_line_error(code, err, message)
    elif case == "unsupported":
        p = tmp_path / "u.onnx"
        _unsupported_model(p)
        code, _, err = run("compile", p, "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, "2 unsupported", "Sin 'weird_sin'", "Cos 'weird_cos'", "Supported ops:")
        assert not (tmp_path / "o.onnx").exists()
    elif case == "wrong-shape":
        x = tmp_path / "x.npy"
        np.save(x, np.ones((2, 1, 9, 8), np.float32))
        code, _, err = run("explain", explainer, x, "-o", tmp_path / "r.npy")
        assert_one_line_error(code, err, "shape [2, 1, 9, 8]", "[N, 1, 8, 8]")
    elif case == "wrong-dtype":
        x = tmp_path / "x.npy"
        np.save(x, np.ones((2, 1, 8, 8), np.int32))
        code, _, err = run("explain", explainer, x, "-o", tmp_path / "r.npy")
        assert_one_line_error(code, err, "dtype")
    elif case == "bad-target":
        code, _, err = run("explain", explainer, SAMPLES, "--target", "10", "-o", tmp_path / "r.npy")
        assert_one_line_error(code, err, "target 10 is out of range")
    elif case == "missing-bounds":
        code, _, err = run("compile", MODEL, "--rule", "epsilon-gamma-box", "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, "--bounds")
    elif case == "bad-alpha":
        code, _, err = run("compile", MODEL, "--rule", "alpha-beta", "--alpha", "2", "--beta", "2",
                           "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, "alpha − beta = 1")
    elif case == "not-explainer":
        code, _, err = run("explain", MODEL, SAMPLES, "-o", tmp_path / "r.npy")
        assert_one_line_error(code, err, "not a relgraph explainer")
    assert digest(MODEL) == before


def test_external_data_outside_model_folder_is_refused(tmp_path):
    w = np.ones((4, 4), np.float32)
    tensor = onnx.numpy_helper.from_array(w, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [tensor])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    sub = tmp_path / "model"
    sub.mkdir()
    (tmp_path / "secret.bin").write_bytes(w.tobytes())
    onnx.save(m, sub / "m.onnx")
    code, _, err = run("compile", sub / "m.onnx", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "outside the model's folder")


# ------------------------------------------------------------------------------------------- never lose a file


def _link(kind, target, link):
    if kind == "symlink":
        os.symlink(target, link)
    elif kind == "hardlink":
        os.link(target, link)
    else:  # the same file spelled through another folder
        (link.parent / "sub").mkdir(exist_ok=True)
        return link.parent / "sub" / ".." / Path(target).name
    return link


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "dotdot"])
def test_output_that_is_an_input_is_refused_even_with_force(kind, explainer, tmp_path):
    """compile, explain and fit-patterns: -o reaching an input by any path, with --force, leaves it intact."""
    model, data, copy = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "e.onnx"
    model.write_bytes(MODEL.read_bytes())
    data.write_bytes(SAMPLES.read_bytes())
    copy.write_bytes(Path(explainer).read_bytes())
    cases = [(model, ["compile", model, "--rule", "epsilon"]), (copy, ["explain", copy, data]),
             (data, ["explain", copy, data]), (data, ["fit-patterns", model, "--data", data])]
    for n, (target, command) in enumerate(cases):
        before = digest(target)
        out = _link(kind, target, tmp_path / f"out{n}{target.suffix if target != data else '.npz'}")
        code, _, err = run(*command, "-o", out, "--force")
        assert_one_line_error(code, err, "refusing to overwrite the input")
        assert digest(target) == before


def test_writes_replace_atomically(explainer, tmp_path):
    """An output is written beside itself and renamed into place: a hard link to the old file keeps the old
    bytes (the file was replaced, not rewritten), the mode follows the umask, nothing is left behind."""
    out = tmp_path / "r.npy"
    np.save(out, np.zeros(3))
    keep = tmp_path / "old.npy"
    os.link(out, keep)
    code, _, err = run("explain", explainer, SAMPLES, "-o", out, "--force")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(keep), np.zeros(3))
    assert np.load(out).shape == (8, 1, 8, 8)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.npy", "r.npy"]


def test_replacing_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from relgraph.files import replacing

    out = tmp_path / "keep.bin"
    out.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError):
        with replacing(out) as temporary:
            Path(temporary).write_bytes(b"half")
            1 / 0
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def _gemm_model(path, opset=17, elem=TensorProto.FLOAT, extra_bytes=0):
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "W")
    w.raw_data += b"\0" * extra_bytes
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1)], "g",
                          [helper.make_tensor_value_info("x", elem, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.save(m, path)
    return path


def _tampered(explainer, path, key, value):
    m = onnx.load(explainer)
    entries = {p.key: p.value for p in m.metadata_props}
    if value is None:
        del entries[key]
    else:
        entries[key] = value
    onnx.helper.set_model_props(m, entries)
    onnx.save(m, path)
    return path


MISTAKES = ["below-a-file", "npz-named-npy", "empty-png", "raw-data-too-long", "tampered-input", "tampered-logits",
            "tampered-rules", "compile-an-explainer", "string-input", "bool-input", "epsilon-nan", "epsilon-inf",
            "gamma-nan", "opset-99", "nan-in-the-last-chunk"]


@pytest.mark.parametrize("case", MISTAKES)
def test_user_mistakes_are_one_line(case, explainer, tmp_path):
    """Each of these ended in an internal error (exit 3) or a traceback before; now one line, exit 2."""
    out = tmp_path / "o.onnx"
    if case == "below-a-file":
        args, needle = ["explain", explainer, SAMPLES, "-o", SAMPLES / "r.npy"], "is a file, not a folder"
    elif case == "npz-named-npy":
        bad = tmp_path / "x.npy"
        with open(bad, "wb") as f:
            np.savez(f, x=np.load(SAMPLES))
        args, needle = ["explain", explainer, bad, "-o", tmp_path / "r.npy"], "is an .npz archive"
    elif case == "empty-png":
        empty = tmp_path / "e.npy"
        np.save(empty, np.zeros((0, 1, 8, 8), np.float32))
        args, needle = ["explain", explainer, empty, "-o", tmp_path / "h.png"], "holds no samples"
    elif case == "raw-data-too-long":
        args, needle = ["compile", _gemm_model(tmp_path / "m.onnx", extra_bytes=16), "-o", out], "holds 64 bytes"
    elif case.startswith("tampered"):
        key, value = {"tampered-input": ("relgraph.input", "nope"), "tampered-logits": ("relgraph.logits", None),
                      "tampered-rules": ("relgraph.rules", "{not json")}[case]
        bad = _tampered(explainer, tmp_path / "t.onnx", key, value)
        args, needle = ["explain", bad, SAMPLES, "-o", tmp_path / "r.npy"], "recompile"
    elif case == "compile-an-explainer":
        args, needle = ["compile", explainer, "-o", out], "already a relgraph explainer"
    elif case in ("string-input", "bool-input"):
        elem = TensorProto.STRING if case == "string-input" else TensorProto.BOOL
        args, needle = ["compile", _gemm_model(tmp_path / "m.onnx", elem=elem), "-o", out], "numeric tensor inputs"
    elif case.startswith(("epsilon", "gamma")):
        name, value = case.split("-")
        args, needle = ["compile", MODEL, f"--{name}", value, "-o", out], "must be a finite number"
    elif case == "opset-99":
        args, needle = ["compile", _gemm_model(tmp_path / "m.onnx", opset=99), "-o", out], "opset 99"
    else:  # chunks before it are explained and streamed: the half-written output must vanish
        x = np.load(SAMPLES)
        x[-1, 0, 3, 3] = np.nan
        np.save(tmp_path / "x.npy", x)
        args = ["explain", explainer, tmp_path / "x.npy", "--batch-size", "2", "-o", tmp_path / "r.npy"]
        needle = "NaN"
    code, _, err = run(*args)
    assert_one_line_error(code, err, needle)
    assert not out.exists() and not (tmp_path / "r.npy").exists() and not (tmp_path / "h.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


# ------------------------------------------------------------------------------------------- chunks


def test_explain_in_chunks_streams_what_one_call_gives(explainer, tmp_path):
    """--batch-size 3 over 70 samples (chunks of 3, the last of 1): .npy and .npz hold what one session call
    on all 70 gives; the .png draws the first 64 and says so."""
    x = np.concatenate([np.load(SAMPLES)] * 9)[:70] * np.linspace(0.5, 1.5, 70, dtype=np.float32)[:, None, None, None]
    data = tmp_path / "x.npy"
    np.save(data, x)
    whole = relgraph.Explainer(explainer).explain(x, target=np.arange(70) % 10, batch_size=None)
    chunked = relgraph.Explainer(explainer).explain(x, target=np.arange(70) % 10, batch_size=3)
    for key, value in whole["outputs"].items():
        np.testing.assert_allclose(chunked["outputs"][key], value, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(chunked["target"], np.arange(70) % 10)
    direct = relgraph.Explainer(explainer).explain(x, batch_size=None)
    code, out, err = run("explain", explainer, data, "--batch-size", "3", "-o", tmp_path / "r.npz")
    assert code == 0, err
    assert out.count("sample ") == 20 and "... and 50 more samples" in out
    with np.load(tmp_path / "r.npz") as saved:
        assert set(saved.files) == {*(k.replace("/", "__") for k in direct["outputs"]), "target"}
        for key, value in direct["outputs"].items():
            np.testing.assert_allclose(saved[key.replace("/", "__")], value, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(saved["target"], direct["target"])
    code, _, err = run("explain", explainer, data, "--batch-size", "3", "-o", tmp_path / "r.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), direct["relevance"], rtol=1e-6, atol=1e-7)
    code, _, err = run("explain", explainer, data, "-o", tmp_path / "h.png")
    assert code == 0 and "first 64 of 70 samples" in err, err
    assert read_image(tmp_path / "h.png").shape == (256, 64 * 256 + 63 * 8, 3)
    code, _, err = run("explain", explainer, data, "--batch-size", "0", "-o", tmp_path / "z.npy")
    assert_one_line_error(code, err, "--batch-size must be at least 1")


def test_without_pillow_images_are_one_line_naming_the_extra(explainer, tmp_path):
    blocked = ("import sys; sys.modules['PIL'] = None; from relgraph.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
    for args in (["explain", explainer, ROOT / "models" / "digits" / "sample0.png", "-o", tmp_path / "r.npy"],
                 ["explain", explainer, SAMPLES, "-o", tmp_path / "h.png"]):
        proc = subprocess.run([sys.executable, "-c", blocked, *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert_one_line_error(proc.returncode, proc.stderr, "needs Pillow", "pip install 'relgraph[cpu]'")
        assert "sample 0" not in proc.stdout  # refused before any work
    assert not list(tmp_path.iterdir())


def _inspected_rules(out: str) -> dict:
    """Node name → rule from ``relgraph inspect``'s table (columns: node, op, kind, rule)."""
    rows = out.splitlines()[2:]
    return {r.split()[0]: r.split()[3] for r in rows if len(r.split()) >= 4 and not r.startswith("note:")}


@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box", "gradient"])
def test_inspect_and_compile_agree_on_rules(rule):
    """inspect shows, node by node, the rule compile applies."""
    bounds = (-1.0, 1.0) if rule.endswith("box") else None
    code, out, err = run("inspect", MODEL, "--rule", rule, *(["--bounds", "-1", "1"] if bounds else []))
    assert code == 0, err
    result = relgraph.compile(str(MODEL), rule=rule, write=False, bounds=bounds)
    assert _inspected_rules(out) == {name: c.rule for name, c in result.relevance.choices.items()}


def test_inspect_and_compile_refuse_the_same_nodes(tmp_path):
    """Coverage is one function: both commands list the same unsupported nodes, in the same line, and the
    same rules that cannot run (z^B without bounds)."""
    path = tmp_path / "m.onnx"
    _unsupported_model(path)
    inspect = run("inspect", path)
    compiled = run("compile", path, "-o", tmp_path / "e.onnx")
    assert inspect[0] == compiled[0] == 2
    assert inspect[2].strip().splitlines()[-1] == compiled[2].strip().splitlines()[-1]
    assert "weird_sin" in compiled[2] and "weird_cos" in compiled[2]
    inspect = run("inspect", MODEL, "--rule", "epsilon-gamma-box")
    compiled = run("compile", MODEL, "--rule", "epsilon-gamma-box", "-o", tmp_path / "e.onnx")
    assert inspect[0] == compiled[0] == 2
    assert inspect[2].strip() == compiled[2].strip() and "needs input bounds" in compiled[2]
    assert not (tmp_path / "e.onnx").exists()
