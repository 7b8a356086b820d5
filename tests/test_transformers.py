"""Transformers exported from PyTorch (Hugging Face BERT, GPT-2, Llama, ViT; torchvision's VisionTransformer), both
export forms, eager and SDPA attention, explained with ``gradient``, ``attnlrp`` and ``cp-lrp`` and compared with
the float64 reference of :mod:`transformer_reference` (written from the rules' math, sharing no code with
relgraph).

Each explainer of the reference comparison also runs on OpenVINO, where installed, and must equal
onnxruntime's outputs (the portable explainer is for every runtime).

The reference is LRP in the limit ε → 0, so the LRP explainers here are compiled with ε = stabilizer = 1e-12: the
comparison then sees the rules, not where a stabilizer of 1e-6 moves a near-zero denominator.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import relgraph  # noqa: E402
from relgraph.errors import RelgraphError  # noqa: E402
from relgraph.runtimes import installed_runtimes, open_session  # noqa: E402

import transformer_reference as ref  # noqa: E402

LIMIT = {"epsilon": 1e-12}  # the ε → 0 limit the reference is written in
CASES = [("bert", "eager", "dynamo"), ("bert", "sdpa", "legacy"), ("bert", "sdpa", "dynamo"),
         ("gpt2", "eager", "dynamo"), ("gpt2", "sdpa", "legacy"), ("llama", "sdpa", "dynamo"),
         ("llama", "eager", "dynamo"), ("vit", "eager", "dynamo"), ("vit", "sdpa", "legacy"),
         ("tv-vit", "eager", "legacy"), ("tv-vit", "eager", "dynamo")]
RULES = ("gradient", "attnlrp", "cp-lrp")


class Wrapped(torch.nn.Module):
    """The model with positional inputs and its logits as the one output."""

    def __init__(self, model, arch, names):
        super().__init__()
        self.model, self.arch, self.names = model, arch, names

    def forward(self, *args):
        kwargs = dict(zip(self.names, args))
        out = self.model(kwargs["pixel_values"]) if self.arch == "tv-vit" else self.model(**kwargs)
        return out if torch.is_tensor(out) else out.logits


def export(model, arch, feed: dict, path, form: str) -> str:
    names = list(feed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(model, arch, names).eval(), tuple(torch.from_numpy(feed[k]) for k in names),
                          str(path), input_names=names, output_names=["logits"], dynamo=form == "dynamo",
                          opset_version=18)
    return str(path)


def model_inputs(arch: str, mask: bool = True) -> dict:
    """The reference's example inputs; the decoders are exported without a mask (all ones)."""
    feed = ref.inputs(arch)
    if arch in ("gpt2", "llama") or not mask:
        feed.pop("attention_mask", None)
    return feed


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(arch, attn, form, mask=True):
        key = (arch, attn, form, mask)
        if key not in cache:
            model = ref.build(arch, attn=attn)
            feed = model_inputs(arch, mask)
            path = tmp_path_factory.mktemp("tx") / f"{arch}_{attn}_{form}.onnx"
            cache[key] = model, feed, export(model, arch, feed, path, form)
        return cache[key]

    return get


def explain(path, rule, feed, target, tmp_dir, **kw):
    params = {} if rule == "gradient" else LIMIT
    out_path = str(tmp_dir / f"{rule}.{abs(hash((path, rule, str(kw))))}.onnx")
    rule_map = None
    if params:
        rule_map = tmp_dir / f"{rule}.limit.toml"
        rule_map.write_text(f'base = "{rule}"\n[params]\nepsilon = 1e-12\nstabilizer = 1e-12\n')
    result = relgraph.compile(path, rule=rule, rule_map=str(rule_map) if rule_map else None, output=out_path,
                              overwrite=True, **kw)
    explainer = relgraph.Explainer(result.path)
    first, *rest = feed
    return explainer.explain(feed[first], target, inputs={k: feed[k] for k in rest}), explainer


def per_sample(got, want):
    """(relative L2, cosine) of each sample."""
    got, want = got.reshape(len(got), -1).astype(np.float64), want.reshape(len(want), -1)
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    return rel, cos


def relevance_at_x(out):
    """The relevance at the explained value: a token model's per-feature ``relevance_embedding``."""
    return out["outputs"].get("relevance_embedding", out["relevance"])


@pytest.mark.parametrize("arch,attn,form", CASES, ids=["-".join(c) for c in CASES])
def test_matches_float64_reference(exported, tmp_path, arch, attn, form):
    model, feed, path = exported(arch, attn, form)
    logits = ref.forward(model, arch, feed)
    target = np.argsort(logits, 1)[:, -2]  # the runner-up: not the class the argmax default would pick
    tokens = arch not in ("vit", "tv-vit")
    for rule in RULES:
        out, explainer = explain(path, rule, feed, target, tmp_path, embedding_relevance=tokens)
        want, want_logits = ref.relevance(model, arch, feed, rule, target)
        np.testing.assert_allclose(out["logits"], want_logits, rtol=1e-4, atol=1e-5)
        rel, cos = per_sample(relevance_at_x(out), want)
        assert rel.max() <= 1e-4 and cos.min() >= 0.9999, (rule, rel, cos)
        if tokens:  # one value per token: the sum over the embedding's features
            np.testing.assert_allclose(out["relevance"], want.sum(-1), rtol=1e-4, atol=1e-6 * np.abs(want).max())
        if "openvino" in installed_runtimes():  # the same file on another runtime
            first, *rest = feed
            other = relgraph.Explainer(explainer.path, runtime="openvino").explain(
                feed[first], target, inputs={k: feed[k] for k in rest})
            scale = np.abs(relevance_at_x(out)).max()  # a token's sum of gradients is 0 up to float32 noise
            for k, v in out["outputs"].items():
                np.testing.assert_allclose(other["outputs"][k], v, rtol=1e-4, atol=1e-5 * scale, err_msg=rule)
        if rule != "gradient":  # conservation: input + biases (and what softmaxes absorb) = the target logit
            start = want_logits[np.arange(len(target)), target]
            total = out["relevance"].reshape(len(target), -1).sum(1) + out["bias_relevance"]
            np.testing.assert_allclose(total, start, rtol=1e-3, atol=1e-5)


def test_rules_differ(exported, tmp_path):
    """attnlrp, cp-lrp and gradient × input are three explanations: a composite that ignored its softmax or
    bilinear rules would equal another."""
    model, feed, path = exported("bert", "eager", "dynamo")
    target = np.zeros(2, np.int64)
    got = {rule: relevance_at_x(explain(path, rule, feed, target, tmp_path, embedding_relevance=True)[0])
           for rule in RULES}
    x = ref.explained_value(model, "bert", feed).detach().numpy()
    rel, _ = per_sample(got["attnlrp"], got["cp-lrp"])
    assert rel.min() > 1e-2
    rel, _ = per_sample(got["attnlrp"], got["gradient"] * x)
    assert rel.min() > 1e-2


def test_bert_without_mask_and_with_inputs_embeds(exported, tmp_path):
    model, feed, path = exported("bert", "eager", "dynamo", mask=False)
    target = np.array([1, 2])
    out, explainer = explain(path, "attnlrp", feed, target, tmp_path, embedding_relevance=True)
    assert explainer.tokens and out["relevance"].shape == feed["input_ids"].shape
    rel, _ = per_sample(relevance_at_x(out), ref.relevance(model, "bert", feed, "attnlrp", target)[0])
    assert rel.max() <= 1e-4

    # the float input keeps today's contract: relevance has the input's shape
    embeds = {"inputs_embeds": ref.explained_value(model, "bert", feed).detach().numpy().astype(np.float32)}
    path = export(model, "bert", embeds, tmp_path / "bert_embeds.onnx", "dynamo")
    out, explainer = explain(path, "attnlrp", embeds, target, tmp_path)
    assert not explainer.tokens and out["relevance"].shape == embeds["inputs_embeds"].shape
    rel, _ = per_sample(out["relevance"], ref.relevance(model, "bert", embeds, "attnlrp", target)[0])
    assert rel.max() <= 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_language_model_at_a_position(exported, tmp_path, arch):
    """The next-token logit at position K (not the last), target a vocabulary id."""
    model, feed, path = exported(arch, "sdpa" if arch == "llama" else "eager", "dynamo")
    target = np.array([7, 31])
    for rule in ("gradient", "attnlrp"):
        out, _ = explain(path, rule, feed, target, tmp_path, position=3, embedding_relevance=True)
        want, want_logits = ref.relevance(model, arch, feed, rule, target, position=3)
        np.testing.assert_allclose(out["logits"], want_logits, rtol=1e-4, atol=1e-5)
        rel, _ = per_sample(relevance_at_x(out), want)
        assert rel.max() <= 1e-4, (rule, rel)
        # causal attention: the tokens after position 3 do not reach its logits
        assert np.abs(out["relevance"][:, 4:]).max() == 0.0


def test_token_explainer_refuses_bad_input(exported, tmp_path):
    _, feed, path = exported("bert", "eager", "dynamo")
    _, explainer = explain(path, "attnlrp", feed, None, tmp_path)
    ids = feed["input_ids"]
    for bad, message in ((ids + 1000, "out of the vocabulary"), (ids.astype(np.float32), "token ids"),
                         ((ids, {"token_type": ids}), "has no input")):
        x, inputs = bad if isinstance(bad, tuple) else (bad, None)
        with pytest.raises(RelgraphError, match=message):
            explainer.explain(x, inputs=inputs)
    with pytest.raises(RelgraphError, match="--position"):
        relgraph.compile(exported("gpt2", "eager", "dynamo")[2], rule="attnlrp", position=99, write=False)
    with pytest.raises(RelgraphError, match="--embedding-relevance"):
        relgraph.compile(exported("vit", "eager", "dynamo")[2], rule="attnlrp", embedding_relevance=True,
                         write=False)


def test_check_accounts_layer_by_layer(exported, tmp_path):
    """``relgraph check``'s per-layer table closes on a transformer: the softmax's absorption and the position and
    token-type embeddings' shares are in its bias column."""
    _, feed, path = exported("bert", "eager", "dynamo")
    explainer = tmp_path / "bert.attnlrp.onnx"
    relgraph.compile(path, rule="attnlrp", output=str(explainer))
    three = np.concatenate([feed["input_ids"], feed["input_ids"][::-1][:1]])
    for samples in (feed["input_ids"], three):  # the export's batch of 2, and 3 run as two chunks
        ids = tmp_path / "ids.npy"
        np.save(ids, samples)
        run = subprocess.run([sys.executable, "-m", "relgraph.cli", "check", str(explainer), str(ids)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        rows = [line.split() for line in run.stdout.splitlines()]
        softmax = [r for r in rows if len(r) == 7 and r[1] == "Softmax"]
        assert softmax and all(r[2] == "taylor" and abs(float(r[5])) > 0 for r in softmax)
        leaks = [float(r[6]) for r in rows if len(r) == 7 and r[0] != "node"]
        start = float(run.stdout.split("R_out ")[1].split()[0])
        assert max(map(abs, leaks)) <= 1e-3 * abs(start)
        # the account is of the chunks run: the last sample counts twice in a filled chunk of 2
        filled = samples[[0, 1, 2, 2]] if len(samples) == 3 else samples
        assert ("filled with copies of sample 2" in run.stdout) == (len(samples) == 3)
        out = relgraph.Explainer(str(explainer)).explain(filled)
        np.testing.assert_allclose(start, out["logits"][np.arange(len(filled)), out["target"]].sum(), rtol=1e-5)


@pytest.mark.parametrize("arch,attn", [("bert", "eager"), ("llama", "sdpa")])
def test_triton_target_runs_attention(exported, tmp_path, arch, attn):
    """The triton lowering of an attention block: the linear layers and residual sums as kernels (in Triton's
    interpreter here), the bilinear MatMuls, the softmax rule and the masks as listed torch ops; it reproduces
    onnxruntime on the explainer it was lowered from."""
    pytest.importorskip("triton")
    from relgraph.lowering import compile_triton

    _, feed, path = exported(arch, attn, "dynamo")
    folder = tmp_path / "triton"
    compile_triton(path, str(folder), rule="attnlrp")
    first, *rest = feed
    side = {k: feed[k] for k in rest}
    expected = relgraph.Explainer(str(folder)).explain(feed[first], inputs=side)
    lowered = relgraph.open_explainer(str(folder), kernels="triton")
    assert lowered.plan.kernel_steps(), "no step runs as a kernel"
    got = lowered.explain(feed[first], inputs=side)
    for key in ("relevance", "bias_relevance", "logits"):
        scale = np.abs(expected[key]).max()
        assert np.abs(got[key] - expected[key]).max() <= 1e-4 * scale, key


def test_vit_gamma_rule_map(exported, tmp_path):
    """γ on a ViT's layers with weights by op type (AttnLRP's advice against gradient shattering): the
    projections (MatMuls with weights, run as Gemms on rows) take γ, Q·Kᵀ and A·V (bilinear) keep the uniform rule, and the input + biases + absorbed still
    add up to the logit."""
    _, feed, path = exported("vit", "eager", "dynamo")
    rule_map = tmp_path / "vit-gamma.toml"
    rule_map.write_text('base = "attnlrp"\n[op_types]\nConv = { rule = "gamma", gamma = 0.25 }\n'
                        'MatMul = { rule = "gamma", gamma = 0.05 }\nGemm = { rule = "gamma", gamma = 0.05 }\n')
    result = relgraph.compile(path, rule_map=str(rule_map), output=str(tmp_path / "vit.gamma.onnx"))
    from relgraph.rules import kind_of

    layers = [(kind_of(n), result.relevance.choices[n.name].rule) for n in result.relevance.nodes
              if n.op_type in ("MatMul", "Gemm")]
    assert {rule for kind, rule in layers if kind == "bilinear"} == {"uniform"}
    assert {rule for kind, rule in layers if kind == "affine"} == {"gamma"}
    out = relgraph.Explainer(result.path).explain(feed["pixel_values"], np.array([0, 1]))
    logits = out["logits"][np.arange(2), [0, 1]]
    np.testing.assert_allclose(out["relevance"].reshape(2, -1).sum(1) + out["bias_relevance"], logits, rtol=1e-3,
                               atol=1e-5)


def test_llama_exported_with_batch_one(tmp_path):
    """A decoder exported for one sample (the dynamo export's static shapes): every size-1 axis could be the batch,
    and the per-sample bias sums must still find it; input + biases + absorbed = the next-token logit."""
    model = ref.build("llama", attn="sdpa")
    feed = {"input_ids": ref.inputs("llama", batch=1)["input_ids"]}
    path = export(model, "llama", feed, tmp_path / "llama1.onnx", "dynamo")
    out, _ = explain(path, "attnlrp", feed, None, tmp_path)
    logit = out["logits"][0, out["target"][0]]
    np.testing.assert_allclose(out["relevance"].sum() + out["bias_relevance"][0], logit, rtol=1e-4, atol=1e-6)
    want, _ = ref.relevance(model, "llama", feed, "attnlrp", out["target"])
    rel, _ = per_sample(out["relevance"], want.sum(-1))
    assert rel.max() <= 1e-3


def test_torchvision_vit_legacy_export_with_a_dynamic_batch(exported, tmp_path):
    """torchvision's ``class_token.expand(n, -1, -1)`` in the legacy export with a dynamic batch computes the
    Expand's shape at run time (a Where over Equal(shape, −1)); it is folded to Shape(x)[0:1] and constants, so
    the explainer keeps a dynamic batch and equals the static export's, and any batch size runs."""
    model, feed, static = exported("tv-vit", "eager", "legacy")
    names = list(feed)
    dynamic = str(tmp_path / "tv_vit_dynamic.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(model, "tv-vit", names).eval(), tuple(torch.from_numpy(feed[k]) for k in names),
                          dynamic, input_names=names, output_names=["logits"], dynamo=False, opset_version=18,
                          dynamic_axes={n: {0: "N"} for n in names + ["logits"]})
    x = feed[names[0]]
    for rule in ("gradient", "attnlrp"):
        want, _ = explain(static, rule, feed, 0, tmp_path)
        got, explainer = explain(dynamic, rule, feed, 0, tmp_path)
        rel, _ = per_sample(got["relevance"], want["relevance"])
        assert np.all(rel < 1e-5), (rule, rel)
        three = explainer.explain(np.concatenate([x, x[:1]]), 0)
        np.testing.assert_allclose(three["relevance"][:2], got["relevance"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("keep_functions", [False, True], ids=["portable", "functions"])
@pytest.mark.parametrize("arch,form", [("vit", "dynamo"), ("bert", "legacy"), ("gpt2", "dynamo")])
def test_fixed_batch_export_explains_any_number_of_samples(exported, tmp_path, arch, form, keep_functions):
    """A model exported for batches of 2 spells that batch out in its masks and Expand shapes. Its portable
    explainer is a Scan over chunks of 2 that takes any batch: 1, 3 or 5 samples straight through onnxruntime
    (and OpenVINO where installed), each equal to the float64 reference. The functions form keeps the batch of
    2: ``explain`` runs it in chunks of 2, the last one filled up and trimmed, and ``run`` on another batch is
    refused in one line."""
    model, feed, path = exported(arch, "eager", form)
    first, *rest = feed
    _, explainer = explain(path, "attnlrp", feed, None, tmp_path, keep_functions=keep_functions)
    assert explainer.fixed_batch == (2 if keep_functions else None)
    runtimes = [] if keep_functions else [r for r in ("onnxruntime", "openvino") if r in installed_runtimes()]
    more = ref.inputs(arch, batch=5, seed=7)
    for n in (1, 3, 5):
        part = {k: more[k][:n] for k in feed}
        logits = ref.forward(model, arch, part)
        target = np.argsort(logits, 1)[:, -2]
        want, want_logits = ref.relevance(model, arch, part, "attnlrp", target)
        want = want if arch == "vit" else want.sum(-1)  # tokens: Σ over features
        out = explainer.explain(part[first], target, inputs={k: part[k] for k in rest})
        assert out["relevance"].shape[0] == n
        np.testing.assert_allclose(out["logits"], want_logits, rtol=1e-4, atol=1e-5)
        rel, _ = per_sample(out["relevance"], want)
        assert rel.max() <= 1e-4, (n, rel)
        for runtime in runtimes:  # the ONNX file alone, as deployed
            session = open_session(explainer.path, runtime)
            got = session.run({**{k: part[k].astype(explainer.input_dtypes[k]) for k in feed},
                               "target": target.astype(np.int64)})
            for k, v in out["outputs"].items():
                np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5, err_msg=f"{runtime} {k}")
            rel, _ = per_sample(got["relevance"], want)
            assert rel.max() <= 1e-4, (runtime, n, rel)
    if keep_functions:
        with pytest.raises(relgraph.RelgraphError, match="exactly 2 samples"):
            explainer.run({first: more[first][:3], "target": np.zeros(3, np.int64),
                           **{k: more[k][:3] for k in rest}})
