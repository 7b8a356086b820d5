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
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest

import relgraph
from relgraph.explainer import Explainer
from relgraph.preprocess import Preprocess, box_resize
from relgraph.serve import ExplainServer
from relgraph.serve.command import SERVE_STACK
from serve_client import (MODEL, ROOT, RULE, TEST_X, assert_explained, digit_pixels, digit_png, direct_call,
                          mixed_request, multipart, npy, request, run_clients)

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
    return direct_call(explainer_path)


@pytest.fixture(scope="module")
def server(explainer_path):
    srv = ExplainServer(Explainer(explainer_path), "127.0.0.1", 0, max_batch=MAX_BATCH, max_wait=0.003,
                        queue_size=256, max_request_bytes=1 << 20).start()
    yield srv
    srv.close()


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
    pixels = digit_pixels(3)
    photo = np.repeat(np.repeat(255 - pixels, 4, 0), 4, 1)[..., None].repeat(3, axis=2)
    got, picture = pre(photo)
    ref = (pixels.astype(np.float64) - pixels.min()) / (pixels.max() - pixels.min())  # autocontrast, /255
    np.testing.assert_allclose(got[0], ref, atol=1e-6)
    np.testing.assert_array_equal(picture, 255 - pixels)  # what the heatmap is drawn over: the photo, resized


# ------------------------------------------------------------------------------------------- load test


def test_load_mixed_requests_equal_direct_calls(server, direct):
    clients, per_client = 12, 25  # 300 requests
    kinds = []
    batches_before = server.batcher.batches

    def client(seed):
        rng = random.Random(seed)
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            for _ in range(per_client):
                kinds.append(mixed_request(rng, server.url, conn, direct))
        finally:
            conn.close()

    run_clients(client, range(clients), timeout=120)
    assert len(kinds) == clients * per_client and len(set(kinds)) == 8
    # concurrent requests shared session calls (11-sample requests alone need two)
    assert server.batcher.batches - batches_before < clients * per_client


def test_npy_formats_and_shapes_in_turn(server, direct):
    """.npy bodies in format 1.0 and 2.0, C and Fortran order, and batch sizes in turn (the server keeps the
    headers it parsed; each answer must still be its own body's), answered as .npy."""
    x = TEST_X[:5]
    for rows, version, order in [(1, (1, 0), "C"), (3, (2, 0), "C"), (1, (1, 0), "C"), (5, (1, 0), "F"),
                                 (3, (2, 0), "C"), (2, (2, 0), "F"), (5, (1, 0), "C")]:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asarray(x[:rows], order=order), version=version)
        got, headers, payload = request(server.url, "POST", "/explain?target=3", buffer.getvalue(),
                                        {"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
        assert got == 200, payload
        relevance = np.load(io.BytesIO(payload))
        expected = direct(x[:rows], 3)["relevance"]
        assert relevance.shape == expected.shape and relevance.flags.c_contiguous
        assert np.abs(relevance - expected).max() <= 1e-6 * np.abs(expected).max(), (rows, version, order)
        assert headers["X-Target"] == ",".join(["3"] * rows)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, x[:1], version=(3, 0))
    got, _, payload = request(server.url, "POST", "/explain", buffer.getvalue(), {"Content-Type": "application/x-npy"})
    assert got == 400 and "version 3.0 is not supported" in json.loads(payload)["error"]


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
            assert answer_headers["Allow"] in ("GET, HEAD, OPTIONS", "POST, OPTIONS")  # HEAD and OPTIONS are served
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
    explainer = relgraph.open_explainer(folder)
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


def test_answers_leave_without_nagle_delay(server):
    """An answer's headers and body leave in two writes: with Nagle's algorithm on, the body would wait for the
    client's delayed ACK (40 ms a request on Linux). asyncio turns it off only for sockets made with IPPROTO_TCP."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        sockets = [c.transport.get_extra_info("socket") for c in list(server.uvicorn.server_state.connections)]
        assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
    finally:
        conn.close()


def test_without_the_serve_extra_the_command_says_what_to_install(explainer_path):
    """The CLI starts without the HTTP stack; `relgraph serve` then fails in one line naming the extra."""
    script = (f"import sys\nfor m in {SERVE_STACK!r}: sys.modules[m] = None  # as if not installed\n"
              f"from relgraph.cli import main\nsys.exit(main(['serve', {explainer_path!r}, '--port', '0']))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "uvicorn" in proc.stderr and "pip install 'relgraph[serve]'" in proc.stderr


@pytest.mark.parametrize("flag, value, words", [("--keep-alive-s", "inf", "positive number"),
                                                ("--body-timeout-s", "0", "positive number"),
                                                ("--max-request-mb", "nan", "positive number"),
                                                ("--max-connections", "0", "at least 1"),
                                                ("--max-connections", "100000000", "open files")])
def test_serve_flags_are_checked(explainer_path, flag, value, words):
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "serve", explainer_path, "--port", "0", flag, value],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"relgraph: error: {flag}") and words in proc.stderr


def test_cli_serves_on_openvino(explainer_path, direct):
    """`relgraph serve --runtime openvino`: the same answers as a direct onnxruntime call."""
    pytest.importorskip("openvino")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "relgraph.cli", "serve", explainer_path, "--port", "0",
                             "--runtime", "openvino"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert "OpenVINO CPU" in line
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        x = TEST_X[:5]
        status, _, payload = request(url, "POST", "/explain", npy(x), {"Content-Type": "application/x-npy"})
        assert status == 200
        assert_explained(json.loads(payload), direct(x))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
