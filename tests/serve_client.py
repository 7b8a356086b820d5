"""What the tests of ``relgraph serve`` share: the reference call, request bodies, and two clients: http.client
for well-formed requests, raw sockets for what no well-behaved client would send."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from relgraph.heatmap import decode_png, encode_png, heatmap_image

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits" / "digits_cnn.onnx"
TEST_X = np.load(ROOT / "models" / "digits" / "test_x.npy")
RULE = "epsilon-plus-flat"


def direct_call(explainer_path):
    """The reference: the explainer in its own onnxruntime session, called on the same input."""
    session = ort.InferenceSession(str(explainer_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(x, target=None):
        x = np.asarray(x, np.float32)
        t = np.full(len(x), -1, np.int64) if target is None else np.broadcast_to(np.int64(target), len(x)).copy()
        out = dict(zip(names, session.run(None, {"input": x, "target": t})))
        out["target"] = np.where(t < 0, out["logits"].argmax(1), t)
        return out

    return run


# ------------------------------------------------------------------------------------------- http.client


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def request(url, method, path, body=b"", headers=None, conn=None, timeout=30):
    """(status, headers, body) of one request; ``conn`` reuses a keep-alive connection."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(*host_port(url), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()  # header names are case-insensitive
    finally:
        if own:
            conn.close()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "----relgraph-test-7f3a9c"
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n")
            parts.append(f"--{boundary}\r\n{head}".encode() + value + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def digit_pixels(index: int) -> np.ndarray:
    """A test digit as the 8-bit picture a client would upload."""
    return np.clip(np.round(TEST_X[index, 0] * 255), 0, 255).astype(np.uint8)


def digit_png(index: int) -> tuple[bytes, np.ndarray]:
    """A test digit as PNG bytes, and the input those bytes stand for: the digits model's preprocessing
    stretches the picture to 0..1 (autocontrast; light ink on dark, so it is never inverted)."""
    pixels = digit_pixels(index).astype(np.float64)
    x = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    return encode_png(digit_pixels(index)), x.astype(np.float32)[None, None]


def assert_explained(doc, ref, n=None):
    """A JSON answer against the direct call (row n, or all rows)."""
    rows = slice(None) if n is None else n
    np.testing.assert_allclose(doc["logits"], ref["logits"][rows], rtol=1e-5, atol=1e-5)
    scale = np.abs(ref["relevance"]).max()
    np.testing.assert_allclose(doc["relevance"], ref["relevance"][rows], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(doc["bias_relevance"], ref["bias_relevance"][rows], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_array_equal(doc["predicted"], ref["logits"][rows].argmax(-1))
    np.testing.assert_array_equal(doc["target"], ref["target"][rows])


def mixed_request(rng, url, conn, direct) -> str:
    """A random well-formed request of one of eight kinds (bodies, answers, batch sizes, targets); checks its
    answer against the direct call; returns its kind."""
    kind = rng.choice(["npy", "npy1", "json", "json-object", "form", "png", "npy-accept", "png-accept"])
    target = rng.choice([None, None, rng.randrange(10)])
    query = "" if target is None else f"?target={target}"
    rows = rng.sample(range(len(TEST_X)), rng.choice([1, 2, 3, 5, 8, 11]))  # 11 > max batch: split
    x = TEST_X[rows] + np.float32(0.01) * np.asarray(rng.random(), np.float32)
    accept = {"Accept": "application/json"}
    if kind in ("npy", "npy-accept"):
        body, ctype = npy(x), "application/x-npy"
        if kind == "npy-accept":
            accept = {"Accept": "application/x-npy"}
    elif kind == "npy1":
        x = x[:1]
        body, ctype = npy(x[0]), "application/x-npy"
    elif kind == "json":
        body, ctype = json.dumps(x.tolist()).encode(), "application/json"
    elif kind == "json-object":
        targets = [rng.randrange(10) for _ in rows]
        body, ctype = json.dumps({"input": x.tolist(), "target": targets}).encode(), "application/json"
        target, query = np.array(targets), ""
    else:
        png, x = digit_png(rows[0])
        body, ctype = (png, "image/png") if kind in ("png", "png-accept") else multipart({"image": png})
        if kind == "png-accept":
            accept = {"Accept": "image/png"}
    status, headers, payload = request(url, "POST", "/explain" + query, body,
                                       {"Content-Type": ctype, **accept}, conn=conn)
    assert status == 200, payload
    ref = direct(x, target)
    if kind == "npy-accept":
        assert headers["Content-Type"] == "application/x-npy"
        scale = np.abs(ref["relevance"]).max()
        np.testing.assert_allclose(np.load(io.BytesIO(payload)), ref["relevance"], rtol=1e-5, atol=1e-6 * scale)
        assert headers["X-Target"] == ",".join(map(str, ref["target"]))
    elif kind == "png-accept":
        got = decode_png(payload)
        expected = heatmap_image(ref["relevance"][0], image=digit_pixels(rows[0]), size=256)  # over the upload
        assert got.shape == expected.shape == (256, 256, 3)
        np.testing.assert_allclose(got.astype(int), expected.astype(int), atol=2)
    else:
        doc = json.loads(payload)
        single = kind in ("npy1", "form", "png")
        assert_explained(doc, ref, 0 if single else None)
        if single:
            assert doc["label"] == str(doc["predicted"])
    return kind


# ------------------------------------------------------------------------------------------- raw sockets


class Answer:
    """One response read off the wire: status, headers (lowercase names), body."""

    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return f"Answer({self.status}, {self.body[:120]!r})"


def parse_answers(data: bytes, heads=()) -> tuple[list[Answer], bytes]:
    """The complete responses at the start of ``data`` and what is left; those numbered in ``heads`` answer
    HEAD requests (their Content-Length describes a body that is not sent)."""
    answers = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        assert match, f"not a status line: {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        bodiless = len(answers) in heads or match.group(1) in ("204", "304")
        length = 0 if bodiless else int(headers.get("content-length", 0))
        if len(rest) < length:
            break
        answers.append(Answer(int(match.group(1)), headers, rest[:length]))
        data = rest[length:]
    return answers, data


def connect(url, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(host_port(url), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0, heads=()) -> tuple[list[Answer], bytes, bool]:
    """Everything the server sends until it closes the connection (or ``timeout``): the answers, any bytes
    that are not a complete answer, and whether the server closed."""
    deadline = time.monotonic() + timeout
    data, closed = b"", False
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    answers, rest = parse_answers(data, heads)
    return answers, rest, closed


def exchange(url, data: bytes, timeout: float = 10.0, heads=()) -> tuple[list[Answer], bytes, bool]:
    """Send raw bytes on a new connection, then read until the server closes it."""
    with connect(url, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server may refuse before reading it all
            pass
        return read_until_closed(sock, timeout, heads)


def run_clients(client, seeds, timeout: float) -> None:
    """Run ``client(seed)`` in one thread per seed, wait at most ``timeout`` s for each, and re-raise the first
    exception a client raised in the calling thread."""
    errors = []

    def guarded(seed):
        try:
            client(seed)
        except BaseException as exc:  # noqa: BLE001 -- re-raised by the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(seed,)) for seed in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    if errors:
        raise errors[0]
