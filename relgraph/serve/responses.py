"""What POST /explain answers: JSON, the relevance as ``.npy``, or the heatmap as PNG (chosen by Accept)."""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
from numpy.lib import format as npy_format

from ..heatmap import encode_png, heatmap_image
from ..text import render_png, token_relevance
from .decoding import JSON, NPY, PNG, Request


def explain_json(service, req: Request, out: dict, heatmap: bool) -> dict:
    """The answer as JSON; a request without a batch axis gets answers without one. A text's answer has its
    shown ``tokens`` and one ``relevance`` value per token (padding left out)."""
    predicted = out["logits"].argmax(1)
    doc = {"predicted": predicted, "target": out["target"], "logits": out["logits"],
           "relevance": out["relevance"], "bias_relevance": out["bias_relevance"]}
    if req.encoded is not None:
        items = token_relevance(req.texts, req.encoded, out)
        doc["tokens"] = [item.tokens for item in items]
        doc["relevance"] = [item.relevance.tolist() for item in items]
    if service.classes:
        doc["label"] = [service.class_name(c) for c in predicted]
    doc = {k: (v[0] if req.single else v) for k, v in doc.items()}
    doc = {k: (v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v) for k, v in doc.items()}
    if heatmap:
        doc["heatmap"] = "data:image/png;base64," + base64.b64encode(heatmap_png(req, out, service.classes)).decode()
    return doc


def heatmap_png(req: Request, out: dict, classes=None) -> bytes:
    """Each sample's heatmap over its picture (or over the input), side by side; texts: their tokens shaded
    by relevance (:func:`relgraph.text.render_png`)."""
    if req.encoded is not None:
        return encode_png(render_png(token_relevance(req.texts, req.encoded, out), classes))
    tiles = [heatmap_image(out["relevance"][n], image=req.picture if req.picture is not None else req.x[n],
                           size=256) for n in range(len(req.x))]
    gap = np.full((tiles[0].shape[0], 8, 3), 255, np.uint8)
    return encode_png(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1))


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a C-ordered ``.npy`` file, byte for byte what ``np.save`` writes for a C-ordered array.
    Every answer has one of a few shapes, so their headers are made once: ``np.save`` formats its header anew
    each call, a tenth of the server's time on small requests."""
    array = np.asarray(array, order="C")
    return npy_header_bytes(array.shape, npy_format.dtype_to_descr(array.dtype)) + array.tobytes()


@functools.lru_cache(maxsize=64)
def npy_header_bytes(shape: tuple[int, ...], descr) -> bytes:
    """The ``.npy`` magic and format-1.0 header of a C-ordered array (1.0 holds any header up to 64 KiB;
    64 dimensions of any size take under 2 KiB)."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def preferred(accept: str) -> str:
    """The first of npy, png, json named in Accept (in the client's order); JSON otherwise."""
    for item in accept.split(","):
        kind = item.split(";")[0].strip().lower()
        if kind in (NPY, PNG, JSON):
            return kind
    return JSON
