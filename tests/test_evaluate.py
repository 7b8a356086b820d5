"""``relgraph evaluate``: image degradation and AOPC against direct float64 computations.

The reference re-derives the experiment with plain loops: patches by explicit index ranges, the order by
sorting (score, patch) pairs, the degraded image by copying pixel by pixel, and the probability of a
linear softmax model in float64 numpy — no code shared with relgraph.evaluate.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import relgraph
from relgraph import evaluate as ev
from relgraph.cli import main

# ------------------------------------------------------------------------------------------------ toy models


def linear_model(path, w: np.ndarray, b: np.ndarray, shape, softmax: bool = True):
    """x [N, *shape] → Flatten → Gemm(W [D, K], b) (→ Softmax): a linear softmax classifier."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W", "B"], ["scores"])]
    out = "scores"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1))
        out = "probabilities"
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", w.shape[1]])],
        [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.astype(np.float32).ravel()),
         helper.make_tensor("B", TensorProto.FLOAT, b.shape, b.astype(np.float32).ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def direct_curve(x, relevance, w, b, target, patch, fill, steps):
    """p_k for k = 0..L for one sample [C, H, W], by loops."""
    c, h, width = x.shape
    patches = []
    for top in range(0, h, patch):
        for left in range(0, width, patch):
            pixels = [(i, j) for i in range(top, min(top + patch, h)) for j in range(left, min(left + patch, width))]
            score = sum(float(relevance[ch, i, j]) for ch in range(c) for i, j in pixels)
            patches.append((score, len(patches), pixels))
    order = sorted(patches, key=lambda t: (-t[0], t[1]))
    img = x.astype(np.float64).copy()
    curve = []
    for k in range(min(steps, len(patches)) + 1):
        if k:
            for i, j in order[k - 1][2]:
                for ch in range(c):
                    img[ch, i, j] = fill[ch]
        curve.append(softmax64(img.reshape(-1) @ w.astype(np.float64) + b)[target])
    return np.array(curve)


def contributions(x, w, targets):
    """x_i · w_ic: each pixel's exact share of the target logit of a linear model."""
    return x * w[:, targets].T.reshape(x.shape)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ------------------------------------------------------------------------------------------------ the experiment


@pytest.mark.parametrize("shape,patch", [((1, 5, 7), 3), ((2, 4, 4), 2), ((1, 6, 6), 1)])
def test_curves_and_aopc_match_direct_computation(tmp_path, rng, shape, patch):
    d, k = int(np.prod(shape)), 3
    w, b = rng.normal(size=(d, k)), rng.normal(size=k)
    model = linear_model(tmp_path / "m.onnx", w, b, shape)
    x = rng.uniform(-1, 1, size=(6, *shape)).astype(np.float32)
    targets = rng.integers(k, size=6)
    relevance = {"oracle": contributions(x, w, targets), "noise": rng.normal(size=x.shape)}
    fill = x.mean(axis=(0, 2, 3))
    result = ev.evaluate(ev.Scorer(model), x, targets, relevance, patch=patch, steps=5, random_orders_count=2)
    for label, r in relevance.items():
        curves = np.stack([direct_curve(x[n], r[n], w, b, targets[n], patch, fill, 5) for n in range(len(x))])
        np.testing.assert_allclose(result.curves[label], curves.mean(0), rtol=1e-5, atol=1e-6)
        per_sample = np.mean(curves[:, :1] - curves, axis=1)
        assert result.aopc[label] == pytest.approx(per_sample.mean(), abs=1e-6)
        assert result.stderr[label] == pytest.approx(per_sample.std(ddof=1) / math.sqrt(len(x)), abs=1e-6)


def test_hand_computed_aopc(tmp_path):
    """Two pixels, logits (2·x₀ + x₁, 0), x = (1, 1), fill 0: p = σ(3), σ(1), σ(0) → AOPC by hand."""
    model = linear_model(tmp_path / "m.onnx", np.array([[2.0, 0.0], [1.0, 0.0]]), np.zeros(2), (1, 1, 2),
                         softmax=False)
    x = np.ones((1, 1, 1, 2), np.float32)
    sigma = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    best = ((sigma(3) - sigma(3)) + (sigma(3) - sigma(1)) + (sigma(3) - sigma(0))) / 3
    worst = ((sigma(3) - sigma(3)) + (sigma(3) - sigma(2)) + (sigma(3) - sigma(0))) / 3
    relevance = {"x·w": np.array([[[[2.0, 1.0]]]]), "reversed": np.array([[[[1.0, 2.0]]]])}
    result = ev.evaluate(ev.Scorer(model), x, np.array([0]), relevance, patch=1, steps=100, fill=[0.0],
                         random_orders_count=8, seed=3)
    assert result.steps == 2 and result.patches == 2
    assert result.aopc["x·w"] == pytest.approx(best, abs=1e-7)
    assert result.aopc["reversed"] == pytest.approx(worst, abs=1e-7)
    np.testing.assert_allclose(result.curves["x·w"], [sigma(3), sigma(1), 0.5], atol=1e-7)
    # each random order is one of the two; their mean lies between
    assert worst - 1e-9 <= result.aopc["random"] <= best + 1e-9


def test_oracle_order_beats_random(tmp_path, rng):
    """For a linear model, x·w orders pixels by their exact share of the logit: a higher AOPC than random."""
    shape, k = (1, 6, 6), 4
    w, b = rng.normal(size=(36, k)), np.zeros(k)
    model = linear_model(tmp_path / "m.onnx", w, b, shape)
    x = rng.uniform(0, 1, size=(24, *shape)).astype(np.float32)
    targets = np.array([np.argmax(xi.reshape(-1) @ w) for xi in x])
    relevance = {"x·w": contributions(x, w, targets), "−x·w": -contributions(x, w, targets)}
    result = ev.evaluate(ev.Scorer(model), x, targets, relevance, patch=1, steps=20, random_orders_count=4)
    assert result.aopc["x·w"] > result.aopc["random"] + 3 * result.stderr["random"]
    assert result.aopc["−x·w"] < result.aopc["random"]


def test_patch_grid_not_divisible():
    grid, count = ev.patch_grid(5, 7, 3)
    assert count == 2 * 3
    expected = np.array([[(i // 3) * 3 + j // 3 for j in range(7)] for i in range(5)])
    np.testing.assert_array_equal(grid, expected)
    assert np.bincount(grid.ravel()).tolist() == [9, 9, 3, 6, 6, 2]
    r = np.arange(2 * 5 * 7, dtype=np.float64).reshape(1, 2, 5, 7)
    scores = ev.patch_scores(r, grid, count)[0]
    for p in range(count):
        assert scores[p] == pytest.approx(sum(r[0, c, i, j] for c in range(2) for i in range(5) for j in range(7)
                                              if grid[i, j] == p))


def test_default_patch():
    assert ev.default_patch(224, 224) == 9
    assert ev.default_patch(64, 64) == 3
    assert ev.default_patch(32, 32) == 1
    assert ev.default_patch(8, 8) == 1


def test_positive_share():
    r = np.array([[[[1.0, -2.0], [3.0, 0.0]]], [[[-1.0, -1.0], [0.0, 0.0]]]])
    masks = np.array([[[[True, False], [False, False]]], [[[True, True], [True, True]]]])
    share = ev.positive_share(r, masks)
    assert share[0] == pytest.approx(1 / 4)
    assert np.isnan(share[1])
    two = np.concatenate([r[:1], 2 * r[:1]], axis=1)  # channels share the spatial mask
    assert ev.positive_share(two, masks[:1])[0] == pytest.approx(3 / 12)


# ------------------------------------------------------------------------------------------------ command line


@pytest.fixture
def toy(tmp_path, rng):
    """A linear softmax model over [1, 4, 5] images, a data folder with labels and masks."""
    shape = (1, 4, 5)
    w, b = rng.normal(size=(20, 3)), rng.normal(size=3)
    linear_model(tmp_path / "m.onnx", w, b, shape)
    folder = tmp_path / "data"
    folder.mkdir()
    x = rng.uniform(0, 1, size=(8, *shape)).astype(np.float32)
    y = rng.integers(3, size=8)
    masks = rng.uniform(size=(8, 4, 5)) < 0.3
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    np.save(folder / "masks.npy", masks)
    return tmp_path, w, b, x, y, masks


def test_cli_json(toy, capsys):
    tmp, w, b, x, y, masks = toy
    out = tmp / "r.json"
    code = main(["evaluate", str(tmp / "m.onnx"), "--data", str(tmp / "data"), "--methods", "epsilon,gradient",
                 "--steps", "6", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert set(report["aopc"]) == {"epsilon", "gradient", "random"}
    assert set(report["mask_share"]) == {"epsilon", "gradient"}
    assert report["samples"] == 8 and report["steps"] == 6 and report["patch"] == 1 and report["patches"] == 20
    assert all(len(c) == 7 for c in report["curves"].values())
    # LRP-ε of a linear layer: R = x·w_c (+ the bias's share elsewhere): the direct reference
    curves = np.stack([direct_curve(x[n], contributions(x, w, y)[n], w, b, y[n], 1, x.mean(axis=(0, 2, 3)), 6)
                       for n in range(8)])
    assert report["aopc"]["epsilon"] == pytest.approx(np.mean(curves[:, :1] - curves), abs=1e-5)
    r = np.maximum(contributions(x, w, y), 0).reshape(8, -1)
    share = (r * masks.reshape(8, -1)).sum(1) / r.sum(1)
    assert report["mask_share"]["epsilon"] == pytest.approx(share.mean(), abs=1e-5)
    assert report["mask_area"] == pytest.approx(masks.mean())
    # without --force nothing is overwritten
    assert main(["evaluate", str(tmp / "m.onnx"), "--data", str(tmp / "data"), "--json", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_explainers_and_plots(toy, capsys):
    tmp, *_ = toy
    explainer = relgraph.compile(str(tmp / "m.onnx"), rule="epsilon", output=str(tmp / "m.eps.onnx")).path
    out, plot, grid = tmp / "e.json", tmp / "c.png", tmp / "h.png"
    code = main(["evaluate", explainer, "--data", str(tmp / "data"), "--steps", "6", "--json", str(out),
                 "--plot", str(plot), "--heatmaps", str(grid)])
    assert code == 0, capsys.readouterr().err
    from_explainer = json.loads(out.read_text())
    main(["evaluate", str(tmp / "m.onnx"), "--data", str(tmp / "data"), "--methods", "epsilon", "--steps", "6",
          "--json", str(out), "--force"])
    from_model = json.loads(out.read_text())
    assert from_explainer["aopc"]["epsilon"] == pytest.approx(from_model["aopc"]["epsilon"], abs=1e-5)
    if ev_plot_available():
        from relgraph.heatmap import read_png

        assert read_png(plot).shape[0] > 100 and read_png(grid).shape[0] > 100


def ev_plot_available():
    from relgraph import plot

    return plot.available()


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("relgraph: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_errors(toy, capsys):
    tmp, *_ = toy
    model, data = str(tmp / "m.onnx"), str(tmp / "data")
    one_line_error(capsys, main(["evaluate", model, "--data", str(tmp / "missing.npy")]), "not found")
    one_line_error(capsys, main(["evaluate", model, "--data", data, "--methods", "epsilon,sharpness"]),
                   "unknown method 'sharpness'")
    np.save(tmp / "short.npy", np.zeros(5, np.int64))
    one_line_error(capsys, main(["evaluate", model, "--data", data, "--labels", str(tmp / "short.npy")]),
                   "labels")
    np.save(tmp / "wrong.npy", np.zeros((3, 1, 5, 4), np.float32))
    one_line_error(capsys, main(["evaluate", model, "--data", str(tmp / "wrong.npy")]), "the model expects")
    np.save(tmp / "badmask.npy", np.zeros((8, 3, 3), bool))
    one_line_error(capsys, main(["evaluate", model, "--data", data, "--masks", str(tmp / "badmask.npy")]), "masks")
    one_line_error(capsys, main(["evaluate", model, "--data", data, "--methods", "patternattribution"]),
                   "--train")
    one_line_error(capsys, main(["evaluate", model, "--data", str(tmp / "data" / "x.npy"), "--methods",
                                 "patternattribution", "--train", str(tmp / "data" / "x.npy")]), "training data")
    one_line_error(capsys, main(["evaluate", model, "--data", data, "--patch", "0"]), "--patch")


def test_bundled_digits_epsilon_beats_random(tmp_path, capsys):
    out = tmp_path / "d.json"
    code = main(["evaluate", "--methods", "epsilon", "--samples", "40", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["target"] == "label" and report["patch"] == 1 and report["steps"] == 64
    assert report["aopc"]["epsilon"] > report["aopc"]["random"] + 2 * (
        report["aopc_stderr"]["epsilon"] + report["aopc_stderr"]["random"])
