"""Text in, heatmap out: a WordLevel tokenizer over the 50 ids of the tiny BERT (tests/transformer_reference.py)
stored with ``--tokenizer``, texts explained through the API, the command line and ``relgraph serve``.

Every path is checked against the explainer run directly in onnxruntime on ids and an attention mask encoded
here by hand (a dict lookup, sharing no code with relgraph.text), token by token; the direct run is itself tied
to the float64 AttnLRP reference of transformer_reference.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
onnxruntime = pytest.importorskip("onnxruntime")

import relgraph  # noqa: E402
from relgraph.cli import main  # noqa: E402
from relgraph.errors import RelgraphError  # noqa: E402
from relgraph.explainer import Explainer, open_explainer  # noqa: E402
from relgraph.heatmap import read_png  # noqa: E402
from relgraph.text import NEGATIVE, POSITIVE, TOKENIZER_KEY, TextEncoder, explain_text  # noqa: E402

import transformer_reference as ref  # noqa: E402
from serve_client import ROOT, request  # noqa: E402
from test_transformers import Wrapped  # noqa: E402

SEQ = ref.inputs("bert")["input_ids"].shape[1]  # 8: the exported model's fixed sequence length
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
VOCAB = {**SPECIAL, **{f"w{i}": i for i in range(len(SPECIAL), ref.VOCAB)}}
TEXTS = ["w5 w17 <script>alert(1)</script>", "w9 w10 w11 w12 w13 w14 w15 w16 w17 w18", "w40"]
LIMIT = 1e-12  # ε of the ε → 0 limit the reference is written in


def tokenizer_json(vocab: dict) -> str:
    """BERT-style: split on whitespace only (so "<script>…" stays one token), [CLS] … [SEP] around the text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tk.to_str()


CORPUS = ["abc abd bcd cab dab", "bad cad dcba abcd", "the dab and the cab", "aabb ccdd abab cdcd"] * 20


def trained_tokenizer(kind: str) -> str:
    """A real subword tokenizer trained on a small corpus to fit the model's 50 ids: BERT's WordPiece (its
    normalizer, pre-tokenizer and ``##`` continuations) or BPE, [CLS] … [SEP] around the text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    special = list(SPECIAL)
    if kind == "wordpiece":
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.normalizer = normalizers.BertNormalizer(lowercase=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=ref.VOCAB, special_tokens=special)
    else:
        tk = Tokenizer(models.BPE(unk_token="[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=ref.VOCAB, special_tokens=special)
    tk.train_from_iterator(CORPUS, trainer)
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tk.to_str()


def by_hand(texts) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """ids and mask [N, SEQ] from the vocabulary dict: [CLS] words [SEP], cut to SEQ keeping [SEP], padded with 0."""
    ids, mask, lengths = np.zeros((len(texts), SEQ), np.int64), np.zeros((len(texts), SEQ), np.int64), []
    for n, text in enumerate(texts):
        words = [VOCAB.get(w, VOCAB["[UNK]"]) for w in text.split()][:SEQ - 2]
        row = [VOCAB["[CLS]"], *words, VOCAB["[SEP]"]]
        ids[n, :len(row)], mask[n, :len(row)] = row, 1
        lengths.append(len(row))
    return ids, mask, lengths


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "relgraph.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The BERT exported with a dynamic batch axis, its tokenizer, and its attnlrp explainer with the tokenizer."""
    folder = tmp_path_factory.mktemp("text")
    model = ref.build("bert")
    feed = ref.inputs("bert")
    names = list(feed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(model, "bert", names).eval(), tuple(torch.from_numpy(feed[k]) for k in names),
                          str(folder / "bert.onnx"), input_names=names, output_names=["logits"], dynamo=False,
                          opset_version=18, dynamic_axes={k: {0: "N"} for k in [*names, "logits"]})
    (folder / "tokenizer.json").write_text(tokenizer_json(VOCAB))
    explainer = str(folder / "bert.text.onnx")
    run = run_cli("compile", folder / "bert.onnx", "--rule", "attnlrp", "--epsilon", LIMIT, "--tokenizer",
                  folder / "tokenizer.json", "-o", explainer)
    assert run.returncode == 0, run.stderr
    return {"model": model, "onnx": str(folder / "bert.onnx"), "tokenizer": str(folder / "tokenizer.json"),
            "explainer": explainer, "folder": folder}


def direct(path, ids, mask, target=None):
    """The explainer in its own onnxruntime session, fed by hand."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    t = np.full(len(ids), -1, np.int64) if target is None else np.broadcast_to(np.int64(target), len(ids)).copy()
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"input_ids": ids, "attention_mask": mask, "target": t})))
    out["target"] = np.where(t < 0, out["logits"].argmax(1), t)
    return out


def test_encoding_and_the_stored_tokenizer(files):
    explainer = Explainer(files["explainer"])
    assert explainer.metadata[TOKENIZER_KEY] == open(files["tokenizer"]).read()
    encoded = TextEncoder.of(explainer).encode(TEXTS)
    ids, mask, lengths = by_hand(TEXTS)
    np.testing.assert_array_equal(encoded.input_ids, ids)
    np.testing.assert_array_equal(encoded.attention_mask, mask)
    assert [len(t) for t in encoded.tokens] == lengths
    # unknown words are shown as written, special tokens by name, the long text cut to SEQ tokens
    assert encoded.tokens[0] == ["[CLS]", "w5", "w17", "<script>alert(1)</script>", "[SEP]"]
    assert encoded.tokens[1][-2:] == ["w14", "[SEP]"] and encoded.input_ids[1, -1] == VOCAB["[SEP]"]

    # offsets count characters, not bytes: words after non-ASCII text are cut where they stand
    assert TextEncoder.of(explainer).encode("🙂 héllo w5").tokens[0] == ["[CLS]", "🙂", "héllo", "w5", "[SEP]"]

    # the tokenizer's own pad id pads
    tk = tokenizers.Tokenizer.from_str(tokenizer_json(VOCAB))
    tk.enable_padding(pad_id=7, pad_token="w7")
    encoded = TextEncoder(tk, SEQ).encode("w5")
    np.testing.assert_array_equal(encoded.input_ids[0], [2, 5, 3, 7, 7, 7, 7, 7])
    np.testing.assert_array_equal(encoded.attention_mask[0], [1, 1, 1, 0, 0, 0, 0, 0])


def test_api_per_token_relevance(files):
    """explain_text's relevance per token = the explainer on the hand-encoded ids = the float64 reference."""
    explainer = Explainer(files["explainer"])
    ids, mask, lengths = by_hand(TEXTS)
    target = np.array([0, 2, 1])
    items = explain_text(explainer, TEXTS, target)
    want = direct(files["explainer"], ids, mask, target)
    reference, _ = ref.relevance(files["model"], "bert", {"input_ids": ids, "attention_mask": mask}, "attnlrp",
                                 target)
    reference = reference.sum(-1)  # one value per token: the sum over the hidden dimension
    for n, item in enumerate(items):
        k = lengths[n]
        assert len(item.tokens) == len(item.relevance) == k
        np.testing.assert_allclose(item.relevance, want["relevance"][n, :k], rtol=1e-6, atol=1e-9)
        rel = np.linalg.norm(item.relevance - reference[n, :k]) / np.linalg.norm(reference[n, :k])
        assert rel <= 1e-3, (n, rel)  # float32 sums over the hidden dimension cancel: 1e-4 is test_transformers'
                                      # bound on [N, S, D]
        assert (item.target, item.predicted) == (target[n], int(want["logits"][n].argmax()))
        assert item.logit == pytest.approx(float(want["logits"][n, target[n]]), rel=1e-6)
    # the mask reaches the model: without it, the padded text's tokens get other relevance
    unmasked = direct(files["explainer"], ids, np.ones_like(mask), target)
    k = lengths[2]
    assert np.abs(unmasked["relevance"][2, :k] - items[2].relevance).max() > 1e-3 * np.abs(items[2].relevance).max()


def test_triton_target_keeps_the_tokenizer(files, tmp_path):
    """``compile --target triton --tokenizer``: the folder's explainer holds the tokenizer, and its launch plan
    (Triton's interpreter here) explains texts as the ONNX explainer does."""
    folder = tmp_path / "bert.triton"
    run = run_cli("compile", files["onnx"], "--rule", "attnlrp", "--epsilon", LIMIT, "--tokenizer",
                  files["tokenizer"], "--target", "triton", "-o", folder)
    assert run.returncode == 0, run.stderr
    explainer = open_explainer(folder)
    assert type(explainer).__name__ == "TritonExplainer"
    assert explainer.metadata[TOKENIZER_KEY] == open(files["tokenizer"]).read()
    target = np.array([0, 2, 1])
    want = explain_text(Explainer(files["explainer"]), TEXTS, target)
    for got, expected in zip(explain_text(explainer, TEXTS, target), want):
        assert got.tokens == expected.tokens
        np.testing.assert_allclose(got.relevance, expected.relevance, rtol=1e-4, atol=1e-6)


# "Dabba abcd": WordPiece lowercases and splits dab ##ba; this BPE keeps the case ("D" is unknown) and merges
# ab, ba; each piece is shown as its span of the text as written
@pytest.mark.parametrize("kind, shown", [("wordpiece", ["[CLS]", "Dab", "ba", "abcd", "[SEP]"]),
                                         ("bpe", ["[CLS]", "D", "ab", "ba", "abcd", "[SEP]"])])
def test_subword_tokenizers(files, tmp_path, kind, shown):
    """A trained WordPiece or BPE tokenizer: the ids are the tokenizers library's own (cut to the model's
    sequence, padded), a word split into pieces shows each piece as its span of the text, and the relevance per
    token is the explainer's on those ids."""
    import tokenizers

    path = tmp_path / f"{kind}.json"
    path.write_text(trained_tokenizer(kind))
    explainer = Explainer(relgraph.compile(files["onnx"], rule="attnlrp", epsilon=LIMIT, tokenizer=str(path),
                                           output=str(tmp_path / f"{kind}.onnx")).path)
    texts = ["Dabba abcd", "the cab and the dab bad cad abab", "zz"]
    library = tokenizers.Tokenizer.from_file(str(path))
    library.enable_truncation(SEQ)
    library.enable_padding(length=SEQ, pad_id=0)
    expected = library.encode_batch(texts)
    encoded = TextEncoder.of(explainer).encode(texts)
    np.testing.assert_array_equal(encoded.input_ids, [e.ids for e in expected])
    np.testing.assert_array_equal(encoded.attention_mask, [e.attention_mask for e in expected])
    assert encoded.tokens[0] == shown
    unknown = encoded.tokens[2][1:-1]  # out of the alphabet: [UNK], shown as written
    assert "".join(unknown) == "zz" and set(encoded.input_ids[2, 1:1 + len(unknown)]) == {SPECIAL["[UNK]"]}
    assert expected[1].ids[-1] == 3  # cut to the sequence, [SEP] kept
    target = np.array([1, 0, 2])
    want = direct(explainer.path, encoded.input_ids, encoded.attention_mask, target)
    for n, item in enumerate(explain_text(explainer, texts, target)):
        k = len(item.tokens)
        assert k == sum(expected[n].attention_mask)
        np.testing.assert_allclose(item.relevance, want["relevance"][n, :k], rtol=1e-6, atol=1e-9)


TOKEN_LINE = re.compile(r"^\s+(\d+) (.+?)\s+([+-]\S+)$")


def test_cli_prints_tokens_and_writes_html_and_png(files, tmp_path):
    ids, mask, lengths = by_hand(TEXTS)
    want = direct(files["explainer"], ids, mask, 1)
    page = tmp_path / "out.html"
    run = run_cli("explain", files["explainer"], *[a for t in TEXTS for a in ("--text", t)], "--target", 1,
                  "-o", page)
    assert run.returncode == 0, run.stderr
    blocks = run.stdout.split("text ")[1:]
    assert len(blocks) == len(TEXTS)
    for n, block in enumerate(blocks):
        rows = [TOKEN_LINE.match(line) for line in block.splitlines()[1:] if TOKEN_LINE.match(line)]
        assert [int(r[1]) for r in rows] == list(range(lengths[n]))
        np.testing.assert_allclose([float(r[3]) for r in rows], want["relevance"][n, :lengths[n]], rtol=2e-5,
                                   atol=1e-9)
        assert f"explained 1 (logit {want['logits'][n, 1]:.4g})" in block.splitlines()[0]

    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    shown = re.findall(r'<span class="token" style="background: rgba\((\d+), (\d+), (\d+), ([\d.]+)\)" '
                       r'title="R = ([^"]+)">', html)
    assert len(shown) == sum(lengths)  # no padding token shown
    first = want["relevance"][0, :lengths[0]]
    for (r, g, b, alpha, value), expected in zip(shown, first):
        assert (int(r), int(g), int(b)) == (POSITIVE if expected > 0 else NEGATIVE)
        assert float(alpha) == pytest.approx(abs(expected) / np.abs(first).max(), abs=1e-3)
        assert float(value) == pytest.approx(expected, rel=1e-3)

    picture = tmp_path / "out.png"
    run = run_cli("explain", files["explainer"], "--text", TEXTS[0], "-o", picture)
    assert run.returncode == 0, run.stderr
    pixels = read_png(picture)
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.shape[0] > 40
    # the token of largest |R| is drawn in its sign's full colour
    want = direct(files["explainer"], ids[:1], mask[:1])["relevance"][0, :lengths[0]]
    full = POSITIVE if want[np.abs(want).argmax()] > 0 else NEGATIVE
    assert (pixels.reshape(-1, 3) == full).all(1).sum() > 100


def test_cli_refusals(files, tmp_path, capsys):
    def refused(*args, match):  # in this process: the same main() the command runs, without its start-up time
        capsys.readouterr()
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err

    refused("explain", files["explainer"], "--text", "w5", "-o", tmp_path / "out.npy", match="use .html or .png")
    refused("explain", files["explainer"], tmp_path / "ids.npy", "--text", "w5", match="not both")
    bare = relgraph.compile(files["onnx"], rule="attnlrp", output=str(tmp_path / "bare.onnx")).path
    refused("explain", bare, "--text", "w5", match="--tokenizer")
    big = tmp_path / "big.json"
    big.write_text(tokenizer_json({**VOCAB, "w50": 50}))
    refused("compile", files["onnx"], "--tokenizer", big, "-o", tmp_path / "x.onnx",
            match="ids up to 50, but the model's embedding table has 50 rows")
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"model": 1}')
    refused("compile", files["onnx"], "--tokenizer", garbage, "-o", tmp_path / "x.onnx",
            match="not a Hugging Face tokenizers file")
    refused("compile", files["onnx"], "--tokenizer", tmp_path / "missing.json", "-o", tmp_path / "x.onnx",
            match="tokenizer not found")
    refused("compile", ROOT / "models" / "digits" / "digits_cnn.onnx", "--tokenizer", files["tokenizer"],
            "-o", tmp_path / "x.onnx", match="--tokenizer applies to models fed token ids")
    with pytest.raises(RelgraphError, match="embedding table has 50 rows"):  # the same check through the API
        relgraph.compile(files["onnx"], rule="attnlrp", tokenizer=str(big), write=False)
    assert TOKENIZER_KEY not in {p.key for p in relgraph.compile(files["onnx"], rule="attnlrp", write=False)
                                 .proto.metadata_props}

    # the token explainer's other outputs still work from ids
    ids, mask, _ = by_hand(TEXTS)
    np.save(tmp_path / "ids.npy", ids)
    run = run_cli("explain", files["explainer"], tmp_path / "ids.npy", "-o", tmp_path / "r.npy")
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), direct(files["explainer"], ids, np.ones_like(mask))
                               ["relevance"], rtol=1e-6, atol=1e-9)


def test_serve_text(files):
    from relgraph.serve import ExplainServer

    ids, mask, lengths = by_hand(TEXTS)
    srv = ExplainServer(Explainer(files["explainer"]), "127.0.0.1", 0, max_request_bytes=4096).start()
    try:
        def post(doc, query=""):
            status, _, body = request(srv.url, "POST", "/explain" + query, json.dumps(doc).encode(),
                                      {"Content-Type": "application/json"})
            return status, json.loads(body)

        want = direct(files["explainer"], ids, mask, 2)
        status, doc = post({"text": TEXTS, "target": 2})
        assert status == 200, doc
        assert doc["target"] == [2, 2, 2] and doc["predicted"] == want["logits"].argmax(1).tolist()
        np.testing.assert_allclose(doc["logits"], want["logits"], rtol=1e-6)
        for n in range(len(TEXTS)):
            assert len(doc["tokens"][n]) == len(doc["relevance"][n]) == lengths[n]
            np.testing.assert_allclose(doc["relevance"][n], want["relevance"][n, :lengths[n]], rtol=1e-6, atol=1e-9)
        status, one = post({"text": TEXTS[0]}, "?heatmap=1")
        assert status == 200 and one["tokens"] == doc["tokens"][0] and one["heatmap"].startswith("data:image/png")
        np.testing.assert_allclose(one["relevance"], direct(files["explainer"], ids[:1], mask[:1])["relevance"]
                                   [0, :lengths[0]], rtol=1e-6, atol=1e-9)

        for bad, code in (({"text": 5}, 400), ({"text": []}, 400), ({"text": ["w5", 3]}, 400),
                          ({"text": "w5", "target": 9}, 400), ({"text": "w5 " * 2000}, 413)):
            status, answer = post(bad)
            assert status == code and "error" in answer, (bad, status, answer)
        # token ids as JSON stay integers (the mask then defaults to ones)
        status, answer = post({"input": ids.tolist(), "target": 2})
        assert status == 200, answer
        np.testing.assert_allclose(answer["relevance"], direct(files["explainer"], ids, np.ones_like(mask), 2)
                                   ["relevance"], rtol=1e-6, atol=1e-9)
        status, _, body = request(srv.url, "GET", "/metadata")
        meta = json.loads(body)
        assert meta["text"] is True and meta["tokens"] is True
        status, _, page = request(srv.url, "GET", "/")
        assert b'id="text"' in page
    finally:
        srv.close()

    bare = relgraph.compile(files["onnx"], rule="attnlrp", output=str(files["folder"] / "no_tokenizer.onnx")).path
    srv = ExplainServer(Explainer(bare), "127.0.0.1", 0).start()
    try:
        status, _, body = request(srv.url, "POST", "/explain", b'{"text": "w5"}', {"Content-Type": "application/json"})
        assert status == 400 and "--tokenizer" in json.loads(body)["error"]
        assert json.loads(request(srv.url, "GET", "/metadata")[2])["text"] is False
    finally:
        srv.close()


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")
def test_page_text_box(files):
    """The page of a text explainer: type, explain, see each token shaded with the direct call's relevance; the
    text's markup is shown, never run."""
    from playwright.sync_api import sync_playwright

    from relgraph.serve import ExplainServer

    ids, mask, lengths = by_hand(TEXTS[:1])
    want = direct(files["explainer"], ids, mask)["relevance"][0, :lengths[0]]
    srv = ExplainServer(Explainer(files["explainer"]), "127.0.0.1", 0).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            try:
                page = browser.new_page()
                dialogs = []
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.goto(srv.url + "/")
                page.wait_for_selector("body.text #text", state="visible", timeout=20000)
                page.fill("#text", TEXTS[0])
                page.click("#explain-text")
                page.wait_for_selector("body[data-done='1']", timeout=20000)
                spans = page.eval_on_selector_all("#tokens span", "s => s.map(e => [e.textContent, e.title, "
                                                                  "e.style.background])")
                image_hidden = not page.is_visible("#file")
            finally:
                browser.close()
    finally:
        srv.close()
    assert image_hidden and not dialogs
    assert [s[0] for s in spans] == ["[CLS]", "w5", "w17", "<script>alert(1)</script>", "[SEP]"]
    np.testing.assert_allclose([float(s[1].removeprefix("R = ")) for s in spans], want, rtol=1e-3)
    for (_, _, background), r in zip(spans, want):  # at opacity 1 the browser writes rgb(…)
        colour = tuple(map(int, re.match(r"rgba?\((\d+), (\d+), (\d+)", background).groups()))
        assert colour == (POSITIVE if r > 0 else NEGATIVE)
