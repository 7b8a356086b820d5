"""Text in, heatmap out: a token explainer's stored tokenizer, and relevance drawn over the tokens.

``relgraph compile MODEL --tokenizer tokenizer.json`` stores a Hugging Face ``tokenizers`` file (its JSON text)
in the explainer's metadata under :data:`TOKENIZER_KEY`. Text is then encoded here to the explainer's input
``[N, S]``: the tokenizer's own truncation to S tokens (it knows which special tokens it adds), then padding on
the right with the tokenizer's pad id (0 where it names none) and an attention mask of 1 on the tokens, 0 on the
padding. The relevance of padding is never shown.

Rendering: each shown token i of a text gets the colour of the sign of its relevance R_i (red positive, blue
negative) at opacity

    α_i = |R_i| / max_j |R_j|      (j over the text's shown tokens; α = 0 for a text whose R is all 0)

as HTML (every piece of text escaped: tokens, labels and the text itself come from outside) or as a PNG
(Pillow: the tokens laid out in lines, each box blended over white, ``(1 − α)·white + α·colour``).

The ``tokenizers`` library is the ``[text]`` extra: nothing here imports it before it is needed.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass

import numpy as np

from .errors import RelgraphError, require
from .heatmap import pillow

TOKENIZER_KEY = "relgraph.tokenizer"
TEXT_STACK = ("tokenizers",)
TEXT_OUTPUTS = (".html", ".png")
POSITIVE, NEGATIVE = (198, 40, 40), (31, 95, 191)  # the page's red and blue
PNG_WIDTH = 900  # pixels; tokens wrap onto new lines within it
FONT_SIZE = 16


# ------------------------------------------------------------------------------------------- tokenizer


def parse_tokenizer(text: str, where: str):
    """A ``tokenizers.Tokenizer`` from its JSON text, or a one-line error naming ``where`` it came from."""
    require(TEXT_STACK, "text input (--tokenizer, --text)", extra="text")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # the Rust parser's errors carry no common type
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RelgraphError(f"{where} is not a Hugging Face tokenizers file: {reason}") from None


def read_tokenizer(path) -> str:
    """The JSON text of a ``tokenizer.json``, checked to be one the ``tokenizers`` library reads."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RelgraphError(f"tokenizer not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RelgraphError(f"cannot read tokenizer {path}: {getattr(exc, 'strerror', None) or exc}") from None
    parse_tokenizer(text, path)
    return text


def check_vocabulary(text: str, vocabulary: int | None, where: str) -> None:
    """Every id the tokenizer can produce (its vocabulary and added tokens) must index the embedding table."""
    ids = parse_tokenizer(text, where).get_vocab(with_added_tokens=True).values()
    top = max(ids, default=-1)
    if vocabulary is not None and top >= vocabulary:
        raise RelgraphError(f"{where} produces token ids up to {top}, but the model's embedding table has "
                            f"{vocabulary} rows: it is not this model's tokenizer")


@dataclass
class Encoded:
    """Texts as the explainer takes them: ``input_ids`` and ``attention_mask`` [N, S] (int64), and the
    tokens shown for each text (the first ``len(tokens[n])`` positions; the rest is padding)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    tokens: list[list[str]]


class TextEncoder:
    """A token explainer's stored tokenizer, encoding to its sequence length ``length`` (None: the longest
    text's)."""

    def __init__(self, tokenizer, length: int | None):
        self.tokenizer, self.length = tokenizer, length
        padding = tokenizer.padding
        self.pad_id = int(padding["pad_id"]) if padding else 0
        tokenizer.no_padding()  # padding is ours: to the explainer's length, with a mask we build
        if length is not None:
            tokenizer.enable_truncation(length)

    @classmethod
    def of(cls, explainer, name: str | None = None) -> "TextEncoder":
        """The encoder stored in ``explainer`` (a one-line error for a model that takes no text, which calls
        the explainer ``name``, by default its path)."""
        name = name or explainer.path
        if not explainer.tokens:
            raise RelgraphError(f"{name} explains its input '{explainer.input_name}' itself, not token ids: text "
                                "input needs a model fed token ids")
        text = explainer.metadata.get(TOKENIZER_KEY)
        if text is None:
            raise RelgraphError(f"{name} has no tokenizer: compile the model with --tokenizer tokenizer.json to "
                                "explain text")
        return cls(parse_tokenizer(text, f"{name} ({TOKENIZER_KEY})"), explainer.input_shape[1])

    def encode(self, texts) -> Encoded:
        """``texts`` (a string or a list of strings) → ids and mask [N, S], truncated and right-padded."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise RelgraphError("text input must be a string or a non-empty list of strings")
        encodings = self.tokenizer.encode_batch(texts)
        length = self.length or max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), length), self.pad_id, np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        tokens = []
        for n, (text, e) in enumerate(zip(texts, encodings)):
            k = len(e.ids)
            ids[n, :k] = e.ids
            mask[n, :k] = 1
            # the text's own characters where the token has a span in it; special tokens by name
            tokens.append([text[a:b] if b > a else token for token, (a, b) in zip(e.tokens, e.offsets)])
        return Encoded(ids, mask, tokens)


# ------------------------------------------------------------------------------------------- explain


@dataclass
class TokenRelevance:
    """One explained text: its shown tokens, their relevance, the predicted and explained classes."""

    text: str
    tokens: list[str]
    relevance: np.ndarray
    predicted: int
    target: int
    logit: float
    bias_relevance: float


def explain_text(explainer, texts, target=None, *, batch_size: int | None = 64,
                 encoder: TextEncoder | None = None) -> list[TokenRelevance]:
    """Encode ``texts`` with the explainer's tokenizer, explain them (``attention_mask`` from the encoding,
    where the model takes one) and split the relevance back onto each text's tokens."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    encoded = (encoder or TextEncoder.of(explainer)).encode(texts)
    out = explainer.explain(encoded.input_ids, target, batch_size=batch_size, inputs=side_inputs(explainer, encoded))
    return token_relevance(texts, encoded, out)


def side_inputs(explainer, encoded: Encoded) -> dict:
    """The encoding's attention mask, for a model that takes one (its other inputs keep their defaults)."""
    return {"attention_mask": encoded.attention_mask} if "attention_mask" in explainer.inputs else {}


def token_relevance(texts, encoded: Encoded, out: dict) -> list[TokenRelevance]:
    """The rows of an explanation (:meth:`Explainer.explain`'s dict) cut to each text's shown tokens."""
    items = []
    for n, (text, tokens) in enumerate(zip(texts, encoded.tokens)):
        t = int(out["target"][n])
        items.append(TokenRelevance(text, tokens, np.asarray(out["relevance"][n, :len(tokens)], np.float64),
                                    int(out["logits"][n].argmax()), t, float(out["logits"][n, t]),
                                    float(out["bias_relevance"][n])))
    return items


# ------------------------------------------------------------------------------------------- render


def opacities(relevance: np.ndarray) -> np.ndarray:
    """α_i = |R_i| / max_j |R_j| (0 where every R is 0)."""
    magnitude = np.abs(np.asarray(relevance, np.float64))
    top = magnitude.max(initial=0.0)
    return magnitude / top if top > 0 else np.zeros_like(magnitude)


def shades(relevance: np.ndarray) -> list[tuple[tuple[int, int, int], float]]:
    """Each token's colour (red for R > 0, blue otherwise) and opacity."""
    return [(POSITIVE if r > 0 else NEGATIVE, float(a)) for r, a in zip(relevance, opacities(relevance))]


def _label(classes, c: int) -> str:
    return classes[c] if classes and 0 <= c < len(classes) else str(c)


def caption(item: TokenRelevance, classes=None, total: str = "Σ relevance") -> str:
    """One line on a text: predicted and explained class, the logit, relevance to tokens and to biases."""
    return (f"predicted {_label(classes, item.predicted)}, explained {_label(classes, item.target)} "
            f"(logit {item.logit:.4g}), {total} {item.relevance.sum():.4g}, bias {item.bias_relevance:.4g}")


HTML_STYLE = """
body { font: 16px/1.9 system-ui, sans-serif; color: #1d232b; margin: 24px; max-width: 60em; }
.legend { font-size: 13px; color: #667080; display: flex; gap: 6px; align-items: center; }
.scale { display: inline-block; width: 80px; height: 10px; border-radius: 2px;
         background: linear-gradient(90deg, rgb(31,95,191), #fff, rgb(198,40,40)); }
.sample { border-top: 1px solid #d9dee5; margin-top: 12px; padding-top: 8px; }
.caption { font-size: 13px; color: #667080; }
.token { padding: 2px 1px; border-radius: 3px; white-space: pre-wrap; }
"""


def render_html(items: list[TokenRelevance], classes=None) -> str:
    """A standalone page: a legend, then per text its caption (predicted, explained) and its tokens, each a
    ``<span>`` shaded by its relevance (the value in its tooltip). Everything from outside is escaped."""
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>relgraph · token relevance</title>", f"<style>{HTML_STYLE}</style></head><body>",
             '<div class="legend"><span>negative</span><span class="scale"></span><span>positive relevance '
             "(opacity ∝ |R| / max |R| of each text)</span></div>"]
    for n, item in enumerate(items):
        spans = []
        for token, r, ((red, green, blue), alpha) in zip(item.tokens, item.relevance, shades(item.relevance)):
            spans.append(f'<span class="token" style="background: rgba({red}, {green}, {blue}, {alpha:.3f})" '
                         f'title="R = {r:.4g}">{html.escape(token)}</span>')
        parts.append(f'<div class="sample"><div class="caption">text {n}: {html.escape(caption(item, classes))}'
                     f'</div><div class="tokens">{" ".join(spans)}</div></div>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_png(items: list[TokenRelevance], classes=None, width: int = PNG_WIDTH) -> np.ndarray:
    """The same as :func:`render_html` drawn with Pillow: uint8 [H, W, 3]. Tokens wrap at ``width``; one wider
    than a line is drawn alone on its line, cut at the edge."""
    image_module = pillow()
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    small = ImageFont.load_default(size=FONT_SIZE - 3)
    line, margin, pad, gap = FONT_SIZE + 10, 12, 3, 5
    measure = ImageDraw.Draw(image_module.new("RGB", (1, 1)))

    # layout first: (x, y, token, colour) boxes and captions, then one canvas of the height they need
    boxes, captions, y = [], [], margin + line  # the legend takes the first line
    for n, item in enumerate(items):
        # Pillow's default font has no Σ or ∝: the PNG says it in words
        captions.append((y, f"text {n}: {caption(item, classes, 'sum of relevance')}"))
        y += line
        x = margin
        for token, (colour, alpha) in zip(item.tokens, shades(item.relevance)):
            w = measure.textlength(token, font=font) + 2 * pad
            if x > margin and x + w > width - margin:
                x, y = margin, y + line
            fill = tuple(round(255 * (1 - alpha) + c * alpha) for c in colour)
            boxes.append((x, y, w, token, fill, "white" if alpha > 0.6 else (29, 35, 43)))
            x += w + gap
        y += line + margin
    canvas = image_module.new("RGB", (width, int(y + margin)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, margin), "negative", fill=NEGATIVE, font=small)
    left = margin + measure.textlength("negative ", font=small)
    for i in range(80):  # the legend's scale: blue → white → red
        s = i / 79 * 2 - 1
        colour = NEGATIVE if s < 0 else POSITIVE
        draw.line([(left + i, margin + 3), (left + i, margin + FONT_SIZE - 3)],
                  fill=tuple(round(255 * (1 - abs(s)) + c * abs(s)) for c in colour))
    draw.text((left + 86, margin), "positive relevance (opacity = |R| / max |R| of each text)", fill=POSITIVE,
              font=small)
    for cy, text in captions:
        draw.text((margin, cy), text, fill=(102, 112, 128), font=small)
    for x, by, w, token, fill, ink in boxes:
        draw.rounded_rectangle([x, by - 2, x + w, by + FONT_SIZE + 4], radius=3, fill=fill)
        draw.text((x + pad, by), token, fill=ink, font=font)
    return np.asarray(canvas, np.uint8)
