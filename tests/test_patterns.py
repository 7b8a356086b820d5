"""PatternNet and PatternAttribution (Kindermans et al. 2018): fitted patterns, their quality ρ(S), the
explainers, the command line.

References are float64 numpy written here from the paper's formulas: per-sample patches by an explicit
loop over output positions, Eq. 4 and Eq. 8 from the samples themselves, ρ by a least-squares regression
on the explicit distractors, and the backward pass with the patterns in place of the weights.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import relgraph
from onnx_models import save_model
from relgraph.errors import RelgraphError
from relgraph.patterns import (collect_statistics, fit_patterns, load_patterns, patterns_from, quality,
                               save_patterns)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
DIGITS_X = ROOT / "models" / "digits" / "test_x.npy"


# ------------------------------------------------------------------------------------------- models




# conv2 geometries: stride 2 with pads; dilation 2 with asymmetric pads; stride 3 leaving two rows unread
GEOMETRIES = {
    "stride2": dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1]),
    "dilated": dict(strides=[1, 1], pads=[0, 1, 2, 0], dilations=[2, 2]),
    "unread": dict(strides=[3, 3], pads=[0, 0, 0, 0], dilations=[1, 1]),
}


def out_size(n, k, s, p0, p1, d):
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


class SmallCNN:
    """conv(1→4, 3×3, pad 1) / relu / maxpool 2 / conv(4→6, 3×3, geometry) / relu / flatten / gemm(→12) /
    relu / gemm(→5) on 1×10×10 inputs, random weights; written as ONNX and as a float64 numpy forward."""

    def __init__(self, seed, geometry="stride2"):
        rng = np.random.default_rng(seed)
        self.g = GEOMETRIES[geometry]
        s, p, d = self.g["strides"][0], self.g["pads"], self.g["dilations"][0]
        self.side = out_size(5, 3, s, p[0], p[2], d), out_size(5, 3, s, p[1], p[3], d)
        flat = 6 * self.side[0] * self.side[1]
        self.params = {
            "W0": rng.normal(0, 0.5, (4, 1, 3, 3)), "b0": rng.normal(0, 0.1, 4),
            "W1": rng.normal(0, 0.3, (6, 4, 3, 3)), "b1": rng.normal(0, 0.1, 6),
            "W2": rng.normal(0, 0.3, (12, flat)), "b2": rng.normal(0, 0.1, 12),
            "W3": rng.normal(0, 0.3, (5, 12)), "b3": rng.normal(0, 0.1, 5),
        }
        self.params = {k: v.astype(np.float32) for k, v in self.params.items()}

    def save(self, path):
        nodes = [
            helper.make_node("Conv", ["x", "W0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
            helper.make_node("MaxPool", ["r0"], ["p0"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Conv", ["p0", "W1", "b1"], ["c1"], name="conv1", **self.g),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Flatten", ["r1"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "W2", "b2"], ["g2"], name="fc2", transB=1),
            helper.make_node("Relu", ["g2"], ["r2"], name="relu2"),
            helper.make_node("Gemm", ["r2", "W3", "b3"], ["logits"], name="fc3", transB=1),
        ]
        return save_model(path, nodes, self.params, (1, 10, 10), 5)

    def forward(self, x):
        """Every layer's input samples X [S, D] and outputs Y [S, K] (float64), and the activations."""
        p = {k: v.astype(np.float64) for k, v in self.params.items()}
        x = x.astype(np.float64)
        layers, acts = {}, {"x": x}
        X0 = patches(x, 3, [1, 1], [1, 1, 1, 1], [1, 1])
        c0 = X0 @ p["W0"].reshape(4, -1).T + p["b0"]
        layers["conv0"] = (X0, c0)
        c0 = c0.reshape(len(x), 10, 10, 4).transpose(0, 3, 1, 2)
        r0 = np.maximum(c0, 0)
        p0 = r0.reshape(len(x), 4, 5, 2, 5, 2).max(axis=(3, 5))
        X1 = patches(p0, 3, **self.g)
        c1 = X1 @ p["W1"].reshape(6, -1).T + p["b1"]
        layers["conv1"] = (X1, c1)
        c1 = c1.reshape(len(x), *self.side, 6).transpose(0, 3, 1, 2)
        f = np.maximum(c1, 0).reshape(len(x), -1)
        g2 = f @ p["W2"].T + p["b2"]
        layers["fc2"] = (f, g2)
        r2 = np.maximum(g2, 0)
        logits = r2 @ p["W3"].T + p["b3"]
        layers["fc3"] = (r2, logits)
        acts.update(c0=c0, r0=r0, p0=p0, c1=c1, g2=g2, logits=logits)
        return layers, acts

    def weights(self):
        return {"conv0": ("W0", "b0"), "conv1": ("W1", "b1"), "fc2": ("W2", "b2"), "fc3": ("W3", "b3")}


def patches(x, k, strides, pads, dilations):
    """[N·P, C·k·k] patches of x [N, C, H, W], rows in (n, oh, ow) order, columns in (c, i, j) order:
    an explicit loop over output positions."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]))
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = x
    (s0, s1), (d0, d1) = strides, dilations
    oh, ow = out_size(h, k, s0, pads[0], pads[2], d0), out_size(w, k, s1, pads[1], pads[3], d1)
    rows = np.empty((n, oh, ow, c * k * k))
    for i, j in itertools.product(range(oh), range(ow)):
        window = xp[:, :, i * s0:i * s0 + d0 * (k - 1) + 1:d0, j * s1:j * s1 + d1 * (k - 1) + 1:d1]
        rows[:, i, j] = window.reshape(n, -1)
    return rows.reshape(n * oh * ow, -1)


def data(n, seed):
    """Non-negative images with a few strong, correlated blobs, so that every regime is populated."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, 1, 10, 10))
    blob = rng.random((n, 1, 1, 1)) * np.outer(np.hanning(10), np.hanning(10))[None, None]
    return (base + 2 * blob).astype(np.float32)


# ------------------------------------------------------------------------------------------- references


def eq4(X, Y):
    """a = cov[x, y] / σ²_y for each output column of Y: [K, D]."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return (Yc.T @ Xc / len(X)) / (Yc ** 2).mean(0)[:, None]


def eq8(X, Y, W, positive):
    """a₊ (or a₋) = (E_r[xy] − E_r[x]E[y]) / (wᵀE_r[xy] − wᵀE_r[x]E[y]) per neuron: [K, D]."""
    out = np.zeros((Y.shape[1], X.shape[1]))
    for k in range(Y.shape[1]):
        y = Y[:, k]
        sel = y > 0 if positive else y <= 0
        if not sel.any():
            continue
        num = (X[sel] * y[sel, None]).mean(0) - X[sel].mean(0) * y.mean()
        if W[k] @ num != 0:  # 0 when the regime's inputs are all zero (dead ReLUs before the layer)
            out[k] = num / (W[k] @ num)
    return out


def reference_patterns(model, x, estimator):
    layers, _ = model.forward(x)
    out = {}
    for name, (X, Y) in layers.items():
        W = model.params[model.weights()[name][0]]
        shape = W.shape
        W = W.reshape(len(W), -1).astype(np.float64)
        if estimator == "linear":
            out[name] = eq4(X, Y).reshape(shape)
        else:
            out[name] = eq8(X, Y, W, True).reshape(shape)
            out[name + "::negative"] = eq8(X, Y, W, False).reshape(shape)
    return out


def assert_patterns_close(got, want, tol=2e-4):
    assert set(got) == set(want)
    for key in want:
        scale = np.abs(want[key]).max()
        np.testing.assert_allclose(got[key], want[key], atol=tol * scale, rtol=0, err_msg=key)


# ------------------------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("estimator", ["linear", "two-component"])
@pytest.mark.parametrize("seed,geometry", [(0, "stride2"), (1, "dilated"), (2, "unread"), (3, "stride2")])
def test_fitted_patterns_match_closed_forms(tmp_path, seed, geometry, estimator):
    model = SmallCNN(seed, geometry)
    path = model.save(tmp_path / "m.onnx")
    x = data(300, seed + 10)
    got = fit_patterns(path, x, estimator, batch_size=23, progress=False)   # 23 does not divide 300
    assert_patterns_close(got, reference_patterns(model, x, estimator))


def test_streams_a_folder_of_npy_files(tmp_path):
    model = SmallCNN(4)
    path = model.save(tmp_path / "m.onnx")
    x = data(120, 5)
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "a.npy", x[:37])
    np.save(folder / "b.npy", x[37])             # one sample, no batch axis
    np.save(folder / "c.npy", x[38:].astype(np.float64))
    np.save(tmp_path / "all.npy", x)
    from_folder = fit_patterns(path, str(folder), "two-component", batch_size=16, progress=False)
    from_file = fit_patterns(path, str(tmp_path / "all.npy"), "two-component", batch_size=120, progress=False)
    assert_patterns_close(from_folder, reference_patterns(model, x, "two-component"))
    for key in from_file:
        np.testing.assert_allclose(from_folder[key], from_file[key], rtol=1e-5,
                                   atol=1e-6 * np.abs(from_file[key]).max())


def test_data_source_ranges_cross_files(tmp_path):
    from relgraph.statistics import DataSource

    x = data(60, 1)
    for i, (lo, hi) in enumerate([(0, 7), (7, 8), (8, 31), (31, 60)]):
        np.save(tmp_path / f"{i:02d}.npy", x[lo] if hi == lo + 1 else x[lo:hi])
    source = DataSource(str(tmp_path), (1, 10, 10))
    assert source.count == 60
    for start, stop, size in [(0, 60, 9), (5, 33, 4), (7, 8, 3), (30, 60, 64)]:
        batches = list(source.batches(size, start, stop))
        assert all(len(b) == size for b in batches[:-1]) and all(b.dtype == np.float32 for b in batches)
        np.testing.assert_array_equal(np.concatenate(batches), x[start:stop])


@pytest.mark.parametrize("seed", [0, 1])
def test_conv1d_cross_sums(tmp_path, seed):
    """The weight-gradient convolution in one spatial dimension (stride 2, dilation 2, asymmetric pads)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(5, 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    V = rng.normal(size=(2, 5 * 6)).astype(np.float32)          # 6 = (12 + 1 + 2 − 2·2 − 1) // 2 + 1 positions
    path = save_model(tmp_path / "c.onnx", [
        helper.make_node("Conv", ["x", "W", "b"], ["c"], name="conv", strides=[2], dilations=[2], pads=[1, 2]),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "V"], ["logits"], name="head", transB=1)], {"W": W, "b": b, "V": V}, (3, 12),
        2)
    x = rng.normal(size=(90, 3, 12)).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 2)))
    X = np.stack([xp[:, :, p * 2:p * 2 + 5:2].reshape(90, -1) for p in range(6)], 1).reshape(-1, 9)
    Y = X @ W.reshape(5, -1).T.astype(np.float64) + b
    got = fit_patterns(path, x, "two-component", batch_size=32, progress=False)
    want = {"conv": eq8(X, Y, W.reshape(5, -1), True).reshape(W.shape),
            "conv::negative": eq8(X, Y, W.reshape(5, -1), False).reshape(W.shape)}
    assert_patterns_close({k: got[k] for k in want}, want)


def test_patterns_reproduce_the_output():
    """wᵀa = 1 for both estimators (the signal reproduces y), on the bundled digits model."""
    x = np.load(DIGITS_X)[:150]
    stats = collect_statistics(DIGITS, x, two_component=True, progress=False)
    for estimator in ("linear", "two-component"):
        pats = patterns_from(stats, estimator)
        for name, st in stats.items():
            for key in (name, name + "::negative") if estimator == "two-component" else (name,):
                a = pats[key].reshape(st.layer.neurons, -1).astype(np.float64)
                dots = np.einsum("kd,kd->k", st.layer.matrix, a)
                live = np.abs(a).sum(1) > 0
                np.testing.assert_allclose(dots[live], 1.0, atol=1e-4, err_msg=key)


# ------------------------------------------------------------------------------------------- the toy example


def toy(tmp_path, n=5000, seed=0):
    """Sec. 2: x = a_s·y + a_d·ε, a_s = (1, 0), a_d = (1, 1), y ~ U[−1, 1], ε ~ N(0, 1); w = (1, −1) gives
    wᵀx = y. Class 1 is the mirror image, so the model has [N, 2] logits."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, n)
    eps = rng.normal(size=n)
    x = (np.outer(y, [1.0, 0.0]) + np.outer(eps, [1.0, 1.0])).astype(np.float32)
    W = np.array([[1.0, -1.0], [-1.0, 1.0]])
    path = save_model(tmp_path / "toy.onnx", [helper.make_node("Gemm", ["x", "W", "b"], ["logits"], name="w",
                                                               transB=1)], {"W": W, "b": np.zeros(2)}, (2,), 2)
    return path, x, y


def explain(tmp_path, path, x, rule, **kw):
    res = relgraph.compile(path, rule=rule, output=str(tmp_path / f"{rule}.onnx"), overwrite=True, **kw)
    return relgraph.Explainer(res.path).explain(x, target=0)["relevance"].astype(np.float64)


def cosines(R, v):
    v = np.asarray(v, np.float64)
    return R @ v / (np.linalg.norm(R, axis=1) * np.linalg.norm(v))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("estimator", ["linear", "two-component"])
def test_toy_example(tmp_path, seed, estimator):
    path, x, y = toy(tmp_path, seed=seed)
    pats = fit_patterns(path, x[:4000], estimator, progress=False)
    test, y_test = x[4000:], y[4000:]
    a_s, w = np.array([1.0, 0.0]), np.array([1.0, -1.0])
    # PatternNet recovers the signal direction: R = y·a ≈ y·a_s
    net = explain(tmp_path, path, test, "patternnet", patterns=pats)
    assert np.all(cosines(net * np.sign(y_test)[:, None], a_s) > 0.99)
    # the gradient family shows the filter w, not the signal
    for rule in ("gradient", "deconvnet", "guided-backprop"):
        R = explain(tmp_path, path, test, rule)
        assert np.all(cosines(R, w) > 0.99), rule
        assert np.all(np.abs(cosines(R, a_s)) < 0.8), rule
    # PatternAttribution: w ⊙ a_s ⊙ y = (y, 0)
    attribution = explain(tmp_path, path, test, "patternattribution", patterns=pats)
    np.testing.assert_allclose(attribution, (w * a_s)[None] * y_test[:, None], atol=0.06)


def test_toy_quality(tmp_path):
    """ρ(S_a) ≈ 1: the distractor (ε, ε) carries nothing of y. ρ(S_w): d = (y/2 + ε)·(1, 1), so
    max corr = (σ²_y/2) / (σ_y·√(σ²_y/4 + 1)) with σ²_y = 1/3, ρ = 1 − 0.2774 = 0.7226."""
    path, x, _ = toy(tmp_path, n=40000)
    stats = collect_statistics(path, x[:20000], two_component=True, progress=False)
    sets = {"S_a": patterns_from(stats, "linear"), "S_a+-": patterns_from(stats, "two-component")}
    (row,) = quality(path, x[20000:], sets, progress=False)
    assert np.isnan(row.rho["S_x"])
    assert row.rho["S_a"] > 0.98 and row.rho["S_a+-"] > 0.98
    assert abs(row.rho["S_w"] - 0.7226) < 0.02


# ------------------------------------------------------------------------------------------- quality


def rho_reference(X, Y, W, bias, A_pos, A_neg, fit, measured):
    """1 − corr(y, vᵀd) per neuron from the explicit distractors d = x − A_r·(y − b), v by least squares."""
    out = []
    for k in range(Y.shape[1]):
        u = Y[:, k] - bias[k]
        # the paper's wᵀa = 1, which the float32 patterns hold to ~1e-7 only: d would keep a sliver
        # (1 − wᵀa)·u of y along w; rescaled, wᵀd = 0 and lstsq's rcond drops that direction
        unit = [a / (W[k] @ a) if W[k] @ a else a for a in (A_pos[k], A_neg[k])]
        A = np.where((Y[:, k] > 0)[:, None], *unit)
        d = X - A * u[:, None]
        df, yf = d[fit] - d[fit].mean(0), Y[fit, k] - Y[fit, k].mean()
        v = np.linalg.lstsq(df, yf, rcond=1e-6)[0]
        out.append(1 - np.corrcoef(d[measured] @ v, Y[measured, k])[0, 1])
    return np.mean(out)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("split", [0.5, None])
def test_quality_matches_least_squares(tmp_path, seed, split):
    model = SmallCNN(seed)
    path = model.save(tmp_path / "m.onnx")
    x_fit, x_held = data(300, seed), data(400, seed + 100)
    stats = collect_statistics(path, x_fit, two_component=True, progress=False)
    sets = {"S_a": patterns_from(stats, "linear"), "S_a+-": patterns_from(stats, "two-component")}
    rows = {r.layer: r for r in quality(path, x_held, sets, split=split, batch_size=64, progress=False)}
    layers, _ = model.forward(x_held)
    for name, (X, Y) in layers.items():
        W, b = (model.params[p].astype(np.float64) for p in model.weights()[name])
        W = W.reshape(len(W), -1)
        per_sample = len(X) // 400
        cut = (200 if split else 400) * per_sample
        fit, measured = slice(0, cut), slice(cut if split else 0, None)
        A = {label: pats[name].reshape(len(W), -1).astype(np.float64) for label, pats in sets.items()}
        neg = sets["S_a+-"][name + "::negative"].reshape(len(W), -1).astype(np.float64)
        s_w = W / (W * W).sum(1, keepdims=True)
        want = {"S_w": rho_reference(X, Y, W, b, s_w, s_w, fit, measured),
                "S_a": rho_reference(X, Y, W, b, A["S_a"], A["S_a"], fit, measured),
                "S_a+-": rho_reference(X, Y, W, b, A["S_a+-"], neg, fit, measured)}
        row = rows[name]
        assert row.samples == (cut, len(X) - cut if split else len(X))
        for label, value in want.items():
            assert abs(row.rho[label] - value) < 1e-4, (name, label, row.rho[label], value)


def test_quality_on_digits_orders_estimators():
    """The learned estimators leave less of y in the distractor than the filter-based one."""
    x = np.load(DIGITS_X)
    stats = collect_statistics(DIGITS, x[:148], two_component=True, progress=False)
    sets = {"S_a": patterns_from(stats, "linear"), "S_a+-": patterns_from(stats, "two-component")}
    for row in quality(DIGITS, x[148:], sets, progress=False):
        assert row.rho["S_a"] > row.rho["S_w"] + 0.2 and row.rho["S_a+-"] > row.rho["S_w"] + 0.2, row


# ------------------------------------------------------------------------------------------- explainers


def backward(model, x, target, A, attribution):
    """The gradient's backward pass from R_out = onehot·logit with the patterns A (or W ⊙ A) as weights."""
    _, acts = model.forward(x)
    M = {name: (model.params[model.weights()[name][0]].astype(np.float64) if attribution else 1.0)
         * A[name].astype(np.float64) for name in A}
    n = len(x)
    R = np.zeros((n, 5))
    R[np.arange(n), target] = acts["logits"][np.arange(n), target]
    R = (R @ M["fc3"]) * (acts["g2"] > 0)
    R = (R @ M["fc2"]).reshape(acts["c1"].shape) * (acts["c1"] > 0)
    R = conv_transpose(R, M["conv1"], acts["p0"].shape, **model.g)
    up = np.zeros_like(acts["r0"])                       # max pooling: to each window's winner
    win = acts["r0"].reshape(n, 4, 5, 2, 5, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, 4, 5, 5, 4).argmax(-1)
    for b, c, i, j in itertools.product(range(n), range(4), range(5), range(5)):
        di, dj = divmod(win[b, c, i, j], 2)
        up[b, c, 2 * i + di, 2 * j + dj] = R[b, c, i, j]
    R = up * (acts["c0"] > 0)
    return conv_transpose(R, M["conv0"], x.shape, [1, 1], [1, 1, 1, 1], [1, 1])


def conv_transpose(R, M, in_shape, strides, pads, dilations):
    """Σ over output positions of R[n, k, p]·M[k] placed on that position's patch, cropped to the input."""
    n, c, h, w = in_shape
    k = M.shape[-1]
    out = np.zeros((n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]))
    (s0, s1), (d0, d1) = strides, dilations
    for i, j in itertools.product(range(R.shape[2]), range(R.shape[3])):
        contribution = np.einsum("nk,kcab->ncab", R[:, :, i, j], M)
        out[:, :, i * s0:i * s0 + d0 * (k - 1) + 1:d0, j * s1:j * s1 + d1 * (k - 1) + 1:d1] += contribution
    return out[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w]


@pytest.mark.parametrize("seed,geometry", [(0, "stride2"), (1, "dilated"), (2, "unread")])
@pytest.mark.parametrize("estimator", ["linear", "two-component"])
@pytest.mark.parametrize("rule", ["patternnet", "patternattribution"])
def test_explainer_matches_numpy_backward(tmp_path, seed, geometry, estimator, rule):
    model = SmallCNN(seed, geometry)
    path = model.save(tmp_path / "m.onnx")
    pats = fit_patterns(path, data(200, seed), estimator, progress=False)
    npz = tmp_path / "p.npz"
    save_patterns(npz, pats, estimator)
    x = data(6, seed + 50)
    target = np.arange(6) % 5
    res = relgraph.compile(path, rule=rule, output=str(tmp_path / "e.onnx"), patterns=str(npz))
    assert set(res.relevance.rules().values()) == {"gradient", "pattern" if rule == "patternnet" else "pattern-attribution"}
    got = relgraph.Explainer(res.path).explain(x, target)
    want = backward(model, x, target, {k: v for k, v in pats.items() if "::" not in k}, rule == "patternattribution")
    np.testing.assert_allclose(got["relevance"], want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.all(got["bias_relevance"] == 0)


# ------------------------------------------------------------------------------------------- files, errors


def test_npz_round_trip(tmp_path):
    pats = {"/0/Conv": np.ones((2, 1, 3, 3), np.float32), "/0/Conv::negative": np.zeros((2, 1, 3, 3), np.float32)}
    save_patterns(tmp_path / "p.npz", pats, "two-component")
    loaded, estimator = load_patterns(tmp_path / "p.npz")
    assert estimator == "two-component" and set(loaded) == set(pats)
    np.testing.assert_array_equal(loaded["/0/Conv"], pats["/0/Conv"])


def test_compile_errors_name_the_layer(tmp_path):
    model = SmallCNN(0)
    path = model.save(tmp_path / "m.onnx")
    pats = fit_patterns(path, data(50, 0), progress=False)
    with pytest.raises(RelgraphError, match="needs fitted patterns"):
        relgraph.compile(path, rule="patternnet", write=False)
    missing = {k: v for k, v in pats.items() if k != "fc2"}
    with pytest.raises(RelgraphError, match="Gemm 'fc2'.*no pattern"):
        relgraph.compile(path, rule="patternnet", patterns=missing, write=False)
    wrong = dict(pats, conv1=pats["conv1"][:, :2])
    with pytest.raises(RelgraphError, match="Conv 'conv1'.*shape"):
        relgraph.compile(path, rule="patternattribution", patterns=wrong, write=False)
    with pytest.raises(RelgraphError, match="not 'epsilon'"):
        relgraph.compile(path, rule="epsilon", patterns=pats, write=False)
    with pytest.raises(RelgraphError, match="not found"):
        relgraph.compile(path, rule="patternnet", patterns=str(tmp_path / "nope.npz"), write=False)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(RelgraphError, match="not a .npz"):
        relgraph.compile(path, rule="patternnet", patterns=str(tmp_path / "bad.npz"), write=False)


def test_grouped_conv_is_skipped_with_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    path = save_model(tmp_path / "g.onnx", [
        helper.make_node("Conv", ["x", "W", "b"], ["c"], name="grouped", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "V"], ["logits"], name="head", transB=1)],
        {"W": rng.normal(size=(4, 1, 3, 3)), "b": np.zeros(4), "V": rng.normal(size=(3, 4 * 16))}, (2, 4, 4), 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pats = fit_patterns(path, rng.normal(size=(20, 2, 4, 4)).astype(np.float32), progress=False)
    assert set(pats) == {"head"}
    assert any("grouped" in str(w.message) for w in caught)
    with pytest.raises(RelgraphError, match="Conv 'grouped'"):
        relgraph.compile(path, rule="patternnet", patterns=pats, write=False)


def test_matmul_over_tokens_is_fitted_on_every_row(tmp_path):
    """A weight applied to each of S tokens (MatMul on [N, S, D]) runs as a Gemm on the N·S rows, so its
    pattern is estimated from every row: eq. 4 over the stacked tokens."""
    rng = np.random.default_rng(0)
    M, V = rng.normal(size=(4, 5)), rng.normal(size=(2, 15))
    path = save_model(tmp_path / "mm.onnx", [
        helper.make_node("MatMul", ["x", "M"], ["t"], name="tokens"),
        helper.make_node("Flatten", ["t"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "V"], ["logits"], name="head", transB=1)],
        {"M": M, "V": V}, (3, 4), 2)
    x = rng.normal(size=(200, 3, 4)).astype(np.float32)
    got = fit_patterns(path, x, batch_size=64, progress=False)
    rows = x.reshape(-1, 4).astype(np.float64)
    flat = (x.astype(np.float64) @ M).reshape(len(x), -1)
    assert_patterns_close(got, {"tokens": eq4(rows, rows @ M), "head": eq4(flat, flat @ V.T)})


def test_data_errors(tmp_path):
    x = np.load(DIGITS_X)[:10]
    cases = {
        "missing": (str(tmp_path / "nope.npy"), "not found"),
        "shape": (np.zeros((4, 1, 7, 7), np.float32), "the model expects"),
        "dtype": ((x * 255).astype(np.uint8), "floating-point"),
        "nan": (np.full((2, 1, 8, 8), np.nan, np.float32), "NaN"),
        "empty-folder": (str(tmp_path), "no .npy files"),
        "empty": (np.zeros((0, 1, 8, 8), np.float32), "no samples"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(RelgraphError, match=message):
            fit_patterns(DIGITS, value, progress=False)
    with pytest.raises(RelgraphError, match="unknown estimator"):
        fit_patterns(DIGITS, x, "three-component", progress=False)


# ------------------------------------------------------------------------------------------- command line


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(code, err, needle):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return code == 2 and len(lines) == 1 and lines[0].startswith("relgraph: error:") and needle in lines[0]


def test_cli_fit_quality_compile(tmp_path):
    x = np.load(DIGITS_X)
    np.save(tmp_path / "fit.npy", x[:148])
    np.save(tmp_path / "held.npy", x[148:])
    out = tmp_path / "p.npz"
    code, stdout, err = cli("fit-patterns", DIGITS, "--data", tmp_path / "fit.npy", "-o", out, "--estimator",
                            "two-component", "--batch-size", "50", "--quality", "--holdout", tmp_path / "held.npy")
    assert code == 0, err
    assert "/9/Gemm" in stdout and "S_a+-" in stdout and "n/a" in stdout
    pats, estimator = load_patterns(out)
    assert estimator == "two-component" and "/9/Gemm::negative" in pats
    code, stdout, err = cli("compile", DIGITS, "--rule", "patternattribution", "--patterns", out,
                            "-o", tmp_path / "pa.onnx")
    assert code == 0, err and "pattern-attribution" in stdout
    code, _, err = cli("fit-patterns", DIGITS, "--data", tmp_path / "fit.npy", "-o", out)
    assert one_line_error(code, err, "exists")


@pytest.mark.parametrize("case", ["missing-data", "bad-shape", "bad-dtype", "missing-patterns", "no-holdout",
                                  "no-patterns"])
def test_cli_errors(tmp_path, case):
    out = tmp_path / "p.npz"
    if case == "missing-data":
        code, _, err = cli("fit-patterns", DIGITS, "--data", tmp_path / "nope.npy", "-o", out)
        assert one_line_error(code, err, "not found"), err
    elif case == "bad-shape":
        np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
        code, _, err = cli("fit-patterns", DIGITS, "--data", tmp_path / "x.npy", "-o", out)
        assert one_line_error(code, err, "the model expects"), err
    elif case == "bad-dtype":
        np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), np.int64))
        code, _, err = cli("fit-patterns", DIGITS, "--data", tmp_path / "x.npy", "-o", out)
        assert one_line_error(code, err, "floating-point"), err
    elif case == "missing-patterns":
        code, _, err = cli("compile", DIGITS, "--rule", "patternnet", "--patterns", tmp_path / "nope.npz",
                           "-o", tmp_path / "e.onnx")
        assert one_line_error(code, err, "patterns file not found"), err
    elif case == "no-holdout":
        code, _, err = cli("fit-patterns", DIGITS, "--data", DIGITS_X, "-o", out, "--quality")
        assert one_line_error(code, err, "--holdout"), err
    elif case == "no-patterns":
        code, _, err = cli("compile", DIGITS, "--rule", "patternnet", "-o", tmp_path / "e.onnx")
        assert one_line_error(code, err, "needs fitted patterns"), err
    assert not out.exists() and not (tmp_path / "e.onnx").exists()
