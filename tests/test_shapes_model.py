"""The committed shapes models and data: load, accuracies as the README states, deterministic data, masks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "models" / "shapes"
MODELS = ("shapes_cnn.onnx", "shapes_control_cnn.onnx")
sys.path.insert(0, str(SHAPES))

import data  # noqa: E402  (models/shapes/data.py, the generator)


def session(name):
    import onnxruntime as ort

    return ort.InferenceSession(str(SHAPES / name), providers=["CPUExecutionProvider"])


def accuracy(name, x, y):
    logits = session(name).run(["logits"], {"input": x.astype(np.float32)})[0]
    return int(np.sum(logits.argmax(1) == y))


def readme_counts(name):
    """The README's accuracy row of ``name``: [(correct, total)] for train, held-out, anti-correlated."""
    rows = [line for line in (SHAPES / "README.md").read_text().splitlines() if line.startswith(f"| `{name}`")]
    counts = [[(int(a), int(b)) for a, b in re.findall(r"\((\d+) / (\d+)\)", row)] for row in rows]
    return next(c for c in counts if len(c) == 3)


@pytest.fixture(scope="module")
def heldout():
    with np.load(SHAPES / "heldout.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", MODELS)
def test_model_loads(name):
    model = onnx.load(SHAPES / name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10 and model.opset_import[0].version == 17
    assert (SHAPES / name).stat().st_size < 2 * 1024 * 1024
    assert [o.name for o in model.graph.output] == ["logits"]


def test_heldout_file(heldout):
    assert heldout["x"].dtype == np.float16 and heldout["x"].shape == (300, 1, 32, 32)
    assert heldout["masks"].dtype == bool and heldout["masks"].shape == (300, 1, 32, 32)
    assert heldout["y"].dtype == np.int64 and set(np.unique(heldout["y"])) == {0, 1, 2}


@pytest.mark.parametrize("name", MODELS)
def test_heldout_and_anticorrelated_accuracy_as_in_readme(name, heldout):
    _, held, anti = readme_counts(name)
    assert accuracy(name, heldout["x"], heldout["y"]) == held[0] and held[1] == len(heldout["y"])
    split = data.make_split("anticorrelated", anti[1])
    x = split["x"].astype(np.float16)  # evaluated at the committed precision, as train.py does
    assert accuracy(name, x, split["y"]) == anti[0]


def test_shortcut_model_fails_where_the_texture_lies(heldout):
    """The story in numbers: the texture-trained model beats chance on held-out data but drops when
    texture and class disagree, while the control does not."""
    (_, _), (held, n), (anti, m) = readme_counts("shapes_cnn.onnx")
    (_, _), (held_c, _), (anti_c, _) = readme_counts("shapes_control_cnn.onnx")
    assert anti / m < held / n < 0.8 and held_c / n > 0.9 and anti_c / m > 0.9


@pytest.mark.parametrize("split,indices", [("heldout", [0, 1, 17, 299]), ("train", [0, 5, 123])])
def test_generator_is_deterministic(split, indices, heldout):
    if split == "heldout":
        committed = heldout
    else:
        with np.load(SHAPES / "train.npz") as z:
            committed = {k: z[k] for k in z.files}
    for i in indices:
        x, y, texture, mask = data.make_sample(split, i)
        np.testing.assert_array_equal(x.astype(np.float16), committed["x"][i])
        assert y == committed["y"][i]
        if split == "heldout":
            assert texture == committed["texture"][i]
            np.testing.assert_array_equal(mask, committed["masks"][i])
    again = data.make_split(split, 3, start=indices[1])
    np.testing.assert_array_equal(again["x"][0], data.make_sample(split, indices[1])[0])


def test_texture_correlation_per_split():
    splits = {s: data.make_split(s, 400) for s in ("train", "heldout", "anticorrelated")}
    share = {s: np.mean(split["texture"] == split["y"]) for s, split in splits.items()}
    assert 0.9 < share["train"] < 0.99
    assert 0.25 < share["heldout"] < 0.42
    assert share["anticorrelated"] == 0.0


def test_masks_match_objects(heldout):
    """Object pixels are bright (≥ 0.75 before noise), the background dark (≤ 0.45); and the mask's share
    of its bounding box tells the shape: square 1, disc ≈ π/4, triangle ≈ 1/2."""
    x, masks, y = heldout["x"].astype(np.float32), heldout["masks"], heldout["y"]
    for i in range(len(x)):
        assert np.mean(x[i][masks[i]] > 0.6) > 0.99 and np.mean(x[i][~masks[i]] < 0.6) > 0.99
        rows, cols = np.nonzero(masks[i][0])
        fill = masks[i].sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
        low, high = {0: (0.65, 0.9), 1: (1.0, 1.0), 2: (0.45, 0.64)}[int(y[i])]
        assert low <= fill <= high, (i, y[i], fill)


@pytest.mark.parametrize("name", MODELS)
def test_metadata_preprocesses_a_picture_like_the_data(name):
    """The models carry relgraph.preprocess and relgraph.classes: a held-out image saved as a 64×64 PNG
    (pixel = 255·x, each pixel doubled) comes back through the metadata's preprocessing as the same input,
    so `relgraph serve` predicts on an upload what the model predicts on the array."""
    from relgraph.heatmap import decode_png, encode_png
    from relgraph.preprocess import model_classes, model_preprocess

    meta = {p.key: p.value for p in onnx.load(str(SHAPES / name)).metadata_props}
    assert model_classes(meta) == list(data.CLASSES)
    pre = model_preprocess(meta)
    held = np.load(SHAPES / "heldout.npz")
    x = held["x"][:8].astype(np.float32)
    pixels = np.round(255 * x[:, 0]).astype(np.uint8)
    back = np.stack([pre(decode_png(encode_png(np.kron(p, np.ones((2, 2), np.uint8)))))[0] for p in pixels])
    np.testing.assert_allclose(back, np.round(255 * x) / 255, atol=1e-6)
    predict = session(name).run
    np.testing.assert_array_equal(predict(["logits"], {"input": back})[0].argmax(1),
                                  predict(["logits"], {"input": x})[0].argmax(1))


def test_data_command_writes_a_split_and_never_replaces_a_file(tmp_path):
    """``python models/shapes/data.py SPLIT COUNT -o FILE`` writes make_split's arrays (its folder made), and
    refuses an existing file or link, or a count below 1, in one line."""
    script = str(SHAPES / "data.py")
    target = tmp_path / "new" / "held"  # no .npz suffix: written as named
    proc = subprocess.run([sys.executable, script, "heldout", "4", "-o", str(target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    written, expected = np.load(target), data.make_split("heldout", 4)
    assert sorted(written) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(written[key], expected[key])
    before = target.read_bytes()
    (tmp_path / "link").symlink_to(target)
    for out, count, message in ((target, "4", "exists"), (tmp_path / "link", "4", "exists"),
                                (tmp_path / "other.npz", "0", "at least 1")):
        proc = subprocess.run([sys.executable, script, "heldout", count, "-o", str(out)], capture_output=True,
                              text=True)
        assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert target.read_bytes() == before and not (tmp_path / "other.npz").exists()
