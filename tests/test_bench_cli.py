"""``relgraph bench`` without a GPU, and the roofline's counts.

Without a GPU the command says so, runs the interpreter sweep (kernels against float64 references), and
times the onnxruntime CPU explainer against the forward pass. The ahead-of-time report it also runs is
covered by test_aot.py and left out here (``--aot none``) to keep this file fast.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from relgraph import kernels
from relgraph import bench
from relgraph.cli import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU path times kernels instead")


def test_bench_without_gpu_reports_the_sweep(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code = main(["bench", "--sweep", "small", "--aot", "none", "--repeats", "3", "--batch", "4",
                 "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].startswith("no GPU")
    assert "interpreter sweep: 9 cases, all pass" in out and "FAIL" not in out
    assert "onnxruntime CPU, digits_cnn.onnx, rule epsilon, batch 4" in out
    data = json.loads(out_json.read_text())
    assert data["gpu"] is False and data["sweep"] == {"size": "small", "passed": True}
    assert data["cpu"]["forward_s"] > 0 and data["cpu"]["explainer_s"] > 0
    assert data["cpu"]["ratio"] == pytest.approx(data["cpu"]["explainer_s"] / data["cpu"]["forward_s"])


def test_sweep_catches_a_wrong_kernel(monkeypatch, capsys):
    """A kernel off by one ulp-sized bias is caught, and the command fails in one line."""
    real = kernels.linear

    def off(x, w, bias=None, **kw):
        y, z = real(x, w, bias, **kw)
        z[0, 0] += 1e-2 * z.abs().max()
        return y, z

    monkeypatch.setattr(kernels, "linear", off)
    code = main(["bench", "--sweep", "small", "--aot", "none", "--repeats", "1", "--batch", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and "FAIL" in out and "interpreter sweep failed" in err
    assert len(err.strip().splitlines()) == 1


def test_unwritten_elements_count_as_infinite_error():
    want = np.ones((3, 4))
    got = want.copy()
    got[1, 2] = np.nan  # a poisoned output element the kernel never wrote
    assert bench.relative_error(got, want) == float("inf")
    assert bench.relative_error(want * (1 + 1e-7), want) == pytest.approx(1e-7)


@pytest.mark.parametrize("argv, message", [(["--model", "nope.onnx"], "model not found"),
                                           (["--aot", "sm_70"], "unknown target"),
                                           (["--batch", "0"], "at least 1")])
def test_bad_arguments_are_one_line(capsys, argv, message):
    code = main(["bench", "--sweep", "none", *argv])
    _, err = capsys.readouterr()
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def _roofline():
    spec = importlib.util.spec_from_file_location("roofline", ROOT / "bench" / "roofline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["roofline"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_roofline_flops_match_torch_flop_counter(tmp_path):
    """The roofline's forward FLOPs of a residual CNN equal torch's FlopCounterMode (2 per multiply-add of
    every convolution and linear layer), and its fused forward moves less than the unfused one."""
    from torch.utils.flop_counter import FlopCounterMode

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.pool = torch.nn.MaxPool2d(3, 2, 1)
            self.a = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.b = torch.nn.Conv2d(8, 8, 1)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            h = self.pool(torch.relu(self.bn(self.stem(x))))
            h = torch.relu(self.b(torch.relu(self.a(h))) + h)
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))

    model = Block().eval()
    x = torch.zeros(2, 3, 20, 18)
    path = tmp_path / "block.onnx"
    torch.onnx.export(model, (x[:1],), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    with FlopCounterMode(display=False) as counter:
        model(x)
    roofline = _roofline()
    layers = roofline.layers_of(path, batch=2)
    assert sum(layer.flops("forward", "fused") for layer in layers) == counter.get_total_flops()
    for dtype in roofline.PRECISIONS:
        t = roofline.totals(layers, dtype)
        assert t["forward", "fused"]["bytes"] < t["forward", "unfused"]["bytes"]
        assert t["relevance", "fused"]["bytes"] < t["relevance", "unfused"]["bytes"]
    # one 3×3 conv layer by hand: x, W, b read once and y written once (fp32)
    conv_a = next(layer for layer in layers if layer.name.endswith("a/Conv"))
    n_x = n_y = 2 * 8 * 5 * 5
    assert conv_a.bytes("forward", "fused", "fp32 tf32") == 4 * (n_x + 8 * 4 * 9 + 8 + n_y)
