#!/usr/bin/env python
"""Compile time of torchvision and timm classifiers: ``relgraph.compile`` wall time, each in a fresh process.

Each model (random weights, ``torch.manual_seed(0)``; a ``timm/`` prefix names a timm model) is exported once
into bench/.cache (the legacy ``torch.onnx.export``, opset 17, batch dynamic). Then each rule is compiled in a child process, so that imports
and caches are not shared between runs; the figure is ``CompileResult.seconds`` (load, canonicalize, relevance
pass, checker, save), the best of ``--repeats``.

    python bench/compile_time.py [--models resnet50,vgg16,...] [--rules epsilon,epsilon-plus-flat] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
MODELS = ("resnet50", "vgg16", "densenet121", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny",
          "regnet_y_400mf", "vit_b_16", "timm/hrnet_w18_small", "timm/poolformer_s12", "timm/resnest14d")


def export(name: str, path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    if name.startswith("timm/"):
        import timm

        model = timm.create_model(name.removeprefix("timm/"), pretrained=False).eval()
    else:
        model = getattr(torchvision.models, name)(weights=None).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False)


CHILD = """
import json, os, sys, tempfile, relgraph
model, rule = sys.argv[1:3]
with tempfile.TemporaryDirectory() as folder:
    result = relgraph.compile(model, rule=rule, output=os.path.join(folder, "explainer.onnx"))
print(json.dumps({"seconds": result.seconds}))
"""


def compile_seconds(model: Path, rule: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), rule], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rules", default="epsilon,epsilon-plus-flat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=str(BENCH_DIR / ".cache"))
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print("| model | MB | " + " | ".join(f"{r} s" for r in args.rules.split(",")) + " |")
    print("|---|---:|" + "---:|" * len(args.rules.split(",")))
    for name in args.models.split(","):
        path = cache / f"tv-{name.replace('/', '-')}-opset17.onnx"
        if not path.exists():
            export(name, path)
        cells = [f"{min(compile_seconds(path, rule) for _ in range(args.repeats)):.2f}"
                 for rule in args.rules.split(",")]
        print(f"| {name} | {path.stat().st_size / 1e6:.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
