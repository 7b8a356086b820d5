"""Request decoding: the body read within its bounds, then checked into inputs [N, ...] and targets [N].

Every refusal is an :class:`HTTPError` with one line for the client. Nothing here trusts a size the client
states: a body is read against ``--max-request-mb`` as it streams (chunked or not), a ``.npy`` header must
describe exactly the bytes that follow it, a form may hold only a few parts, and JSON too deep to parse is a
400, not a crash.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import math

import numpy as np
from numpy.lib import format as npy_format
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import RelgraphError
from ..preprocess import PREPROCESS_KEY, UnsupportedImage, decode_image
from ..text import side_inputs
from .errors import HTTPError

NPY, JSON, PNG = "application/x-npy", "application/json", "image/png"
IMAGE_TYPES = ("image/png", "image/jpeg")
FORM = "multipart/form-data"
MAX_FORM_PARTS = 16  # the page sends two ("image", "target"); a form of thousands of parts is an attack
FORM_FIELDS = ("image", "target")


# ------------------------------------------------------------------------------------------- body


class Body:
    """A request's body as the ASGI server hands it over, read within a byte limit and a deadline.

    ``complete`` once the last byte arrived (or none was announced); ``broken`` once a read stopped
    half-way (over the limit, too slow, the client gone): such a connection cannot carry another request.
    """

    def __init__(self, receive, headers: list[tuple[bytes, bytes]]):
        self._receive = receive
        fields = {}
        for name, value in headers:
            fields.setdefault(name.lower(), value)
        self.chunked = b"chunked" in fields.get(b"transfer-encoding", b"").lower()
        length = fields.get(b"content-length")
        # httptools has refused malformed framing; both headers at once it reads by Transfer-Encoding, which a
        # proxy in front may not have done: such a request is refused (RFC 9112 §6.1), and its connection closed
        self.conflict = self.chunked and length is not None
        self.length = None if length is None or self.chunked else int(length)
        self.expected = self.chunked or (self.length is not None and self.length > 0)
        self.complete = not self.expected
        self.broken = False
        self.received = 0

    async def receive(self) -> dict:
        """The ASGI ``receive``, counting what passes."""
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
        elif message["type"] == "http.disconnect":
            self.broken = True
        return message

    async def read(self, limit: int, timeout: float) -> bytes:
        """The whole body: 413 past ``limit`` bytes (decided from Content-Length before reading, and as
        a chunked body streams), 408 if it has not all arrived ``timeout`` seconds from now."""
        if self.length is not None and self.length > limit:
            self.broken = True
            raise HTTPError(413, f"the body is {self.length} bytes; the limit is {limit} (--max-request-mb)")
        chunks = []
        size = await self._consume(limit, timeout, chunks.append)
        if size > limit:
            raise HTTPError(413, f"the body is over the limit of {limit} bytes (--max-request-mb)")
        return b"".join(chunks)

    async def drain(self, limit: int, timeout: float) -> None:
        """Read and drop what is left of a body the answer did not need, if it is small and comes quickly:
        the connection then stays usable. Otherwise it is left ``broken`` (the answer closes it)."""
        if self.complete or self.broken:
            return
        if self.length is not None and self.length - self.received > limit:
            self.broken = True
            return
        try:
            await self._consume(limit, timeout, lambda chunk: None)
        except HTTPError:
            pass

    async def _consume(self, limit: int, timeout: float, keep) -> int:
        """Feed body chunks to ``keep`` until the end, more than ``limit`` bytes or the deadline; the size."""
        size = 0
        try:
            async with asyncio.timeout(timeout):
                while not self.complete:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise HTTPError(400, "the client closed the connection before the body ended")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        self.broken = True
                        return size
                    keep(chunk)
        except TimeoutError:
            self.broken = True
            raise HTTPError(408, f"the body did not arrive within {timeout:g} s (received {self.received} "
                                 f"bytes{'' if self.length is None else f' of {self.length}'})") from None
        return size


def content_type(headers) -> tuple[str, dict[str, str]]:
    """Content-Type → (lowercase media type, parameters)."""
    kind, params = parse_options_header(headers.get("content-type", ""))
    return kind.decode("latin-1").lower(), {k.decode("latin-1").lower(): v.decode("latin-1")
                                            for k, v in params.items()}


# ------------------------------------------------------------------------------------------- explain


class Request:
    """What a POST /explain asked for, checked: inputs [N, ...], targets [N], how to answer.

    A text request also carries ``texts`` and their encoding (``encoded``: ids, attention mask, shown tokens),
    and ``inputs``, the model's other inputs it feeds (the attention mask)."""

    def __init__(self, x, target, single: bool, picture=None, texts=None, encoded=None, inputs=None):
        self.x, self.target, self.single, self.picture = x, target, single, picture
        self.texts, self.encoded, self.inputs = texts, encoded, inputs or {}


def parse_explain(service, kind: str, params: dict, body: bytes, query: dict) -> Request:
    """Body and query → a checked Request (HTTPError 400/415 for anything wrong)."""
    target = query_target(query)
    picture = None
    if kind == NPY:
        x = load_npy(body)
    elif kind == JSON:
        doc = read_json(body)
        if isinstance(doc, dict) and "text" in doc:
            return load_text(service, doc, target)
        x, target = load_json(doc, target, service.explainer.tokens)
    elif kind == FORM:
        image, form_target = load_form(body, params.get("boundary"))
        target = form_target if form_target is not None else target
        x, picture = load_image(service, image)
    elif kind in IMAGE_TYPES:
        x, picture = load_image(service, body)
    else:
        what = f"unsupported media type {kind!r}" if kind else "no Content-Type"
        raise HTTPError(415, f"{what}: send {NPY}, {JSON}, "
                             f"{FORM} (field \"image\") or {', '.join(IMAGE_TYPES)}")
    explainer = service.explainer
    try:
        single = x.ndim == len(explainer.input_shape) - 1
        x = explainer.prepare(x)
        if len(x) == 0:  # an empty batch would fail the session call it shares with other requests
            raise HTTPError(400, "the input has no samples")
        return Request(x, explainer.targets(target, len(x)), single, picture)
    except RelgraphError as exc:
        raise HTTPError(400, str(exc)) from None


def query_target(query: dict):
    if "target" not in query:
        return None
    try:
        return int(query["target"][-1])
    except ValueError:
        raise HTTPError(400, f"target must be an integer class index, got '{query['target'][-1][:40]}'") from None


def load_npy(body: bytes) -> np.ndarray:
    """One ``.npy`` array, viewed in place. Its header must describe exactly the bytes after it, so that a
    header claiming a huge shape costs nothing (``np.load`` would allocate the claimed size first)."""
    if body.startswith(b"PK"):  # a zip file: what np.savez writes
        raise HTTPError(400, "the body is an .npz archive; send one .npy array")
    offset = npy_header_end(body)
    if offset > MAX_NPY_HEADER:  # not copied, hashed and cached only for numpy to refuse it
        raise HTTPError(400, f"the body is not a readable .npy array: its header claims {offset} bytes")
    shape, fortran, dtype = npy_header(body[:offset])
    count = math.prod(shape)
    if count * dtype.itemsize != len(body) - offset:
        raise HTTPError(400, f"the body is not a readable .npy array: its header declares shape {list(shape)} "
                             f"of {dtype} ({count * dtype.itemsize} bytes), the body holds {len(body) - offset}")
    x = np.frombuffer(body, dtype, count, offset=offset)
    return x.reshape(shape[::-1]).T if fortran else x.reshape(shape)


MAX_NPY_HEADER = 12 + 10_000  # the magic, version and length, then numpy's limit on the header it parses


def npy_header_end(body: bytes) -> int:
    """Where an ``.npy`` file's header ends: magic (6 bytes), version (2), the header's length (2 bytes in
    version 1, 4 in versions 2 and 3, little-endian), then the header. The header itself is parsed by numpy."""
    if body[6:7] == b"\x01":
        return 10 + int.from_bytes(body[8:10], "little")
    return 12 + int.from_bytes(body[8:12], "little")


@functools.lru_cache(maxsize=64)
def npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An ``.npy`` header → (shape, Fortran order, dtype); HTTPError 400 if numpy cannot read it or it holds
    Python objects. numpy parses the header's dict with ``ast.literal_eval``, about a tenth of the server's time
    on small requests; a client sends the same header again and again, so parsed headers are kept (64 of
    them, each at most numpy's 10,000-byte header limit)."""
    buffer = io.BytesIO(head)
    try:
        version = npy_format.read_magic(buffer)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(buffer)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(buffer)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except Exception as exc:  # numpy raises ValueError, EOFError, SyntaxError... for bad headers
        raise HTTPError(400, f"the body is not a readable .npy array: {str(exc).splitlines()[0]}") from None
    if dtype.hasobject:
        raise HTTPError(400, "the .npy array holds Python objects; send numbers")
    return shape, fortran, dtype


def read_json(body: bytes):
    """The body parsed as JSON; 400 for invalid or too deeply nested JSON."""
    try:
        return json.loads(body)
    except RecursionError:
        raise HTTPError(400, "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"the body is not valid JSON: {exc}") from None


def json_target(target):
    """A JSON target (K or [K, ...]) as an integer array; 400 for anything else."""
    try:
        target = np.asarray(target)
    except (ValueError, RecursionError):
        target = np.asarray(None)
    if target.dtype.kind not in "iu":  # bools and floats too: np.asarray(True) is not a class index
        raise HTTPError(400, f"target must be an integer class index or a list of them, "
                             f"got {json.dumps(target.tolist())[:80]}")
    return target


def load_text(service, doc: dict, target) -> Request:
    """{"text": "…" or ["…", …], "target": K or [K, …]} for an explainer with a tokenizer: the texts encoded to
    its ids and attention mask (:class:`relgraph.text.TextEncoder`)."""
    if service.text is None:
        raise HTTPError(400, service.text_refusal)
    texts = doc["text"]
    single = isinstance(texts, str)
    if not single and not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
        raise HTTPError(400, '"text" must be a string or a non-empty list of strings')
    if "target" in doc:
        target = json_target(doc["target"])
    explainer = service.explainer
    try:
        encoded = service.text.encode(texts)
        inputs = side_inputs(explainer, encoded)
        return Request(explainer.prepare(encoded.input_ids), explainer.targets(target, len(encoded.input_ids)),
                       single, texts=[texts] if single else texts, encoded=encoded, inputs=inputs)
    except RelgraphError as exc:
        raise HTTPError(400, str(exc)) from None


def load_json(doc, target, tokens: bool = False):
    """A nested list, or {"input": nested list, "target": K or [K, ...]}; JSON integers are numbers too, and
    stay integers for a model fed token ids (``tokens``)."""
    if isinstance(doc, dict):
        if "input" not in doc:
            raise HTTPError(400, 'a JSON object needs an "input" field, or "text" (and optionally "target")')
        target = doc.get("target", target)
        doc = doc["input"]
    try:
        x = np.array(doc)
    except (ValueError, RecursionError):  # ragged, or deeper than numpy's dimension limit
        raise HTTPError(400, "the input is not a rectangular array of numbers") from None
    if x.dtype.kind not in "iuf":
        raise HTTPError(400, "the input is not a rectangular array of numbers")
    if target is not None:
        target = json_target(target)
    return x.astype(np.int64 if tokens and x.dtype.kind in "iu" else np.float32), target


def load_form(body: bytes, boundary: str | None) -> tuple[bytes, int | None]:
    """The "image" file (and an optional "target" field) of a multipart/form-data body; at most
    ``MAX_FORM_PARTS`` parts, and only the two named fields are kept."""
    if not boundary:
        raise HTTPError(400, "multipart/form-data without a boundary")
    fields: dict[str, bytes] = {}
    part = {"parts": 0}

    def on_part_begin():
        part["parts"] += 1
        if part["parts"] > MAX_FORM_PARTS:
            raise HTTPError(400, f"the form has more than {MAX_FORM_PARTS} parts")
        part.update(name=None, header=b"", value=b"", data=[])

    def on_header_field(data, start, end):
        part["header"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        if part["header"].lower() == b"content-disposition":
            name = parse_options_header(part["value"])[1].get(b"name", b"").decode("latin-1")
            part["name"] = name if name in FORM_FIELDS else None
        part["header"], part["value"] = b"", b""

    def on_part_data(data, start, end):
        if part["name"] is not None:
            part["data"].append(data[start:end])

    def on_part_end():
        if part["name"] is not None:
            fields.setdefault(part["name"], b"".join(part["data"]))

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_part_end": on_part_end}
    try:
        parser = MultipartParser(boundary.encode("latin-1"), callbacks)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise HTTPError(400, f"the form is not valid multipart/form-data: {str(exc).splitlines()[0]}") from None
    if "image" not in fields:
        raise HTTPError(400, 'the form has no "image" file field')
    target = None
    if fields.get("target", b"").strip():
        try:
            target = int(fields["target"])
        except ValueError:
            raise HTTPError(400, f"target must be an integer class index, got {fields['target'][:20]!r}") from None
    return fields["image"], target


def load_image(service, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    if service.preprocess is None:
        raise HTTPError(415, f"image uploads need the model's '{PREPROCESS_KEY}' metadata (channels, height, "
                             f"width, scale, mean, std), which this explainer lacks; send {NPY} or {JSON}")
    try:
        return service.preprocess(decode_image(data))
    except UnsupportedImage as exc:
        raise HTTPError(415, str(exc)) from None
    except RelgraphError as exc:
        raise HTTPError(400, str(exc)) from None
