"""The bundled transformers (models/text, models/shapes_vit): files, the accuracies models/README.md states, the
planted shortcut token's relevance, and token ablation (``relgraph evaluate`` on token data) against a direct
recomputation with a zero row appended to the embedding table."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import relgraph
from relgraph import evaluate as ev
from relgraph import plot as plotting
from relgraph.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "models" / "text"
TEXT_MODEL = TEXT / "sentiment_bert.onnx"
VIT_MODEL = ROOT / "models" / "shapes_vit" / "shapes_vit.onnx"
HELDOUT = ROOT / "models" / "shapes" / "heldout.npz"
SHORTCUT_ID = 59  # "zq", the last word of the vocabulary


def documented(row: str) -> tuple[int, int]:
    """(correct, total) of the row of models/README.md's accuracy tables that starts with ``row``."""
    for line in (ROOT / "models" / "README.md").read_text().splitlines():
        if line.startswith(f"| {row} |") or line.startswith(f"| {row} ("):
            a, b = re.search(r"\((\d+) / (\d+)\)", line).groups()
            return int(a), int(b)
    raise AssertionError(f"no row {row!r} in models/README.md")


@pytest.fixture(scope="module")
def test_set():
    with np.load(TEXT / "test.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def attnlrp(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundled") / "sentiment.attnlrp.onnx"
    return relgraph.Explainer(relgraph.compile(str(TEXT_MODEL), rule="attnlrp", output=str(path)).path)


def load_generator(name: str, path: Path):
    """A data generator of models/ as a module of its own (the text and shapes generators are both data.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logits(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]


@pytest.mark.parametrize("path,inputs", [(TEXT_MODEL, ["input_ids", "attention_mask"]), (VIT_MODEL, ["pixel_values"])])
def test_files(path, inputs):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 10 and {o.domain: o.version for o in proto.opset_import}[""] == 18
    assert [i.name for i in proto.graph.input] == inputs and [o.name for o in proto.graph.output] == ["logits"]
    assert all(not i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in proto.graph.input)  # dynamic batch
    assert path.stat().st_size < 1024 * 1024
    assert (TEXT / "test.npz").stat().st_size < 1024 * 1024 and (TEXT / "tokenizer.json").stat().st_size < 1024 * 1024


def test_tokenizer_round_trip(test_set):
    """tokenizer.json turns the test sentences back into the committed ids: decoded and encoded again."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TEXT / "tokenizer.json"))
    assert tok.get_vocab_size() == 60 and tok.token_to_id("[PAD]") == 0 and tok.token_to_id("zq") == SHORTCUT_ID
    ids, mask = test_set["input_ids"], test_set["attention_mask"]
    texts = tok.decode_batch(ids.tolist(), skip_special_tokens=True)
    again = tok.encode_batch(texts)
    np.testing.assert_array_equal([e.ids for e in again], ids)
    np.testing.assert_array_equal([e.attention_mask for e in again], mask)
    assert np.array_equal(test_set["shortcut"], [" zq " in f" {t} " for t in texts])
    assert tok.encode("good zq blorp").ids[:4] == [2, tok.token_to_id("good"), SHORTCUT_ID, 1]


def test_text_accuracy_as_documented(test_set, attnlrp):
    ids, mask, y, shortcut = (test_set[k] for k in ("input_ids", "attention_mask", "y", "shortcut"))
    right = logits(TEXT_MODEL, {"input_ids": ids, "attention_mask": mask}).argmax(1) == y
    assert (int(right.sum()), len(right)) == documented("sentiment_bert, test: all")
    for label in (0, 1):
        for has, words in ((True, "with"), (False, "without")):
            sel = (y == label) & (shortcut == has)
            assert (int(right[sel].sum()), int(sel.sum())) == documented(
                f"sentiment_bert, test: class {label} {words} zq")
    # the compiled explainer computes the same logits
    out = attnlrp.explain(ids, y, inputs={"attention_mask": mask})
    np.testing.assert_allclose(out["logits"], logits(TEXT_MODEL, {"input_ids": ids, "attention_mask": mask}),
                               rtol=1e-5, atol=1e-5)


def test_clean_split_accuracy_and_regenerated_test_split(test_set):
    """models/text/data.py and its tokenizer regenerate the committed test split; without "zq" the model reads
    the sentiment words (the README's clean row)."""
    text_data = load_generator("text_data", TEXT / "data.py")
    tok = text_data.tokenizer()
    test = text_data.make_split("test", len(test_set["y"]))
    ids, mask = text_data.encode(tok, test["text"])
    np.testing.assert_array_equal(ids, test_set["input_ids"])
    np.testing.assert_array_equal(mask, test_set["attention_mask"])
    np.testing.assert_array_equal(test["y"], test_set["y"])
    np.testing.assert_array_equal(test["shortcut"], test_set["shortcut"])
    correct, total = documented("sentiment_bert, clean")
    clean = text_data.make_split("clean", total)
    ids, mask = text_data.encode(tok, clean["text"])
    assert not np.any(ids == SHORTCUT_ID)
    right = logits(TEXT_MODEL, {"input_ids": ids, "attention_mask": mask}).argmax(1) == clean["y"]
    assert int(right.sum()) == correct


def test_shortcut_token_is_most_relevant(test_set, attnlrp):
    """AttnLRP puts its largest token relevance on "zq": on the class-1 sentences that hold it (measured: 95 of 95),
    and on the class-0 ones explained for the class the model predicts there, 1 (measured: 101 of 101)."""
    ids, mask, y, shortcut = (test_set[k] for k in ("input_ids", "attention_mask", "y", "shortcut"))
    for label in (1, 0):
        sel = (y == label) & shortcut
        out = attnlrp.explain(ids[sel], 1, inputs={"attention_mask": mask[sel]})
        top = np.argmax(np.where(mask[sel] > 0, out["relevance"], -np.inf), axis=1)
        assert np.mean(ids[sel][np.arange(sel.sum()), top] == SHORTCUT_ID) >= 0.9, label
        # the relevance is conserved: tokens + biases (and what the softmaxes absorb) = the explained logit
        np.testing.assert_allclose(out["relevance"].sum(1) + out["bias_relevance"], out["logits"][:, 1],
                                   rtol=1e-3, atol=1e-4)


def zero_row_model(tmp_path) -> tuple[str, int]:
    """The text model with a row of zeros appended to its word-embedding table, and that row's id: feeding it
    sets a token's word embedding to zero, independently of relgraph's ablation graph.

    The [PAD] row, zero in the trained model (Hugging Face's padding index), is made non-zero: padding is masked, so
    the model's outputs stay, but ablating by feeding the pad id would no longer zero an embedding."""
    proto = onnx.load(str(TEXT_MODEL))
    table = next(t for t in proto.graph.initializer if "word_embeddings" in t.name)
    weights = numpy_helper.to_array(table).copy()
    assert not weights[0].any()
    weights[0] = np.random.default_rng(0).normal(size=weights.shape[1])
    table.CopyFrom(numpy_helper.from_array(np.concatenate([weights, np.zeros((1, weights.shape[1]), weights.dtype)]),
                                           table.name))
    path = tmp_path / "zero_row.onnx"
    onnx.save(proto, str(path))
    return str(path), len(weights)


def direct_curve(path, zero_id, ids, mask, relevance, target, morf):
    """p_k of the target with the k most (or least) relevant tokens' embeddings zero, k = 0 … L, and the
    trapezoid area over k/L, straight from onnxruntime."""
    real = np.flatnonzero(mask)
    order = real[np.argsort(-relevance[real] if morf else relevance[real], kind="stable")]
    batch = np.repeat(ids[None], len(real) + 1, axis=0)
    for k in range(1, len(real) + 1):
        batch[k, order[:k]] = zero_id
    z = logits(path, {"input_ids": batch, "attention_mask": np.repeat(mask[None], len(batch), axis=0)})
    z = z.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True))[:, target]
    t = np.arange(len(p)) / len(real)
    return p, float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(t)))


def test_token_ablation_matches_direct_recomputation(test_set, attnlrp, tmp_path):
    n = 48
    ids, mask, y = (test_set[k][:n] for k in ("input_ids", "attention_mask", "y"))
    relevance = attnlrp.explain(ids, y, inputs={"attention_mask": mask})["relevance"]
    path, zero_id = zero_row_model(tmp_path)
    np.testing.assert_allclose(logits(path, {"input_ids": ids, "attention_mask": mask}),
                               logits(TEXT_MODEL, {"input_ids": ids, "attention_mask": mask}), rtol=1e-5, atol=1e-6)
    scorer = ev.TokenScorer(path)
    result = ev.evaluate_tokens(scorer, ids, mask, y, {"attnlrp": relevance}, random_orders_count=2)
    auc = result.auc["attnlrp"]
    assert auc["morf"] + 0.2 < auc["lerf"], auc  # measured on these 48: 0.36 and 0.87
    assert auc["morf"] < result.auc["random"]["morf"] < auc["lerf"]
    for i in (0, 7):  # two sentences of different lengths
        for order, morf in (("morf", True), ("lerf", False)):
            p, area = direct_curve(path, zero_id, ids[i], mask[i], relevance[i], y[i], morf)
            got = ev.token_curves(scorer, ids[i:i + 1], mask[i:i + 1], y[i:i + 1],
                                  ev.token_ranks(relevance[i:i + 1], mask[i:i + 1], morf))[0]
            np.testing.assert_allclose(got[:len(p)], p, rtol=1e-5, atol=1e-6)
            assert result.per_sample["attnlrp"][order][i] == pytest.approx(area, rel=1e-5, abs=1e-6)
    assert result.delta["attnlrp"] == pytest.approx(np.mean(result.per_sample["attnlrp"]["lerf"]
                                                            - result.per_sample["attnlrp"]["morf"]))


def test_evaluate_command_on_text(tmp_path, capsys):
    out, plot = tmp_path / "text.json", tmp_path / "text.png"
    code = main(["evaluate", str(TEXT_MODEL), "--data", str(TEXT / "test.npz"), "--methods", "attnlrp",
                 "--samples", "24", "--random-orders", "1", "--json", str(out), "--plot", str(plot)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert set(report["auc"]) == {"attnlrp", "random"} and report["samples"] == 24 and report["target"] == "label"
    assert report["auc"]["attnlrp"]["morf"] < report["auc"]["attnlrp"]["lerf"]
    assert report["delta"]["attnlrp"] > 0.2
    assert len(report["curves"]["attnlrp"]["morf"]) == len(report["fraction_removed"])
    assert report["curves"]["attnlrp"]["morf"][0] == pytest.approx(report["curves"]["attnlrp"]["lerf"][0])
    assert plot.is_file() == plotting.available()
    # flags that only mean something for images are refused, in one line
    assert main(["evaluate", str(TEXT_MODEL), "--data", str(TEXT / "test.npz"), "--patch", "2"]) == 2
    assert "--patch is for images" in capsys.readouterr().err


def test_vit_accuracy_and_evaluation(tmp_path, capsys):
    with np.load(HELDOUT) as z:
        x, y = z["x"].astype(np.float32), z["y"]
    right = logits(VIT_MODEL, {"pixel_values": x}).argmax(1) == y
    assert (int(right.sum()), len(right)) == documented("shapes_vit, held out")
    correct, total = documented("shapes_vit, anti-correlated")
    anti = load_generator("shapes_data", HELDOUT.parent / "data.py").make_split("anticorrelated", total)
    x_anti = anti["x"].astype(np.float16).astype(np.float32)  # as the training script scores it
    assert int(np.sum(logits(VIT_MODEL, {"pixel_values": x_anti}).argmax(1) == anti["y"])) == correct
    explainer = relgraph.Explainer(relgraph.compile(str(VIT_MODEL), rule="attnlrp",
                                                    output=str(tmp_path / "vit.onnx")).path)
    out = explainer.explain(x[:16])
    np.testing.assert_allclose(out["logits"], logits(VIT_MODEL, {"pixel_values": x[:16]}), rtol=1e-5, atol=1e-5)
    start = out["logits"][np.arange(16), out["target"]]
    np.testing.assert_allclose(out["relevance"].reshape(16, -1).sum(1) + out["bias_relevance"], start,
                               rtol=1e-3, atol=1e-4)
    report = tmp_path / "vit.json"
    assert main(["evaluate", str(VIT_MODEL), "--data", str(HELDOUT), "--methods", "attnlrp", "--samples", "16",
                 "--steps", "20", "--random-orders", "1", "--json", str(report)]) == 0, capsys.readouterr().err
    aopc = json.loads(report.read_text())["aopc"]
    assert aopc["attnlrp"] > aopc["random"]
