#!/usr/bin/env python
"""Compiling a Llama-style decoder whose weights pass protobuf's 2 GiB: time and peak memory.

The model is Hugging Face's LlamaForCausalLM with random weights (``torch.manual_seed(0)``): hidden 2048, 9 layers,
16 heads and 4 key-value heads (grouped-query attention), MLP 5632, vocabulary 32000, 64 tokens: 537 M parameters,
2.15 GB in float32. It is exported once (``torch.onnx.export(dynamo=True, opset 18)``, weights as external data)
into bench/.cache. The compile runs in a child process, so that its peak resident memory (``ru_maxrss``) is its
own; the script prints the compile time, the peak memory against the weights' size, and the size of the
explainer's files against the model's.

    python bench/llama_scale.py [--rule attnlrp]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=9,
              num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=128)
SEQ = 64


def export(path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="sdpa")).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    ids = torch.randint(0, CONFIG["vocab_size"], (1, SEQ))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits().eval(), (ids,), str(path), input_names=["input_ids"], output_names=["logits"],
                          dynamo=True, opset_version=18, external_data=True)


def files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rule", default="attnlrp")
    parser.add_argument("--cache", default=str(BENCH_DIR / ".cache"))
    args = parser.parse_args()
    cache = Path(args.cache) / "llama-scale"
    cache.mkdir(parents=True, exist_ok=True)
    model = cache / "llama.onnx"
    if not model.exists():
        start = time.perf_counter()
        export(model)
        print(f"exported {model} in {time.perf_counter() - start:.0f} s")
    weights = files_size(model)
    out = cache / f"llama.{args.rule}.onnx"
    code = (f"import relgraph; relgraph.compile({str(model)!r}, rule={args.rule!r}, output={str(out)!r}, "
            f"overwrite=True)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(BENCH_DIR.parent)))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"model files {weights / 1e9:.2f} GB; compile ({args.rule}) {seconds:.1f} s; peak resident memory "
          f"{peak / 1e9:.2f} GB = {peak / weights:.2f}× the model; explainer files {files_size(out) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
