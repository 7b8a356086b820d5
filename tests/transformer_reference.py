"""Float64 AttnLRP, CP-LRP and gradient reference for tiny transformers (BERT, GPT-2, Llama, ViT).

This module is a ground truth for the transformer tests.  It shares no code with :mod:`relgraph`: each
model's forward pass is re-written functionally, in torch float64, from the module's ``state_dict``,
following the HuggingFace / torchvision source line by line, and the relevance is read off that forward
pass by autograd.

Relevance as a modified gradient
--------------------------------
For every value z of the forward pass write its relevance as ``R_z = z ⊙ g_z``.  With ε → 0, every LRP rule
used here then becomes a rule for ``g``, i.e. a gradient through a *modified* forward pass whose value
equals the true forward pass and whose local derivative is changed (by ``.detach()``):

* linear maps (Linear, Conv1D, convolutions, residual sums, additions of a bias, a position or token-type
  embedding or an attention mask, scalings by constants, reshapes, transposes, splits, concatenations,
  the RoPE rotation): LRP-0 on ``z = Σ_i w_i x_i + b`` gives ``R_i = x_i w_i R_z / z``, i.e.
  ``g_i = w_i g_z``, the plain gradient.  A bias keeps ``b g_z``: it is not an input, so it is not counted.
* LayerNorm / RMSNorm: ``y = (x − mean(x)) / σ · w + b`` with the normalizer σ (or ``1/rms``) held
  constant is a linear map of x (the centring matrix ``I − 1/D`` times ``w/σ``), so LRP-0 through it is
  the gradient of the map with σ detached; the mean subtraction stays part of the map (Ali et al. 2022,
  Achtibat et al. 2024).
* elementwise activations ``y = f(x)`` (GELU, GELU-tanh, SiLU, BERT's pooler tanh): the identity rule
  ``R_x = R_y``.  With ``R = z ⊙ g`` that is ``x g_x = y g_y``, i.e. ``g_x = (f(x)/x) g_y``: the gradient of
  ``x · (f(x)/x).detach()``.  At ``x = 0`` the ratio is its limit ``f'(0)`` (R_x is 0 there either way).
* a product of two activations ``p = a ⊙ b`` (Llama's SwiGLU ``act(gate(x)) * up(x)``): the uniform rule
  ``R_a = R_b = R_p / 2``.  ``a g_a = ½ a b g_p`` gives ``g_a = ½ b g_p`` (and ``g_b = ½ a g_p``): the
  gradient of ``½ a b.detach() + ½ a.detach() b``.  A matrix product ``C = A B`` of two activations is a
  sum of such products, ``C_ij = Σ_k A_ik B_kj``; applying the ε-rule to the sum, with the other factor as
  the weight, and splitting each term's relevance in halves gives ``R_A = ½ A ⊙ ((R_C ⊘ C) Bᵀ)`` and
  ``R_B = ½ B ⊙ (Aᵀ (R_C ⊘ C))``: the gradient of ``½ A B.detach() + ½ A.detach() B``.
  AttnLRP uses it for Q·Kᵀ and A·V.
* softmax ``s = softmax(x)``, AttnLRP (Achtibat et al. 2024, Prop. 3.1, a Taylor decomposition at
  ``x → −∞``): ``R_x = x ⊙ (R_s − s Σ_j R_s,j)``.  With ``R_s = s ⊙ g_s`` that is
  ``x ⊙ (s ⊙ g_s − s (s · g_s))``, and ``g_x = s ⊙ g_s − s (s · g_s)`` is exactly the softmax Jacobian
  applied to ``g_s``: the plain gradient.  Its non-conservation (relevance absorbed as a bias) is part of
  the rule.
* CP-LRP (Ali et al. 2022): the attention probabilities are held constant, so ``A·V`` is a linear map of
  ``V`` (plain gradient to V) and nothing flows through Q, K or the softmax.
* "gradient": no modification; the result is ``∂f_target/∂x`` itself, not multiplied by x.

Every modified forward pass is written ``value.detach() + (surrogate − surrogate.detach())`` so that its
values are bit for bit those of the true forward pass and only the derivative is replaced.

The relevance starts at ``R_out = onehot(target) ⊙ logits``, i.e. ``g_out = onehot(target)``, and the
returned relevance is ``R_x = x ⊙ g_x`` at the explained value x: the token-embedding output
``word_embeddings[input_ids]`` (before position / token-type embeddings) for the text models, or
``inputs_embeds`` for BERT when given, and ``pixel_values`` for the ViTs.

Two float32 operations of the HuggingFace source are deliberately not copied: LlamaRMSNorm upcasts to
float32 and the eager Llama / ViT attention computes its softmax in float32 (both meant for half-precision
inputs).  In a float64 copy of the module they round to float32, so the functional forward stays float64
there; the RoPE cos/sin tables, which HuggingFace builds in float32 for every dtype, are built in float32
exactly as there (they are constants of the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, ViTConfig, ViTForImageClassification)

__all__ = [
    "ARCHS",
    "MODES",
    "Rules",
    "RuleOps",
    "build",
    "inputs",
    "forward",
    "relevance",
    "explained_value",
    "gelu_new",
]

ARCHS = ("bert", "gpt2", "llama", "vit", "tv-vit")
VOCAB = 50
HIDDEN = 16
IMAGE = 16
NUM_LABELS = 3
# weights large enough that attention is far from uniform and the activations are far from linear
INIT_STD = 0.3


# --------------------------------------------------------------------------------------------- models


def _config_kwargs(attn: str) -> dict:
    if attn not in ("eager", "sdpa"):
        raise ValueError(f"attn must be 'eager' or 'sdpa', got {attn!r}")
    return {"attn_implementation": attn, "initializer_range": INIT_STD}


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every bias, every norm scale/shift and the CLS / position parameters random values.

    Default initialization zeroes biases and norm shifts and sets norm scales to one, which would hide a
    rule that mishandles any of them.
    """
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
            for name, param in module.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
                elif name in ("bias", "in_proj_bias"):
                    param.copy_(0.5 * torch.randn(param.shape, generator=generator))
                elif name in ("cls_token", "class_token", "position_embeddings", "pos_embedding"):
                    param.copy_(0.5 * torch.randn(param.shape, generator=generator))


def build(arch: str, seed: int = 0, attn: str = "eager") -> torch.nn.Module:
    """A tiny deterministic model of family ``arch`` (float32, eval mode), no download.

    ``attn`` selects HuggingFace's attention implementation ("eager" or "sdpa"); torchvision's ViT has one.
    """
    # the global RNG is left as it was: the construction draws from a private copy of it
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _construct(arch, attn)
        _randomize(model, torch.Generator().manual_seed(seed + 1))
    return model.float().eval()


def _construct(arch: str, attn: str) -> torch.nn.Module:
    if arch == "bert":
        model = BertForSequenceClassification(BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, num_labels=NUM_LABELS, **_config_kwargs(attn)))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0,
            **_config_kwargs(attn)))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16, **_config_kwargs(attn)))
    elif arch == "vit":
        model = ViTForImageClassification(ViTConfig(
            image_size=IMAGE, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=32, num_labels=NUM_LABELS, **_config_kwargs(attn)))
    elif arch == "tv-vit":
        model = torchvision.models.VisionTransformer(
            image_size=IMAGE, patch_size=4, num_layers=2, num_heads=2, hidden_dim=HIDDEN, mlp_dim=32,
            num_classes=NUM_LABELS)
        # torchvision zero-initializes the classification head
        with torch.no_grad():
            model.heads.head.weight.normal_(0.0, INIT_STD)
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    return model


def inputs(arch: str, batch: int = 2, seq: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Example inputs as numpy arrays.

    Text models: int64 ``input_ids`` in [1, vocab) and int64 ``attention_mask``; for BERT the last
    ``seq // 4 + 1`` positions of sample 1 are padding (mask 0, id 0 = BERT's pad id).  ViTs: float32
    ``pixel_values`` [batch, 3, 16, 16].
    """
    rng = np.random.default_rng(seed)
    if arch in ("vit", "tv-vit"):
        return {"pixel_values": rng.standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)}
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    ids = rng.integers(1, VOCAB, size=(batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if arch == "bert" and batch > 1:
        pad = seq // 4 + 1
        mask[1, seq - pad:] = 0
        ids[1, seq - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rules:
    """Which derivative each kind of operation gets in the modified forward pass (see the module docstring).

    norm: "detach" (σ held constant) or "gradient".  activation: "identity" or "gradient".
    product: "uniform" or "gradient" (products of two activations outside attention).
    softmax: "gradient" or "detach" (attention probabilities held constant).
    attention_matmul: "uniform" or "gradient" (Q·Kᵀ and A·V).
    multiply_input: whether the result is x ⊙ g (relevance) or g (gradient).
    """

    norm: str = "detach"
    activation: str = "identity"
    product: str = "uniform"
    softmax: str = "gradient"
    attention_matmul: str = "uniform"
    multiply_input: bool = True

    def __post_init__(self):
        allowed = {"norm": ("detach", "gradient"), "activation": ("identity", "gradient"),
                   "product": ("uniform", "gradient"), "softmax": ("gradient", "detach"),
                   "attention_matmul": ("uniform", "gradient")}
        for field, choices in allowed.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"Rules.{field} must be one of {choices}, got {getattr(self, field)!r}")


MODES: dict[str, Rules] = {
    "attnlrp": Rules(),
    "cp-lrp": Rules(softmax="detach", attention_matmul="gradient"),
    "gradient": Rules(norm="gradient", activation="gradient", product="gradient", softmax="gradient",
                      attention_matmul="gradient", multiply_input=False),
}


def _replace_grad(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the derivative of ``surrogate`` in the backward pass."""
    return value.detach() + (surrogate - surrogate.detach())


class RuleOps:
    """The operations whose derivative a rule changes; everything else in the forwards is plain torch."""

    def __init__(self, rules: Rules):
        self.rules = rules

    def layer_norm(self, x, weight, bias, eps):
        mean = x.mean(-1, keepdim=True)
        centred = x - mean
        inv_std = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        if self.rules.norm == "detach":
            inv_std = inv_std.detach()
        y = centred * inv_std * weight
        return y if bias is None else y + bias

    def rms_norm(self, x, weight, eps):
        inv_rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if self.rules.norm == "detach":
            inv_rms = inv_rms.detach()
        return weight * (x * inv_rms)

    def activation(self, f: Callable[[torch.Tensor], torch.Tensor], slope_at_zero: float, x):
        y = f(x)
        if self.rules.activation == "gradient":
            return y
        zero = x == 0
        ratio = torch.where(zero, torch.full_like(x, slope_at_zero), y / torch.where(zero, 1.0, x))
        return _replace_grad(y, x * ratio.detach())

    def product(self, a, b):
        if self.rules.product == "gradient":
            return a * b
        return _replace_grad(a * b, 0.5 * a * b.detach() + 0.5 * a.detach() * b)

    def attention_matmul(self, a, b):
        if self.rules.attention_matmul == "gradient":
            return a @ b
        return _replace_grad(a @ b, 0.5 * (a @ b.detach()) + 0.5 * (a.detach() @ b))

    def softmax(self, scores):
        probs = torch.softmax(scores, dim=-1)
        return probs.detach() if self.rules.softmax == "detach" else probs


def gelu_new(x):
    # transformers.activations.NewGELUActivation, GPT-2's "gelu_new"
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# ---------------------------------------------------------------------------------- functional forwards


def _linear(x, P, name, bias=True):
    y = x @ P[name + ".weight"].T
    return y + P[name + ".bias"] if bias else y


def _heads(x, num_heads):
    n, s, d = x.shape
    return x.view(n, s, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(x):
    n, h, s, d = x.shape
    return x.transpose(1, 2).reshape(n, s, h * d)


def _attention(ops, q, k, v, additive_mask):
    """softmax(Q Kᵀ / √d + mask) V over [N, H, S, d]; the rules act on both products and the softmax."""
    scores = ops.attention_matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if additive_mask is not None:
        scores = scores + additive_mask
    return ops.attention_matmul(ops.softmax(scores), v)


def _additive_mask(keep: torch.Tensor) -> torch.Tensor:
    """HuggingFace's float mask: 0 where attended, the dtype's lowest value where not."""
    return torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min)


def _padding_mask(attention_mask, n, s):
    if attention_mask is None:
        return torch.ones(n, 1, 1, s, dtype=torch.bool)
    return torch.as_tensor(attention_mask).bool().view(n, 1, 1, s)


def _causal_mask(attention_mask, n, s):
    causal = torch.ones(s, s, dtype=torch.bool).tril().view(1, 1, s, s)
    return _additive_mask(causal & _padding_mask(attention_mask, n, s))


def _bert(ops, P, cfg, x, attention_mask):
    n, s, _ = x.shape
    e = "bert.embeddings."
    h = x + P[e + "token_type_embeddings.weight"][0]
    h = h + P[e + "position_embeddings.weight"][:s]
    h = ops.layer_norm(h, P[e + "LayerNorm.weight"], P[e + "LayerNorm.bias"], cfg.layer_norm_eps)
    mask = None if attention_mask is None else _additive_mask(_padding_mask(attention_mask, n, s))
    heads = cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{i}."
        q, k, v = (_heads(_linear(h, P, p + "attention.self." + w), heads) for w in ("query", "key", "value"))
        a = _linear(_merge_heads(_attention(ops, q, k, v, mask)), P, p + "attention.output.dense")
        h = ops.layer_norm(a + h, P[p + "attention.output.LayerNorm.weight"],
                           P[p + "attention.output.LayerNorm.bias"], cfg.layer_norm_eps)
        m = ops.activation(F.gelu, 0.5, _linear(h, P, p + "intermediate.dense"))
        m = _linear(m, P, p + "output.dense")
        h = ops.layer_norm(m + h, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"],
                           cfg.layer_norm_eps)
    pooled = ops.activation(torch.tanh, 1.0, _linear(h[:, 0], P, "bert.pooler.dense"))
    return _linear(pooled, P, "classifier")


def _conv1d(x, P, name):
    # transformers.pytorch_utils.Conv1D: weight is [in, out]
    return x @ P[name + ".weight"] + P[name + ".bias"]


def _gpt2(ops, P, cfg, x, attention_mask, position):
    n, s, d = x.shape
    h = x + P["transformer.wpe.weight"][:s]
    mask = _causal_mask(attention_mask, n, s)
    eps = cfg.layer_norm_epsilon
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        a = ops.layer_norm(h, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
        q, k, v = (_heads(t, cfg.n_head) for t in _conv1d(a, P, p + "attn.c_attn").split(d, dim=2))
        h = _conv1d(_merge_heads(_attention(ops, q, k, v, mask)), P, p + "attn.c_proj") + h
        m = ops.layer_norm(h, P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
        m = ops.activation(gelu_new, 0.5, _conv1d(m, P, p + "mlp.c_fc"))
        h = h + _conv1d(m, P, p + "mlp.c_proj")
    h = ops.layer_norm(h, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], eps)
    head = P.get("lm_head.weight", P["transformer.wte.weight"])  # tied to the token embedding
    return h[:, position] @ head.T


def _rope_tables(cfg, s):
    """cos, sin [S, head_dim] as LlamaRotaryEmbedding builds them ("default" RoPE, in float32)."""
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = cfg.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))
    freqs = torch.arange(s)[:, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(torch.float64), emb.sin().to(torch.float64)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _llama(ops, P, cfg, x, attention_mask, position):
    n, s, _ = x.shape
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    cos, sin = _rope_tables(cfg, s)
    mask = _causal_mask(attention_mask, n, s)
    eps = cfg.rms_norm_eps
    h = x
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = ops.rms_norm(h, P[p + "input_layernorm.weight"], eps)
        q = _heads(_linear(a, P, p + "self_attn.q_proj", bias=False), heads)
        k = _heads(_linear(a, P, p + "self_attn.k_proj", bias=False), kv_heads)
        v = _heads(_linear(a, P, p + "self_attn.v_proj", bias=False), kv_heads)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # grouped-query attention: each key/value head serves heads // kv_heads query heads
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        h = h + _linear(_merge_heads(_attention(ops, q, k, v, mask)), P, p + "self_attn.o_proj", bias=False)
        m = ops.rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
        gate = ops.activation(F.silu, 0.5, _linear(m, P, p + "mlp.gate_proj", bias=False))
        m = ops.product(gate, _linear(m, P, p + "mlp.up_proj", bias=False))
        h = h + _linear(m, P, p + "mlp.down_proj", bias=False)
    h = ops.rms_norm(h, P["model.norm.weight"], eps)
    head = P.get("lm_head.weight", P["model.embed_tokens.weight"])
    return h[:, position] @ head.T


def _vit(ops, P, cfg, pixels):
    e = "vit.embeddings."
    patches = F.conv2d(pixels, P[e + "patch_embeddings.projection.weight"], P[e + "patch_embeddings.projection.bias"],
                       stride=cfg.patch_size)
    h = patches.flatten(2).transpose(1, 2)
    h = torch.cat((P[e + "cls_token"].expand(h.shape[0], -1, -1), h), dim=1) + P[e + "position_embeddings"]
    eps = cfg.layer_norm_eps
    for i in range(cfg.num_hidden_layers):
        p = f"vit.layers.{i}."
        a = ops.layer_norm(h, P[p + "layernorm_before.weight"], P[p + "layernorm_before.bias"], eps)
        q, k, v = (_heads(_linear(a, P, p + "attention." + w), cfg.num_attention_heads)
                   for w in ("q_proj", "k_proj", "v_proj"))
        h = _linear(_merge_heads(_attention(ops, q, k, v, None)), P, p + "attention.o_proj") + h
        m = ops.layer_norm(h, P[p + "layernorm_after.weight"], P[p + "layernorm_after.bias"], eps)
        m = ops.activation(F.gelu, 0.5, _linear(m, P, p + "mlp.fc1"))
        h = _linear(m, P, p + "mlp.fc2") + h
    h = ops.layer_norm(h, P["vit.layernorm.weight"], P["vit.layernorm.bias"], eps)
    return _linear(h[:, 0], P, "classifier")


def _tv_vit(ops, P, model, pixels):
    n = pixels.shape[0]
    h = F.conv2d(pixels, P["conv_proj.weight"], P["conv_proj.bias"], stride=model.patch_size)
    h = h.reshape(n, model.hidden_dim, -1).permute(0, 2, 1)
    h = torch.cat([P["class_token"].expand(n, -1, -1), h], dim=1)
    h = h + P["encoder.pos_embedding"]
    for i, block in enumerate(model.encoder.layers):
        p = f"encoder.layers.encoder_layer_{i}."
        eps = block.ln_1.eps
        a = ops.layer_norm(h, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
        heads = block.self_attention.num_heads
        qkv = a @ P[p + "self_attention.in_proj_weight"].T + P[p + "self_attention.in_proj_bias"]
        q, k, v = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))
        h = _linear(_merge_heads(_attention(ops, q, k, v, None)), P, p + "self_attention.out_proj") + h
        m = ops.layer_norm(h, P[p + "ln_2.weight"], P[p + "ln_2.bias"], block.ln_2.eps)
        m = ops.activation(F.gelu, 0.5, _linear(m, P, p + "mlp.0"))
        h = h + _linear(m, P, p + "mlp.3")
    h = ops.layer_norm(h, P["encoder.ln.weight"], P["encoder.ln.bias"], model.encoder.ln.eps)
    return _linear(h[:, 0], P, "heads.head")


# ------------------------------------------------------------------------------------------ public API


def explained_value(model: torch.nn.Module, arch: str, feed: Mapping[str, np.ndarray]) -> torch.Tensor:
    """The value the relevance is given at, float64: pixels, ``inputs_embeds``, or ``word_embeddings[input_ids]``."""
    if arch in ("vit", "tv-vit"):
        return torch.as_tensor(np.asarray(feed["pixel_values"]), dtype=torch.float64)
    if arch == "bert" and "inputs_embeds" in feed:
        return torch.as_tensor(np.asarray(feed["inputs_embeds"]), dtype=torch.float64)
    table = {"bert": "bert.embeddings.word_embeddings.weight", "gpt2": "transformer.wte.weight",
             "llama": "model.embed_tokens.weight"}[arch]
    ids = torch.as_tensor(np.asarray(feed["input_ids"]), dtype=torch.int64)
    return model.state_dict()[table].to(torch.float64)[ids]


def _forward_from(model, arch, x, feed, rules: Rules, position: int) -> torch.Tensor:
    P = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items() if v.is_floating_point()}
    ops = RuleOps(rules)
    mask = feed.get("attention_mask")
    if arch == "bert":
        return _bert(ops, P, model.config, x, mask)
    if arch == "gpt2":
        return _gpt2(ops, P, model.config, x, mask, position)
    if arch == "llama":
        return _llama(ops, P, model.config, x, mask, position)
    if arch == "vit":
        return _vit(ops, P, model.config, x)
    if arch == "tv-vit":
        return _tv_vit(ops, P, model, x)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def forward(model: torch.nn.Module, arch: str, inputs: Mapping[str, np.ndarray], position: int = -1) -> np.ndarray:
    """The functional float64 forward pass: logits [N, C] (GPT-2 / Llama: at sequence ``position``, [N, V])."""
    x = explained_value(model, arch, inputs)
    with torch.no_grad():
        return _forward_from(model, arch, x, inputs, MODES["gradient"], position).numpy()


def relevance(model: torch.nn.Module, arch: str, inputs: Mapping[str, np.ndarray], mode: Union[str, Rules],
              target, position: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(R, logits)`` in float64 for ``mode`` "attnlrp", "cp-lrp" or "gradient" (or a :class:`Rules`).

    R has the shape of the explained value x ([N, S, D] token embeddings or inputs_embeds, [N, 3, H, W]
    pixels): ``x ⊙ ∂f̃_target/∂x`` for the LRP modes (R_out = onehot(target) ⊙ logits), ``∂f_target/∂x``
    for "gradient".  ``target`` is an int array [N].
    """
    rules = MODES[mode] if isinstance(mode, str) else mode
    x = explained_value(model, arch, inputs).requires_grad_(True)
    logits = _forward_from(model, arch, x, inputs, rules, position)
    target = torch.as_tensor(np.asarray(target), dtype=torch.int64).view(-1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries for a batch of {logits.shape[0]}")
    picked = logits.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(picked, x)
    result = x * grad if rules.multiply_input else grad
    return result.detach().numpy(), logits.detach().numpy()
