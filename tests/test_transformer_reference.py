"""Checks of the float64 transformer reference (tests/transformer_reference.py) against torch and by hand.

* its functional forward equals the HuggingFace / torchvision module run in float64 (max |Δ| < 1e-10);
* its "gradient" mode equals torch.autograd through the module itself (relative L2 < 1e-10);
* each relevance modification equals its LRP rule written out explicitly in numpy (identity, uniform
  product and matrix product, softmax Taylor rule, LayerNorm with σ held constant);
* CP-LRP conserves relevance exactly once every bias-like parameter is zero;
* the modes differ from each other and from planted bugs by far more than round-off, so that a
  comparison against them can fail.
"""

import numpy as np
import pytest
import torch
import transformers

try:
    import transformer_reference as tr
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import transformer_reference as tr

# The HuggingFace Llama RMSNorm and the eager Llama / ViT softmax round to float32 even in a float64
# model; the reference stays float64 (see its docstring), so those runs are exact only with sdpa
# attention and a float64 RMSNorm, and float32-close otherwise.
EXACT_CASES = [("bert", "eager"), ("bert", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa"), ("llama", "sdpa"),
               ("vit", "sdpa"), ("tv-vit", "eager")]
FLOAT32_CASES = [("llama", "eager"), ("vit", "eager")]


def _rms_norm_float64(self, hidden_states):
    """LlamaRMSNorm.forward without its float32 round trip."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.fixture
def float64_rms_norm(monkeypatch):
    monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward", _rms_norm_float64)


def _torch_feed(feed, dtype=torch.float64):
    return {k: torch.as_tensor(v).to(dtype) if v.dtype.kind == "f" else torch.as_tensor(v) for k, v in feed.items()}


def _module_logits(model, arch, feed, position=-1, dtype=torch.float64):
    """The logits of the module itself, [N, C] (text decoders: at ``position``)."""
    t = _torch_feed(feed, dtype)
    if arch == "tv-vit":
        return model(t["pixel_values"])
    out = model(**t).logits
    return out[:, position] if arch in ("gpt2", "llama") else out


def _rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a - b)) / np.linalg.norm(np.ravel(b)))


def _without_mask(feed):
    return {k: v for k, v in feed.items() if k != "attention_mask"}


# ------------------------------------------------------------------------------------------ the models


@pytest.mark.parametrize("arch, attn", EXACT_CASES)
@pytest.mark.parametrize("masked", [True, False])
def test_forward_equals_module_float64(arch, attn, masked, float64_rms_norm):
    model = tr.build(arch, attn=attn).double()
    feed = tr.inputs(arch, seed=3)
    if not masked:
        feed = _without_mask(feed)
    for position in ([-1, 2] if arch in ("gpt2", "llama") else [-1]):
        with torch.no_grad():
            expected = _module_logits(model, arch, feed, position).numpy()
        got = tr.forward(model, arch, feed, position=position)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-10
        assert np.abs(expected).max() > 0.5  # logits of a size where a wrong term would show


def test_bert_padding_changes_logits():
    model = tr.build("bert").double()
    feed = tr.inputs("bert")
    assert (feed["attention_mask"][1] == 0).any() and (feed["attention_mask"][0] == 1).all()
    masked, unmasked = tr.forward(model, "bert", feed), tr.forward(model, "bert", _without_mask(feed))
    np.testing.assert_array_equal(masked[0], unmasked[0])
    assert np.abs(masked[1] - unmasked[1]).max() > 1e-3


@pytest.mark.parametrize("arch, attn", FLOAT32_CASES)
def test_forward_close_to_module_with_float32_upcasts(arch, attn):
    model = tr.build(arch, attn=attn).double()
    feed = tr.inputs(arch)
    with torch.no_grad():
        expected = _module_logits(model, arch, feed).numpy()
    assert _rel_l2(tr.forward(model, arch, feed), expected) < 1e-6


@pytest.mark.parametrize("arch", tr.ARCHS)
def test_forward_close_to_float32_module(arch):
    """The model a compiler sees (float32, default code paths) computes what the reference computes."""
    model = tr.build(arch)
    feed = tr.inputs(arch, seed=1)
    with torch.no_grad():
        expected = _module_logits(model, arch, feed, dtype=torch.float32).double().numpy()
    assert _rel_l2(tr.forward(model, arch, feed), expected) < 1e-5


def test_bert_inputs_embeds_is_the_explained_value():
    model = tr.build("bert").double()
    feed = tr.inputs("bert")
    embeds = model.bert.embeddings.word_embeddings.weight.detach().numpy()[feed["input_ids"]]
    by_embeds = {"inputs_embeds": embeds, "attention_mask": feed["attention_mask"]}
    np.testing.assert_array_equal(tr.forward(model, "bert", by_embeds), tr.forward(model, "bert", feed))
    target = np.array([0, 2])
    for mode in tr.MODES:
        np.testing.assert_array_equal(tr.relevance(model, "bert", by_embeds, mode, target)[0],
                                      tr.relevance(model, "bert", feed, mode, target)[0])


# ---------------------------------------------------------------------------------------- gradient mode


def _module_gradient(model, arch, feed, target, position=-1):
    """∂ logit_target / ∂ x by torch.autograd through the module (x: embedding output or pixels)."""
    t = _torch_feed(feed)
    if arch in ("vit", "tv-vit"):
        x = t["pixel_values"].requires_grad_(True)
        logits = model(x) if arch == "tv-vit" else model(pixel_values=x).logits
    else:
        x = model.get_input_embeddings()(t["input_ids"]).detach().requires_grad_(True)
        logits = model(inputs_embeds=x, attention_mask=t.get("attention_mask")).logits
        if arch in ("gpt2", "llama"):
            logits = logits[:, position]
    logits.gather(1, torch.as_tensor(target)[:, None]).sum().backward()
    return x.grad.numpy()


@pytest.mark.parametrize("arch, attn", EXACT_CASES)
def test_gradient_mode_equals_module_autograd(arch, attn, float64_rms_norm):
    model = tr.build(arch, attn=attn).double()
    feed = tr.inputs(arch, seed=5)
    n_out = 3 if arch in ("bert", "vit", "tv-vit") else tr.VOCAB
    target = np.array([1, n_out - 1])
    for position in ([-1, 3] if arch in ("gpt2", "llama") else [-1]):
        grad, logits = tr.relevance(model, arch, feed, "gradient", target, position=position)
        expected = _module_gradient(model, arch, feed, target, position)
        assert grad.shape == expected.shape
        assert _rel_l2(grad, expected) < 1e-10
        # planted bug: one step through the LRP-modified pass is far from the gradient
        bugged, _ = tr.relevance(model, arch, feed, tr.Rules(norm="detach", activation="gradient", product="gradient",
                                                              attention_matmul="gradient", multiply_input=False),
                                 target, position=position)
        assert _rel_l2(bugged, expected) > 1e-3


# ----------------------------------------------------------------------- each modification is its LRP rule

ATTNLRP = tr.RuleOps(tr.MODES["attnlrp"])


def _relevance_through(op, inputs, relevance_out):
    """Push R_out back through one modified op in gradient form: R_in = in ⊙ ∂(out · (R_out ⊘ out))/∂in."""
    leaves = [torch.as_tensor(a, dtype=torch.float64).requires_grad_(True) for a in inputs]
    out = op(*leaves)
    z = out.detach()
    weight = torch.where(z == 0, 0.0, torch.as_tensor(relevance_out) / torch.where(z == 0, 1.0, z))
    grads = torch.autograd.grad((out * weight).sum(), leaves)
    return [(leaf * g).detach().numpy() for leaf, g in zip(leaves, grads)], out.detach().numpy()


def test_identity_rule_passes_relevance_unchanged():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 7))
    x[0, 0] = 0.0
    r_out = rng.standard_normal((4, 7))
    for f, slope in ((torch.tanh, 1.0), (torch.nn.functional.gelu, 0.5), (torch.nn.functional.silu, 0.5),
                     (tr.gelu_new, 0.5)):
        (r_x,), y = _relevance_through(lambda t: ATTNLRP.activation(f, slope, t), [x], r_out)
        np.testing.assert_array_equal(y, f(torch.as_tensor(x)).numpy())  # value untouched
        mask = x != 0
        np.testing.assert_allclose(r_x[mask], r_out[mask], rtol=1e-12)
        assert r_x[0, 0] == 0.0


def test_uniform_rule_halves_a_product():
    rng = np.random.default_rng(1)
    a, b, r_out = (rng.standard_normal((3, 5)) for _ in range(3))
    (r_a, r_b), p = _relevance_through(ATTNLRP.product, [a, b], r_out)
    np.testing.assert_array_equal(p, a * b)
    np.testing.assert_allclose(r_a, r_out / 2, rtol=1e-12)
    np.testing.assert_allclose(r_b, r_out / 2, rtol=1e-12)


def test_uniform_rule_on_a_matrix_product_is_half_the_epsilon_rule():
    """C = A B, each factor the weight of the other: R_A = ½ A ⊙ ((R_C ⊘ C) Bᵀ), R_B = ½ B ⊙ (Aᵀ (R_C ⊘ C))."""
    rng = np.random.default_rng(2)
    a, b, r_out = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 4, 5))
    (r_a, r_b), c = _relevance_through(ATTNLRP.attention_matmul, [a, b], r_out)
    s = r_out / c
    np.testing.assert_allclose(r_a, 0.5 * a * (s @ b.transpose(0, 2, 1)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r_b, 0.5 * b * (a.transpose(0, 2, 1) @ s), rtol=1e-10, atol=1e-12)
    assert abs(r_a.sum() + r_b.sum() - r_out.sum()) < 1e-10 * np.abs(r_out).sum()


def test_softmax_rule_is_attnlrp_taylor_rule():
    """AttnLRP Prop. 3.1: R_x = x ⊙ (R_s − s Σ R_s)."""
    rng = np.random.default_rng(3)
    x, r_out = 2 * rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    (r_x,), s = _relevance_through(ATTNLRP.softmax, [x], r_out)
    np.testing.assert_allclose(r_x, x * (r_out - s * r_out.sum(-1, keepdims=True)), rtol=1e-10, atol=1e-12)
    held = tr.RuleOps(tr.MODES["cp-lrp"]).softmax(torch.as_tensor(x).requires_grad_(True))
    assert not held.requires_grad  # CP-LRP: nothing flows into the attention scores


def test_layer_norm_rule_is_lrp0_through_the_centring_map():
    """σ held constant: y = x M + b with M = (I − 1/D) diag(w/σ); LRP-0: R_x,i = Σ_j x_i M_ij R_j / y_j."""
    rng = np.random.default_rng(4)
    d = 6
    x, r_out = rng.standard_normal((2, d)), rng.standard_normal((2, d))
    w, b = 1 + 0.3 * rng.standard_normal(d), 0.5 * rng.standard_normal(d)
    eps = 1e-5
    (r_x,), y = _relevance_through(lambda t: ATTNLRP.layer_norm(t, torch.as_tensor(w), torch.as_tensor(b), eps),
                                   [x], r_out)
    sigma = np.sqrt(x.var(-1, keepdims=True) + eps)
    expected = np.empty_like(x)
    for n in range(2):
        m = (np.eye(d) - 1.0 / d) * (w / sigma[n])[None, :]
        np.testing.assert_allclose(x[n] @ m + b, y[n], rtol=1e-12)
        expected[n] = x[n] * (m @ (r_out[n] / y[n]))
    np.testing.assert_allclose(r_x, expected, rtol=1e-10, atol=1e-12)
    # RMSNorm: y = x diag(w / rms), so each output passes its relevance to its own input
    (r_rms,), _ = _relevance_through(lambda t: ATTNLRP.rms_norm(t, torch.as_tensor(w), eps), [x], r_out)
    np.testing.assert_allclose(r_rms, r_out, rtol=1e-12)


# ---------------------------------------------------------------------------------- whole-model relevance


def _zero_bias_like(model):
    """Zero every parameter that enters additively: biases, norm shifts, position / token-type embeddings,
    CLS tokens. What remains is linear in the explained value once the rules hold σ and A constant."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            is_additive = last in ("bias", "in_proj_bias", "cls_token", "class_token", "position_embeddings",
                                   "pos_embedding") or any(k in name for k in ("position_embeddings", "wpe",
                                                                               "token_type_embeddings"))
            if is_additive:
                param.zero_()
    return model


@pytest.mark.parametrize("arch", tr.ARCHS)
def test_cp_lrp_conserves_without_bias_terms(arch):
    model = _zero_bias_like(tr.build(arch).double())
    feed = tr.inputs(arch, seed=7)
    n_out = 3 if arch in ("bert", "vit", "tv-vit") else tr.VOCAB
    target = np.array([2, 0 if n_out == 3 else 17])
    relevance, logits = tr.relevance(model, arch, feed, "cp-lrp", target)
    picked = logits[np.arange(2), target]
    sums = relevance.reshape(2, -1).sum(1)
    scale = np.abs(picked).max()
    assert scale > 0.5
    np.testing.assert_allclose(sums, picked, rtol=0, atol=1e-10 * scale)
    # planted bugs: the normalizer differentiated, or the activations, or the SwiGLU product at full weight
    for bug in (tr.Rules(softmax="detach", attention_matmul="gradient", norm="gradient"),
                tr.Rules(softmax="detach", attention_matmul="gradient", activation="gradient")):
        bugged, _ = tr.relevance(model, arch, feed, bug, target)
        assert np.abs(bugged.reshape(2, -1).sum(1) - picked).max() > 1e-3 * np.abs(picked).max()


@pytest.mark.parametrize("arch", tr.ARCHS)
def test_modes_differ_and_keep_the_forward_values(arch):
    model = tr.build(arch).double()
    feed = tr.inputs(arch, seed=9)
    target = np.array([1, 2])
    runs = {mode: tr.relevance(model, arch, feed, mode, target) for mode in tr.MODES}
    base_logits = runs["gradient"][1]
    np.testing.assert_allclose(base_logits, tr.forward(model, arch, feed), rtol=0, atol=0)
    for mode, (_, logits) in runs.items():
        np.testing.assert_array_equal(logits, base_logits)  # rules change derivatives, never values
    attnlrp, cp_lrp = runs["attnlrp"][0], runs["cp-lrp"][0]
    assert np.isfinite(attnlrp).all() and np.abs(attnlrp).max() > 0
    x_times_grad = runs["gradient"][0] * (feed["pixel_values"] if "pixel_values" in feed else
                                          tr.explained_value(model, arch, feed).numpy())
    assert _rel_l2(cp_lrp, attnlrp) > 1e-3
    assert _rel_l2(x_times_grad, attnlrp) > 1e-3
    # planted bugs in AttnLRP: softmax held constant; Q·Kᵀ / A·V by plain gradient; σ differentiated
    for bug in (tr.Rules(softmax="detach"), tr.Rules(attention_matmul="gradient"), tr.Rules(norm="gradient")):
        assert _rel_l2(tr.relevance(model, arch, feed, bug, target)[0], attnlrp) > 1e-3


def test_llama_uniform_rule_on_swiglu_matters():
    model = tr.build("llama").double()
    feed = tr.inputs("llama")
    target = np.array([4, 9])
    attnlrp = tr.relevance(model, "llama", feed, "attnlrp", target)[0]
    assert _rel_l2(tr.relevance(model, "llama", feed, tr.Rules(product="gradient"), target)[0], attnlrp) > 1e-3


def test_padding_gets_no_relevance():
    model = tr.build("bert").double()
    feed = tr.inputs("bert")
    pad = feed["attention_mask"] == 0
    for mode in tr.MODES:
        r, _ = tr.relevance(model, "bert", feed, mode, np.array([0, 1]))
        assert np.abs(r[pad]).max() == 0.0
        assert np.abs(r[~pad]).max() > 0


def test_inputs_and_build_are_deterministic():
    for arch in tr.ARCHS:
        a, b = tr.inputs(arch, seed=2), tr.inputs(arch, seed=2)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        sa, sb = tr.build(arch, seed=4).state_dict(), tr.build(arch, seed=4).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = tr.inputs("gpt2")["input_ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < tr.VOCAB
    assert tr.inputs("vit")["pixel_values"].dtype == np.float32


def test_unknown_rule_names_are_refused():
    with pytest.raises(ValueError, match="softmax"):
        tr.Rules(softmax="detached")
    with pytest.raises(ValueError, match="arch"):
        tr.build("t5")
