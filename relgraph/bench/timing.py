"""Timing on the CPU (onnxruntime's explainer against the model's forward pass) and the peers a GPU run is set
against: zennit's attribution on torchvision models."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from ..compiler import compile
from ..explainer import Explainer

TORCHVISION = ("resnet18", "resnet50", "vgg16")  # models zennit can be compared on (with their canonizers)


def time_call(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def cpu_explainer_vs_forward(model: str, rule: str, batch: int, repeats: int) -> dict:
    """Median seconds of onnxruntime's CPU explainer and of the model's own forward pass, same batch."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        result = compile(model, rule=rule, output=os.path.join(tmp, "explainer.onnx"))
        explainer = Explainer(result.path)
        x = np.random.default_rng(0).standard_normal([batch, *explainer.input_shape[1:]]).astype(np.float32)
        forward = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        feeds = {forward.get_inputs()[0].name: x}
        t_forward = time_call(lambda: forward.run(None, feeds), repeats)
        t_explain = time_call(lambda: explainer.explain(x), repeats)
    return {"forward_s": statistics.median(t_forward), "explainer_s": statistics.median(t_explain),
            "ratio": statistics.median(t_explain) / statistics.median(t_forward)}


def zennit_ms(model_name: str, rule: str, x: np.ndarray, repeats: int) -> float | None:
    """Median ms of zennit's attribution (canonizer + composite + Gradient) on the same batch, or None
    when ``rule`` has no zennit composite."""
    import torch
    import triton.testing
    import zennit.attribution
    import zennit.composites
    import zennit.torchvision

    composites = {"epsilon-plus": "EpsilonPlus", "epsilon-plus-flat": "EpsilonPlusFlat",
                  "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1", "epsilon-alpha2-beta1-flat": "EpsilonAlpha2Beta1Flat"}
    model = torch_model(model_name).cuda()
    canonizer = zennit.torchvision.ResNetCanonizer() if model_name.startswith("resnet") else \
        zennit.torchvision.VGGCanonizer()
    if rule == "epsilon":
        composite = zennit.composites.LayerMapComposite(
            layer_map=[(zennit.types.Linear, zennit.rules.Epsilon()), (zennit.types.AvgPool, zennit.rules.Norm())],
            canonizers=[canonizer])
    elif rule in composites:
        composite = getattr(zennit.composites, composites[rule])(canonizers=[canonizer])
    else:
        return None
    data = torch.from_numpy(x).cuda().requires_grad_(True)
    with zennit.attribution.Gradient(model=model, composite=composite) as attributor:
        def run():
            out = model(data)
            onehot = torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
            attributor(data, onehot)
        return triton.testing.do_bench(run, warmup=3, rep=max(50, repeats * 10))


def torch_model(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def export_torchvision(name: str, path: str) -> None:
    import torch

    torch.onnx.export(torch_model(name), (torch.zeros(1, 3, 224, 224),), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
