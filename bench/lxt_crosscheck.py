#!/usr/bin/env python
"""Cross-check of the tests' float64 AttnLRP reference (tests/transformer_reference.py) against lxt 2.1.

lxt imports only with transformers 4.52, so it runs in an environment of its own; the two halves exchange one
file:

    python bench/lxt_crosscheck.py dump bert CASE.pt   # relgraph's environment: model, inputs, the reference
    python bench/lxt_crosscheck.py lxt CASE.pt         # lxt's environment (transformers 4.52.4, lxt 2.1)

``dump`` builds a tiny model of the tests (``bert``, ``gpt2`` or ``llama``; random weights, biases and norm
parameters randomized), its inputs and the reference's AttnLRP relevance at the token embeddings for the
runner-up class (a language model's at the last position); ``lxt`` loads the same weights into transformers
4.52's class, patches its module with lxt's efficient AttnLRP (``lxt.efficient.monkey_patch``), computes
R = x ⊙ ∂f_c/∂x through the patched model in float64 and prints the per-sample relative L2 and cosine to the
reference. In lxt's efficient mode a gradient of 1 at the logit is R_out = f_c (its README's
``logit.backward(logit)`` starts at f_c², which scales every relevance by f_c). lxt is not a dependency of
relgraph.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def dump(arch: str, path: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import transformer_reference as ref

    model = ref.build(arch, attn="eager")
    feed = ref.inputs(arch)
    if arch != "bert":
        feed.pop("attention_mask", None)
    logits = ref.forward(model, arch, feed)
    target = np.argsort(logits, 1)[:, -2]
    relevance, _ = ref.relevance(model, arch, feed, "attnlrp", target)
    torch.save({"arch": arch, "config": model.config.to_dict(), "state": model.state_dict(), "feed": feed,
                "target": target, "reference": relevance}, path)
    print(f"wrote {path}: {arch}, {model.config.num_hidden_layers} layers, batch {len(target)}, "
          f"targets {target.tolist()}")


def with_lxt(path: str) -> None:
    import transformers
    from lxt.efficient import monkey_patch
    from transformers.models.bert import modeling_bert
    from transformers.models.gpt2 import modeling_gpt2
    from transformers.models.llama import modeling_llama

    case = torch.load(path, weights_only=False)
    arch = case["arch"]
    module, cls, config_cls = {"bert": (modeling_bert, "BertForSequenceClassification", "BertConfig"),
                               "gpt2": (modeling_gpt2, "GPT2LMHeadModel", "GPT2Config"),
                               "llama": (modeling_llama, "LlamaForCausalLM", "LlamaConfig")}[arch]
    monkey_patch(module)
    config = {k: v for k, v in case["config"].items() if k not in ("transformers_version", "dtype", "torch_dtype")}
    config["attn_implementation"] = "eager"
    model = getattr(module, cls)(getattr(module, config_cls)(**config)).eval()
    model.load_state_dict(case["state"], strict=False)
    model = model.double()
    feed = {k: torch.from_numpy(v) for k, v in case["feed"].items()}
    x = model.get_input_embeddings()(feed["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=x, attention_mask=feed.get("attention_mask")).logits
    if logits.dim() == 3:  # a language model: the last position
        logits = logits[:, -1]
    chosen = logits[torch.arange(len(case["target"])), torch.from_numpy(case["target"])]
    chosen.backward(torch.ones_like(chosen))  # R = x ⊙ gradient: a gradient of 1 at the logit is R_out = logit
    got = (x * x.grad).detach().numpy()
    want = case["reference"]
    print("scale lxt ÷ reference per sample:", [float((got[i] * want[i]).sum() / (want[i] * want[i]).sum()) for i in range(len(want))])
    for i in range(len(want)):
        rel = np.linalg.norm(got[i] - want[i]) / np.linalg.norm(want[i])
        cos = float((got[i] * want[i]).sum() / np.linalg.norm(got[i]) / np.linalg.norm(want[i]))
        print(f"sample {i}: relative L2 {rel:.3e}, cosine {cos:.8f} (lxt {__import__('lxt').__version__ if hasattr(__import__('lxt'), '__version__') else '2.1'}, "
              f"transformers {transformers.__version__})")


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3])
    else:
        with_lxt(sys.argv[2])
