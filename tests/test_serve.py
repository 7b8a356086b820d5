"""relgraph serve: every answer equals a direct onnxruntime call; bad requests get the right 4xx; a full queue
gets 503; the server keeps serving. The server runs in-process on a free loopback port."""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import relgraph
from relgraph.explainer import Explainer
from relgraph.heatmap import decode_png, encode_png, heatmap_image
from relgraph.preprocess import Preprocess, box_resize
from relgraph.serve import ExplainServer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits" / "digits_cnn.onnx"
TEST_X = np.load(ROOT / "models" / "digits" / "test_x.npy")
RULE = "epsilon-plus-flat"
MAX_BATCH = 8


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def explainer_path(tmp_path_factory):
    return relgraph.compile(str(MODEL), rule=RULE, output=str(tmp_path_factory.mktemp("serve") / "digits.onnx")).path


@pytest.fixture(scope="module")
def bare_path(tmp_path_factory):
    """The same model without its preprocessing metadata."""
    folder = tmp_path_factory.mktemp("bare")
    model = onnx.load(str(MODEL))
    del model.metadata_props[:]
    onnx.save(model, str(folder / "bare.onnx"))
    return relgraph.compile(str(folder / "bare.onnx"), rule=RULE, output=str(folder / "bare.explainer.onnx")).path


@pytest.fixture(scope="module")
def direct(explainer_path):
    """The reference: the explainer in its own onnxruntime session, called on the same input."""
    session = ort.InferenceSession(explainer_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(x, target=None):
        x = np.asarray(x, np.float32)
        t = np.full(len(x), -1, np.int64) if target is None else np.broadcast_to(np.int64(target), len(x)).copy()
        out = dict(zip(names, session.run(None, {"input": x, "target": t})))
        out["target"] = np.where(t < 0, out["logits"].argmax(1), t)
        return out

    return run


@pytest.fixture(scope="module")
def server(explainer_path):
    srv = ExplainServer(Explainer(explainer_path), "127.0.0.1", 0, max_batch=MAX_BATCH, max_wait=0.003,
                        queue_size=256, max_request_bytes=1 << 20).start()
    yield srv
    srv.close()


# ------------------------------------------------------------------------------------------- client


def request(url, method, path, body=b"", headers=None, conn=None):
    """(status, headers, body) of one request; ``conn`` reuses a keep-alive connection."""
    own = conn is None
    if own:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
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


def digit_png(index: int) -> tuple[bytes, np.ndarray]:
    """A test digit as PNG bytes, and the input those bytes stand for (pixel / 255)."""
    pixels = np.clip(np.round(TEST_X[index, 0] * 255), 0, 255).astype(np.uint8)
    return encode_png(pixels), (pixels / 255.0).astype(np.float32)[None, None]


def assert_explained(doc, ref, n=None):
    """A JSON answer against the direct call (row n, or all rows)."""
    rows = slice(None) if n is None else n
    np.testing.assert_allclose(doc["logits"], ref["logits"][rows], rtol=1e-5, atol=1e-5)
    scale = np.abs(ref["relevance"]).max()
    np.testing.assert_allclose(doc["relevance"], ref["relevance"][rows], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(doc["bias_relevance"], ref["bias_relevance"][rows], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_array_equal(doc["predicted"], ref["logits"][rows].argmax(-1))
    np.testing.assert_array_equal(doc["target"], ref["target"][rows])


# ------------------------------------------------------------------------------------------- metadata


def test_metadata_travels_from_model_to_explainer(explainer_path, server):
    source = {p.key: p.value for p in onnx.load(str(MODEL)).metadata_props}
    compiled = {p.key: p.value for p in onnx.load(explainer_path).metadata_props}
    assert json.loads(source["relgraph.classes"]) == [str(d) for d in range(10)]
    for key in ("relgraph.preprocess", "relgraph.classes"):
        assert compiled[key] == source[key]
    status, _, body = request(server.url, "GET", "/metadata")
    meta = json.loads(body)
    assert status == 200 and meta["rule"] == RULE and meta["input"] == {"name": "input", "shape": [None, 1, 8, 8]}
    assert meta["classes"] == [str(d) for d in range(10)] and meta["preprocess"]["invert"] == "auto"
    status, _, body = request(server.url, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = request(server.url, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b'id="file"' in body


def test_box_resize_is_the_mean_of_the_pixels_centred_in_each_footprint():
    """Reference: output pixel i (centre (i + ½)·s, s = in/out) averages the input pixels k whose centres
    lie within half a footprint f = max(s, 1): −f/2 < k + ½ − (i + ½)·s ≤ f/2 (nearest pixel when
    enlarging); for an integer ratio that is the block mean (area averaging)."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (7, 5, 3))

    def members(size_in, size_out):
        step = size_in / size_out
        offset = (np.arange(size_in) + 0.5)[None, :] - (np.arange(size_out)[:, None] + 0.5) * step
        half = max(step, 1.0) / 2
        return (offset > -half) & (offset <= half)

    for h, w in [(3, 2), (8, 8), (14, 10), (7, 5), (1, 1)]:
        ref = np.array([[image[r][:, c].mean(axis=(0, 1)) for c in members(5, w)] for r in members(7, h)])
        np.testing.assert_allclose(box_resize(image, h, w, premultiply=False), ref, rtol=1e-6, atol=1e-4)
    big = np.repeat(np.repeat(image, 3, axis=0), 4, axis=1)
    np.testing.assert_allclose(box_resize(big, 7, 5, premultiply=False), image, rtol=1e-6, atol=1e-4)


def test_photo_of_dark_digit_on_white_becomes_the_data(server):
    """Ink on paper, RGB, 4× larger: inverted (its border is bright) and averaged back to the digit."""
    pre = Preprocess.from_json(server.explainer.metadata["relgraph.preprocess"])
    _, x = digit_png(3)
    pixels = np.round(x[0, 0] * 255).astype(np.uint8)
    photo = np.repeat(np.repeat(255 - pixels, 4, 0), 4, 1)[..., None].repeat(3, axis=2)
    got, picture = pre(photo)
    ref = (pixels.astype(np.float64) - pixels.min()) / (pixels.max() - pixels.min())  # autocontrast, /255
    np.testing.assert_allclose(got[0], ref, atol=1e-6)
    np.testing.assert_array_equal(picture, 255 - pixels)  # what the heatmap is drawn over: the photo, resized


# ------------------------------------------------------------------------------------------- load test


def _one_request(rng, url, conn, direct):
    """A random request; checks its answer against the direct call; returns its kind."""
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
        expected = heatmap_image(ref["relevance"][0], image=np.round(x[0, 0] * 255).astype(np.uint8), size=256)
        assert got.shape == expected.shape == (256, 256, 3)
        np.testing.assert_allclose(got.astype(int), expected.astype(int), atol=2)
    else:
        doc = json.loads(payload)
        single = kind in ("npy1", "form", "png")
        assert_explained(doc, ref, 0 if single else None)
        if single:
            assert doc["label"] == str(doc["predicted"])
    return kind


def test_load_mixed_requests_equal_direct_calls(server, direct):
    clients, per_client = 12, 25  # 300 requests
    errors, kinds = [], []
    batches_before = server.batcher.batches

    def client(seed):
        rng = random.Random(seed)
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            for _ in range(per_client):
                kinds.append(_one_request(rng, server.url, conn, direct))
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    assert len(kinds) == clients * per_client and len(set(kinds)) == 8
    # concurrent requests shared session calls (11-sample requests alone need two)
    assert server.batcher.batches - batches_before < clients * per_client


# ------------------------------------------------------------------------------------------- bad requests


def _bad_requests():
    png, _ = digit_png(0)
    nan = TEST_X[:2].copy()
    nan[1, 0, 3, 3] = np.nan
    form_without_image, form_type = multipart({"picture": png})
    not_an_image, _ = multipart({"image": b"GIF89a not really"})
    corrupt, _ = multipart({"image": png[:40]})
    big_target = multipart({"image": png, "target": "10"})
    buffer = io.BytesIO()
    np.savez(buffer, input=TEST_X[:1])
    npz_body = buffer.getvalue()
    npy_type = {"Content-Type": "application/x-npy"}
    json_type = {"Content-Type": "application/json"}
    return [  # method, path, headers, body, status, words in the message
        ("POST", "/explain", npy_type, b"\x93NUMPY garbage", 400, "not a readable .npy"),
        ("POST", "/explain", npy_type, npy(TEST_X[:2, :, :4]), 400, "expects [N, 1, 8, 8]"),
        ("POST", "/explain", npy_type, npy(TEST_X[:0]), 400, "no samples"),
        ("POST", "/explain", npy_type, npz_body, 400, ".npz"),
        ("POST", "/explain", npy_type, npy((TEST_X[:2] * 16).astype(np.int64)), 400, "dtype"),
        ("POST", "/explain", npy_type, npy(nan), 400, "NaN"),
        ("POST", "/explain?target=10", npy_type, npy(TEST_X[:1]), 400, "out of range"),
        ("POST", "/explain?target=-2", npy_type, npy(TEST_X[:1]), 400, "out of range"),
        ("POST", "/explain?target=three", npy_type, npy(TEST_X[:1]), 400, "integer"),
        ("POST", "/explain", json_type, b"{not json", 400, "not valid JSON"),
        ("POST", "/explain", json_type, b"[[1, 2], [3]]", 400, "rectangular"),
        ("POST", "/explain", json_type, b'[["a", "b"]]', 400, "numbers"),
        ("POST", "/explain", json_type, b'{"x": [1]}', 400, '"input"'),
        ("POST", "/explain", json_type, json.dumps({"input": TEST_X[:1].tolist(), "target": 1.5}).encode(), 400,
         "integer"),
        ("POST", "/explain", json_type, b"[[[[NaN, 1, 2, 3, 4, 5, 6, 7]" + b", [0,0,0,0,0,0,0,0]" * 7 + b"]]]", 400,
         "NaN"),
        ("POST", "/explain", {"Content-Type": form_type}, form_without_image, 400, '"image"'),
        ("POST", "/explain", {"Content-Type": form_type}, not_an_image, 415, "neither PNG nor JPEG"),
        ("POST", "/explain", {"Content-Type": form_type}, corrupt, 400, "PNG"),
        ("POST", "/explain", {"Content-Type": big_target[1]}, big_target[0], 400, "out of range"),
        ("POST", "/explain", {"Content-Type": "text/plain"}, b"1 2 3", 415, "unsupported media type"),
        ("POST", "/explain", {"Content-Type": "image/gif"}, b"GIF89a", 415, "unsupported media type"),
        ("GET", "/explain", {}, b"", 405, "POST"),
        ("PUT", "/explain", npy_type, npy(TEST_X[:1]), 405, "not allowed"),
        ("POST", "/healthz", json_type, b"{}", 405, "GET"),
        ("DELETE", "/metadata", {}, b"", 405, "GET"),
        ("GET", "/nowhere", {}, b"", 404, "no such path"),
    ]


def test_bad_requests_get_one_line_4xx_and_the_server_lives(server, direct):
    for method, path, headers, body, status, words in _bad_requests():
        got, answer_headers, payload = request(server.url, method, path, body, headers)
        assert got == status, (method, path, payload)
        assert answer_headers["Content-Type"] == "application/json"
        message = json.loads(payload)["error"]
        assert "\n" not in message and words in message, (path, message)
        if status == 405:
            assert answer_headers["Allow"] in ("GET", "POST")
    _still_serves(server, direct)


def test_body_over_the_limit_is_refused_before_it_is_read(server, direct):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/explain")
    conn.putheader("Content-Type", "application/x-npy")
    conn.putheader("Content-Length", str(64 << 20))  # no byte of it is ever sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/explain")  # no Content-Length at all
    conn.putheader("Content-Type", "application/x-npy")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    conn.close()
    _still_serves(server, direct)


def _still_serves(server, direct):
    status, _, payload = request(server.url, "POST", "/explain?target=4", npy(TEST_X[5:8]),
                                 {"Content-Type": "application/x-npy"})
    assert status == 200
    assert_explained(json.loads(payload), direct(TEST_X[5:8], 4))


def test_image_upload_without_metadata_is_415(bare_path, direct):
    srv = ExplainServer(Explainer(bare_path), "127.0.0.1", 0, max_wait=0).start()
    try:
        png, _ = digit_png(0)
        status, _, payload = request(srv.url, "POST", "/explain", png, {"Content-Type": "image/png"})
        assert status == 415 and "relgraph.preprocess" in json.loads(payload)["error"]
        status, _, payload = request(srv.url, "POST", "/explain", npy(TEST_X[:2]),
                                     {"Content-Type": "application/x-npy"})
        assert status == 200
        assert_explained(json.loads(payload), direct(TEST_X[:2]))  # the same weights: the same answers
    finally:
        srv.close()


def test_jpeg_upload_with_and_without_pillow(server, direct, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    photo = 255 - np.repeat(np.repeat(np.round(TEST_X[7, 0] * 255), 3, 0), 3, 1)  # dark ink on white, 24×24
    photo = np.clip(photo + rng.normal(0, 4, photo.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).convert("RGB").save(buffer, format="JPEG", quality=95)
    jpeg = buffer.getvalue()
    # reference preprocessing in float64: Pillow's decode, luma, 3×3 block mean, invert, stretch, /255
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float64)
    gray = rgb @ [0.299, 0.587, 0.114]
    q = 255 - gray.reshape(8, 3, 8, 3).mean(axis=(1, 3))
    x = ((q - q.min()) / (q.max() - q.min()))[None, None].astype(np.float32)
    status, _, payload = request(server.url, "POST", "/explain", jpeg, {"Content-Type": "image/jpeg"})
    assert status == 200, payload
    assert_explained(json.loads(payload), direct(x), 0)

    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    body, ctype = multipart({"image": jpeg})
    status, _, payload = request(server.url, "POST", "/explain", body, {"Content-Type": ctype})
    assert status == 415 and "Pillow" in json.loads(payload)["error"]


# ------------------------------------------------------------------------------------------- back-pressure


class GatedExplainer:
    """The real explainer, held at a gate so that the queue fills deterministically."""

    def __init__(self, explainer):
        self._explainer = explainer
        self.entered, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._explainer, name)

    def explain(self, x, target=None):
        self.entered.set()
        assert self.gate.wait(timeout=30)
        return self._explainer.explain(x, target)


def test_full_queue_answers_503_then_serves(explainer_path, direct):
    gated = GatedExplainer(Explainer(explainer_path))
    srv = ExplainServer(gated, "127.0.0.1", 0, max_batch=4, max_wait=0, queue_size=1).start()
    answers = {}

    def post(name, rows):
        answers[name] = request(srv.url, "POST", "/explain", npy(TEST_X[rows]), {"Content-Type": "application/x-npy"})

    try:
        first = threading.Thread(target=post, args=("first", [0, 1]))
        first.start()
        assert gated.entered.wait(timeout=10)  # the worker holds the first request at the gate
        second = threading.Thread(target=post, args=("second", [2]))
        second.start()
        deadline = time.monotonic() + 10
        while srv.batcher.queue.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.batcher.queue.qsize() == 1  # the second waits in the queue, which is now full
        status, _, payload = request(srv.url, "POST", "/explain", npy(TEST_X[3:4]),
                                     {"Content-Type": "application/x-npy"})
        assert status == 503 and "busy" in json.loads(payload)["error"]
        gated.gate.set()
        first.join(timeout=30)
        second.join(timeout=30)
        for name, rows in (("first", [0, 1]), ("second", [2])):
            status, _, payload = answers[name]
            assert status == 200
            assert_explained(json.loads(payload), direct(TEST_X[rows]))
        _still_serves(srv, direct)
    finally:
        gated.gate.set()
        srv.close()


# ------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_ctrl_c_or_sigterm(explainer_path, stop):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # started as a script's background job would be: SIGINT ignored on entry
    proc = subprocess.Popen([sys.executable, "-m", "relgraph.cli", "serve", explainer_path, "--port", "0",
                             "--max-batch", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        status, _, payload = request(url, "GET", "/healthz")
        assert status == 200 and json.loads(payload)["status"] == "ok"
        port = url.rsplit(":", 1)[1]
        taken = subprocess.run([sys.executable, "-m", "relgraph.cli", "serve", explainer_path, "--port", port],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert taken.returncode == 2 and taken.stderr.startswith("relgraph: error: cannot listen")
        assert len(taken.stderr.strip().splitlines()) == 1
        proc.send_signal(stop)
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serves_a_triton_folder(tmp_path, direct):
    """`relgraph serve DIR` on a folder compiled with --target triton runs its launch plan (the Triton kernels,
    in the interpreter here) behind the same HTTP interface, and answers like onnxruntime."""
    from relgraph.lowering import compile_triton

    folder = compile_triton(str(MODEL), str(tmp_path / "digits.triton"), rule=RULE).path
    explainer = Explainer(folder)
    assert "Triton kernels" in explainer.device
    srv = ExplainServer(explainer, "127.0.0.1", 0, max_batch=4, max_wait=0.003).start()
    try:
        x = TEST_X[:3]
        status, _, payload = request(srv.url, "POST", "/explain?target=2", npy(x),
                                     {"Content-Type": "application/x-npy"})
        assert status == 200
        got, want = json.loads(payload), direct(x, 2)
        np.testing.assert_allclose(np.asarray(got["relevance"], np.float32), want["relevance"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got["logits"], np.float32), want["logits"], rtol=1e-5, atol=1e-5)
    finally:
        srv.close()
