"""Compare to baseline (DeepLIFT rescale) against captum's DeepLift, and its summation-to-delta property."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from captum.attr import DeepLift
from torch import nn

import relgraph

try:
    import torch_models as tm
    from test_cli import run
except ModuleNotFoundError:
    from tests import torch_models as tm
    from tests.test_cli import run


def mlp():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))


def cnn():
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 4))


def _cosines(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("build,shape", [(mlp, (12,)), (cnn, (2, 8, 8))])
@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("baseline_kind", ("zeros", "file"))
def test_deeplift_matches_captum(tmp_path, build, shape, seed, baseline_kind):
    torch.manual_seed(seed)
    model = build().eval()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, *shape)).astype(np.float32)
    base = np.zeros(shape, np.float32) if baseline_kind == "zeros" else rng.normal(size=shape).astype(np.float32) * 0.3
    path = str(tmp_path / "m.onnx")
    tm.export(model, torch.tensor(x[:1]), path, dynamo=False)
    option = "zeros"
    if baseline_kind == "file":
        option = str(tmp_path / "base.npy")
        np.save(option, base)
    res = relgraph.compile(path, rule="deeplift", baseline=option, output=str(tmp_path / "d.onnx"))
    out = relgraph.Explainer(res.path).explain(x, target=np.array([0, 1, 2, 3]))
    ref = DeepLift(model).attribute(torch.tensor(x), baselines=torch.tensor(base[None]),
                                    target=torch.tensor([0, 1, 2, 3])).detach().numpy()
    assert np.all(_cosines(out["relevance"], ref) > 0.9999)
    np.testing.assert_allclose(out["relevance"], ref, rtol=1e-3, atol=1e-5)
    # Σ R = f(x) − f(x̄) (no stabilizer here: the rescale rule falls back to f′ only where Δx ≈ 0)
    with torch.no_grad():
        delta = (model(torch.tensor(x)) - model(torch.tensor(base[None]))).numpy()[np.arange(4), [0, 1, 2, 3]]
    np.testing.assert_allclose(out["relevance"].reshape(4, -1).sum(1), delta, rtol=1e-4, atol=1e-5)


def _printed_numbers(line: str) -> list[float]:
    return [float(w) for w in line.replace("=", " ").split() if w.lstrip("-").replace(".", "").replace("e-", "")
            .replace("e+", "").isdigit()]


def test_check_accounts_summation_to_delta(tmp_path):
    """relgraph check on DeepLIFT: the per-layer columns are multipliers, so what it accounts is the
    summation to delta, f(x) − f(x̄) = Σ relevance (+ leak), with f(x̄) from torch; a gradient explainer
    has nothing to conserve and says so instead of printing a leak."""
    torch.manual_seed(0)
    model = cnn().eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 8, 8)).astype(np.float32)
    base = (rng.normal(size=(2, 8, 8)) * 0.3).astype(np.float32)
    path = str(tmp_path / "m.onnx")
    tm.export(model, torch.tensor(x[:1]), path, dynamo=False)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "x.npy", x)
    ex = relgraph.compile(path, rule="deeplift", baseline=str(tmp_path / "base.npy"), output=str(tmp_path / "d.onnx"))
    code, printed, err = run("check", ex.path, tmp_path / "x.npy", "--target", "2")
    assert code == 0, err
    line = printed.strip().splitlines()[-1]
    assert "summation to delta" in line.lower() and "R_out" not in printed, printed
    delta, total, leak = _printed_numbers(line.split(":", 1)[1])
    with torch.no_grad():
        want = float((model(torch.tensor(x)) - model(torch.tensor(base[None])))[:, 2].sum())
    relevance = relgraph.Explainer(ex.path).explain(x, target=2)["relevance"]
    assert abs(delta - want) <= 1e-4 * max(1.0, abs(want)), (delta, want)
    assert abs(total - float(relevance.sum())) <= 1e-4 * max(1.0, abs(total))
    assert abs(leak) < 1e-3 * max(1.0, abs(want)) and abs(delta - total - leak) < 1e-4 * max(1.0, abs(delta))

    gradient = relgraph.compile(path, rule="gradient", output=str(tmp_path / "g.onnx"))
    code, printed, err = run("check", gradient.path, tmp_path / "x.npy")
    assert code == 0 and "nothing is conserved" in printed and "leak" not in printed.splitlines()[-1], printed


def test_baseline_is_an_input_with_a_default(tmp_path):
    torch.manual_seed(0)
    model = mlp().eval()
    path = str(tmp_path / "m.onnx")
    tm.export(model, torch.zeros(1, 12), path, dynamo=False)
    ex = relgraph.Explainer(relgraph.compile(path, rule="deeplift", output=str(tmp_path / "d.onnx")).path)
    x = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
    other = np.full(12, 0.5, np.float32)
    a, b = ex.explain(x, 1), ex.explain(x, 1, baseline=other)
    with pytest.raises(relgraph.RelgraphError, match="one for all samples or one per sample"):
        ex.explain(x, 1, baseline=np.stack([other, other]))  # 2 baselines for 3 samples
    with torch.no_grad():
        delta = (model(torch.tensor(x)) - model(torch.tensor(other[None]))).numpy()[:, 1]
    np.testing.assert_allclose(b["relevance"].sum(1), delta, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a["relevance"], b["relevance"])


class BatchBias(nn.Module):
    """A conv whose bias map is expanded to the batch: exported by dynamo for batch 2, the explainer keeps that
    batch and scans chunks of it (relgraph.fixed_batch)."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.head = nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Linear(4 * 6 * 6, 5)  # captum hooks nn.ReLU
        self.bias_map = nn.Parameter(torch.randn(1, 4, 6, 6))

    def forward(self, x):
        h = self.relu(self.conv(x) + self.bias_map.expand(x.shape[0], 4, 6, 6))
        return self.head(h.reshape(x.shape[0], -1))


@pytest.mark.parametrize("build,shape", [(mlp, (12,)), (cnn, (2, 8, 8)), (BatchBias, (2, 8, 8))])
def test_one_baseline_per_sample(tmp_path, build, shape):
    """A baseline per sample ([N, ...]): each sample equals captum's DeepLift against its own baseline, and its
    relevance sums to f(x_i) − f(b_i) for the target class; also where the explainer scans a fixed batch."""
    from relgraph.fixed_batch import fixed_part

    torch.manual_seed(2)
    model = build().eval()
    rng = np.random.default_rng(2)
    x, base = (rng.normal(size=(5, *shape)).astype(np.float32) for _ in range(2))
    path = str(tmp_path / "m.onnx")
    scanned = build is BatchBias
    if scanned:  # the dynamo export's default: a static batch
        torch.onnx.export(model, (torch.zeros(2, *shape),), path, dynamo=True, opset_version=tm.DYNAMO_OPSET,
                          input_names=[tm.INPUT], output_names=[tm.OUTPUT])
    else:
        tm.export(model, torch.zeros(1, *shape), path, dynamo=False)
    ex = relgraph.Explainer(relgraph.compile(path, rule="deeplift", output=str(tmp_path / "d.onnx")).path)
    assert (fixed_part(onnx.load(ex.path)) is not None) == scanned
    out = ex.explain(x, 1, baseline=base)  # one run of 5 (a scanning explainer: 3 chunks of 2)
    chunked = ex.explain(x, 1, baseline=base, batch_size=2)  # runs of 2: each takes its rows of the baseline
    np.testing.assert_allclose(chunked["relevance"], out["relevance"], rtol=1e-5, atol=1e-7)
    want = DeepLift(model).attribute(torch.tensor(x), baselines=torch.tensor(base), target=1).detach().numpy()
    assert np.all(tm.relative_error(out["relevance"], want) < 1e-4)
    with torch.no_grad():
        delta = (model(torch.tensor(x)) - model(torch.tensor(base))).numpy()[:, 1]
    np.testing.assert_allclose(out["relevance"].reshape(5, -1).sum(1), delta, rtol=1e-4, atol=1e-5)
    if scanned:  # relgraph check runs the scanned graph's body on whole chunks, the baseline's default included
        np.save(tmp_path / "x.npy", x)
        code, printed, err = run("check", ex.path, tmp_path / "x.npy")
        assert code == 0 and "filled with copies of sample 4" in printed, err
