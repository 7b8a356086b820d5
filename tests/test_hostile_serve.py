"""relgraph serve against hostile clients: slow and idle connections, smuggling attempts, bodies that lie about
their length, deep JSON, huge forms, a flood of idle connections under a low open-file limit, and a soak of
mixed traffic. The server runs as ``relgraph serve`` in its own process (its memory is read from /proc).

Every case asserts its status, that it was over within 2 s, that the server's resident memory (now and at its
peak, VmRSS and VmHWM) grew by at most 200 MB, and that a correct request afterwards still gets the right
answer."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import relgraph
from relgraph.explainer import Explainer
from relgraph.serve import ExplainServer
from relgraph.serve.command import FD_RESERVE
from serve_client import (MODEL, ROOT, RULE, TEST_X, assert_explained, connect, direct_call, exchange, host_port,
                          mixed_request, npy, parse_answers, read_until_closed, request, run_clients)

TIMEOUT_S = 1.0  # the server's head and body timeouts here
CASE_S = 2.0  # every hostile exchange is over within this
RSS_GROWTH = 200 << 20
MIB = 1 << 20


# ------------------------------------------------------------------------------------------- the server


class ServerProcess:
    """``relgraph serve`` in a child process, its access log in a file; ``nofile`` caps its open files."""

    def __init__(self, explainer_path, log_path, *args, nofile: int | None = None):
        def limit():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relgraph.cli", "serve", str(explainer_path), "--port", "0", "--access-log", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT, preexec_fn=limit,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        line = self.proc.stdout.readline()
        found = re.search(r"http://[\d.]+:\d+", line)
        if not found:
            self.stop()
            raise RuntimeError(f"relgraph serve did not start: {line}{open(log_path).read()}")
        self.url = found.group(0)

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes: resident now, and at the peak so far."""
        fields = dict(line.split(":", 1) for line in open(f"/proc/{self.proc.pid}/status"))
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def explainer_path(tmp_path_factory):
    return relgraph.compile(str(MODEL), rule=RULE, output=str(tmp_path_factory.mktemp("hostile") / "digits.onnx")).path


@pytest.fixture(scope="module")
def direct(explainer_path):
    return direct_call(explainer_path)


@pytest.fixture(scope="module")
def server(explainer_path, tmp_path_factory):
    srv = ServerProcess(explainer_path, tmp_path_factory.mktemp("log") / "access.log", "--max-batch", "8",
                        "--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S),
                        "--keep-alive-s", str(TIMEOUT_S), "--max-request-mb", "16")
    yield srv
    assert srv.stop() == 0
    lines = open(srv.log_path).read().splitlines()
    assert [line for line in lines if not line.startswith("{")] == ["stopping: finishing the requests in flight"]
    for line in lines[:-1]:  # the access log: one JSON object a line
        record = json.loads(line)
        assert {"time", "method", "path", "status", "duration_ms"} <= set(record) or \
            record["event"] == "connection_closed", record


def still_serves(url, direct):
    status, _, payload = request(url, "POST", "/explain?target=4", npy(TEST_X[5:8]),
                                 {"Content-Type": "application/x-npy"})
    assert status == 200, payload
    assert_explained(json.loads(payload), direct(TEST_X[5:8], 4))


@contextmanager
def bounded(server, direct, seconds: float = CASE_S):
    """The case inside is over within ``seconds`` and costs the server at most RSS_GROWTH of memory; then a
    correct request still gets the right answer."""
    rss, peak = server.memory()
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    rss_after, peak_after = server.memory()
    assert elapsed <= seconds, f"took {elapsed:.2f} s"
    assert rss_after - rss <= RSS_GROWTH and peak_after - peak <= RSS_GROWTH, (rss, rss_after, peak, peak_after)
    still_serves(server.url, direct)


def head(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_of(answer) -> str:
    assert answer.headers["content-type"] == "application/json", answer.headers
    message = json.loads(answer.body)["error"]
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------- slow and idle


def test_idle_connection_is_closed(server, direct):
    with bounded(server, direct):
        with connect(server.url) as sock:
            answers, rest, closed = read_until_closed(sock, timeout=CASE_S)
    assert closed and not answers and not rest  # nothing was asked: nothing is answered


def test_body_shorter_than_content_length_times_out(server, direct):
    with bounded(server, direct):
        answers, _, closed = exchange(server.url, head("POST", "/explain", "Content-Type: application/json",
                                                        "Content-Length: 1000", body=b"[[[[0.5"), timeout=CASE_S)
    assert closed and [a.status for a in answers] == [408]
    assert "did not arrive" in error_of(answers[0]) and "of 1000" in error_of(answers[0])


def drip(sock, data: bytes, every: float = 0.05) -> None:
    """Send ``data`` a byte at a time until it is sent or the server answers or closes."""
    for byte in data:
        if select.select([sock], [], [], 0)[0]:
            return
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return
        time.sleep(every)


@pytest.mark.parametrize("kept_alive", [False, True])
def test_slow_head_gets_408(server, direct, kept_alive):
    """A head trickling in, a byte every 50 ms: the head timeout counts from the connection (or, on a kept-alive
    connection, from the head's first byte), not from the last byte, so trickling does not keep the connection."""
    data = head("GET", "/healthz", "Accept: application/json", "X-Padding: " + "x" * 200)
    with connect(server.url) as sock, bounded(server, direct):
        if kept_alive:
            sock.sendall(head("GET", "/healthz"))
            deadline, answered = time.monotonic() + CASE_S, []
            data_in = b""
            while not answered and time.monotonic() < deadline:
                data_in += sock.recv(1 << 16)
                answered, _ = parse_answers(data_in)
            assert [a.status for a in answered] == [200]
        drip(sock, data)
        answers, _, closed = read_until_closed(sock, timeout=CASE_S)
    assert closed and [a.status for a in answers] == [408] and "head" in error_of(answers[0])


def test_slow_body_is_cut_at_its_deadline(server, direct):
    """A body dripping in, a byte every 50 ms, is refused when its deadline passes, not when it stops."""
    body = npy(TEST_X[:1])
    with bounded(server, direct):
        with connect(server.url) as sock:
            sock.sendall(head("POST", "/explain", "Content-Type: application/x-npy", f"Content-Length: {len(body)}"))
            drip(sock, body)  # 16 s of it, if the server waited
            answers, _, closed = read_until_closed(sock, timeout=CASE_S)
    assert closed and [a.status for a in answers] == [408] and "did not arrive" in error_of(answers[0])


# ------------------------------------------------------------------------------------------- HTTP framing


@pytest.mark.parametrize("method, path, status", [("POST", "/nowhere", 404), ("POST", "/healthz", 405),
                                                  ("PUT", "/explain", 405)])
def test_pipelined_request_after_an_unread_body_is_not_smuggled(server, direct, method, path, status):
    """The refused request's body is itself a request; it must be skipped as body, and the request after it
    answered: exactly two answers on the connection."""
    smuggled = head("DELETE", "/metadata")
    data = (head(method, path, "Content-Type: application/json", f"Content-Length: {len(smuggled)}", body=smuggled)
            + head("GET", "/healthz", "Connection: close"))
    with bounded(server, direct):
        answers, rest, closed = exchange(server.url, data, timeout=CASE_S)
    assert closed and not rest and [a.status for a in answers] == [status, 200]
    assert json.loads(answers[1].body)["status"] == "ok"


def test_large_unread_body_closes_the_connection(server, direct):
    """A body too big to drain (1 MiB) after a refusal: the connection is closed, its bytes never parsed."""
    smuggled = head("DELETE", "/metadata") * (MIB // 40)
    data = head("POST", "/nowhere", f"Content-Length: {len(smuggled)}", body=smuggled) + head("GET", "/healthz")
    with bounded(server, direct):
        answers, _, closed = exchange(server.url, data, timeout=CASE_S)
    assert closed and [a.status for a in answers] == [404] and answers[0].headers["connection"] == "close"


@pytest.mark.parametrize("transfer_encoding", ["chunked", "gzip, chunked", "chunked, identity"])
def test_transfer_encoding_with_content_length_is_refused(server, direct, transfer_encoding):
    """A proxy that frames by Content-Length and a server that frames by chunks disagree on where the next
    request starts: refuse, and close."""
    smuggled = b"0\r\n\r\n" + head("DELETE", "/metadata")
    data = head("POST", "/explain", "Content-Type: application/json", f"Transfer-Encoding: {transfer_encoding}",
                f"Content-Length: {len(smuggled)}", body=smuggled)
    with bounded(server, direct):
        answers, rest, closed = exchange(server.url, data, timeout=CASE_S)
    assert closed and not rest and [a.status for a in answers] == [400], answers
    error_of(answers[0])


@pytest.mark.parametrize("data", [b"HELLO\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                                  b"GET /healthz HTTP/1.1\r\n\r\n",
                                  b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                                  b"POST /explain HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                                  b"POST /explain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_requests_get_a_json_400(server, direct, data):
    """A bad request line, TLS spoken to plain HTTP, no Host, a header without a colon, a negative length, a
    bad chunk size."""
    with bounded(server, direct):
        answers, rest, closed = exchange(server.url, data, timeout=CASE_S)
    assert closed and not rest and [a.status for a in answers] == [400], answers
    error_of(answers[0])


@pytest.mark.parametrize("part", ["url", "header", "headers", "unfinished header", "100 KiB header"])
def test_oversized_head_gets_431(server, direct, part):
    """A request line or headers past the head limit, sent as fast as the socket takes them: refused with 431
    once the limit is crossed, not buffered to the end (the head is 8 MiB, the limit 64 KiB). A header line
    that never ends is cut too, long before the head timeout."""
    big = 8 * MIB
    if part == "100 KiB header":  # a head that may arrive in one read, whole: counted when complete
        data = head("GET", "/healthz", f"X-Big: {'a' * (100 << 10)}")
    elif part == "unfinished header":
        data = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * big}".encode()
    elif part == "url":
        data = f"GET /healthz?{'a' * big} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    elif part == "header":
        data = head("GET", "/healthz", f"X-Big: {'a' * big}")
    else:
        data = head("GET", "/healthz", *[f"X-{n}: {'a' * 100}" for n in range(big // 110)])
    with bounded(server, direct):
        answers, _, closed = exchange(server.url, data, timeout=CASE_S)
    assert closed and [a.status for a in answers] == [431], answers
    assert "exceed 64 KiB" in error_of(answers[0])


def test_head_and_options(server, direct):
    data = (head("HEAD", "/healthz") + head("HEAD", "/explain") + head("OPTIONS", "/explain")
            + head("OPTIONS", "*") + head("HEAD", "/nowhere", "Connection: close"))
    with bounded(server, direct):
        answers, rest, closed = exchange(server.url, data, timeout=CASE_S, heads=(0, 1, 4))
    # HEAD is answered like GET without the body (the pipelined answers would not parse if one came)
    assert closed and not rest and [a.status for a in answers] == [200, 405, 204, 204, 404]
    assert answers[0].headers["content-type"] == "application/json" and answers[1].headers["allow"] == "POST, OPTIONS"
    assert answers[2].headers["allow"] == "POST, OPTIONS" and answers[3].headers["allow"] == "GET, HEAD, OPTIONS, POST"


# ------------------------------------------------------------------------------------------- bodies


def post(server, body: bytes, content_type: str, *headers: str, path: str = "/explain"):
    data = head("POST", path, f"Content-Type: {content_type}", f"Content-Length: {len(body)}", "Connection: close",
                *headers, body=body)
    answers, _, closed = exchange(server.url, data, timeout=CASE_S)
    assert closed and len(answers) == 1, answers
    return answers[0]


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b'{"input": [[[[0]]]], "target": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b"[" * 200 + b"0" + b"]" * 200])  # parses, deeper than numpy's 64 axes
def test_deep_json_is_a_400(server, direct, body):
    with bounded(server, direct):
        answer = post(server, body, "application/json")
    assert answer.status == 400
    assert any(words in error_of(answer) for words in ("nested too deeply", "rectangular", "target"))


def test_a_form_of_150000_parts_is_refused_fast(server, direct):
    part = b'--b\r\nContent-Disposition: form-data; name="target"\r\n\r\n1\r\n'
    body = part * 150_000 + b"--b--\r\n"
    assert len(body) < 16 * MIB  # under --max-request-mb: the part count refuses it, not the size
    with bounded(server, direct):
        answer = post(server, body, "multipart/form-data; boundary=b")
    assert answer.status == 400 and "parts" in error_of(answer)


def test_body_over_the_limit(server, direct):
    """413 from Content-Length before a byte is read, and for a chunked body as it streams."""
    with bounded(server, direct):
        answers, _, closed = exchange(server.url, head("POST", "/explain", "Content-Type: application/x-npy",
                                                        f"Content-Length: {64 * MIB}"), timeout=CASE_S)
    assert closed and [a.status for a in answers] == [413] and "limit" in error_of(answers[0])
    chunk = b"%x\r\n" % MIB + b"0" * MIB + b"\r\n"
    with bounded(server, direct):
        with connect(server.url) as sock:
            sock.sendall(head("POST", "/explain", "Content-Type: application/json", "Transfer-Encoding: chunked"))
            for _ in range(32):  # 32 MiB, if the server read it all
                if select.select([sock], [], [], 0)[0]:
                    break
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
            answers, _, closed = read_until_closed(sock, timeout=CASE_S)
    assert closed and [a.status for a in answers] == [413] and "limit" in error_of(answers[0])


@pytest.mark.parametrize("version", [b"\x01\x00", b"\x02\x00"])
def test_npy_header_length_past_numpys_limit(server, direct, version):
    """A header length field claiming more than numpy reads (10,000 bytes): refused before the header is
    looked at, in format 1.0 (2-byte field) and 2.0 (4-byte field, here 4 GiB)."""
    field = b"\xff\xff" if version == b"\x01\x00" else b"\xff\xff\xff\xff"
    body = b"\x93NUMPY" + version + field + b"{" * (1 << 20)
    with bounded(server, direct):
        answer = post(server, body, "application/x-npy")
    assert answer.status == 400 and "header claims" in error_of(answer)


@pytest.mark.parametrize("shape", [(10**9, 1, 8, 8), (2**62,)])
def test_npy_header_claiming_a_huge_array_costs_nothing(server, direct, shape):
    """np.load would allocate what the header claims before finding the data missing."""
    header = npy(TEST_X[:1])
    body = header.replace(b"(1, 1, 8, 8)", str(shape).replace(",)", ",)").encode().ljust(len("(1, 1, 8, 8)")))
    assert body != header
    with bounded(server, direct):
        answer = post(server, body, "application/x-npy")
    assert answer.status == 400 and "header declares" in error_of(answer)


# ------------------------------------------------------------------------------------------- connections


def test_idle_connections_under_a_low_open_file_limit(explainer_path, direct, tmp_path):
    """Under ulimit -n 256, 300 idle connections (the head timeout is long here, so none times out) do not
    stop /healthz from answering within 1 s: the longest-idle ones are closed to make room."""
    srv = ServerProcess(explainer_path, tmp_path / "access.log", "--header-timeout-s", "60", "--keep-alive-s", "60",
                        nofile=256)
    idle = []
    try:
        for _ in range(300):
            idle.append(connect(srv.url))
        deadline = time.monotonic() + 20  # until the server has taken them all in (its log counts evictions)
        while evictions(tmp_path / "access.log") < 300 - (256 - FD_RESERVE) and time.monotonic() < deadline:
            time.sleep(0.05)
        rss, peak = srv.memory()
        started = time.monotonic()
        status, _, payload = request(srv.url, "GET", "/healthz", timeout=1)
        assert status == 200 and json.loads(payload)["status"] == "ok"
        assert time.monotonic() - started <= 1.0
        open_fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        assert open_fds < 256
        assert srv.memory()[1] - peak <= RSS_GROWTH
        still_serves(srv.url, direct)
    finally:
        for sock in idle:
            sock.close()
        assert srv.stop() == 0
    assert evictions(tmp_path / "access.log") >= 300 + 1 - (256 - FD_RESERVE)


def evictions(log_path) -> int:
    """Connections the server closed to make room, from its access log."""
    return sum(json.loads(line).get("reason") == "evicted" for line in open(log_path) if '"connection_closed"' in line)


class GatedExplainer:
    """The real explainer, held at a gate: requests stay in progress until the test opens it."""

    def __init__(self, explainer):
        self._explainer = explainer
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._explainer, name)

    def explain(self, x, target=None):
        assert self.gate.wait(timeout=30)
        return self._explainer.explain(x, target)


def test_over_the_connection_limit(explainer_path, direct):
    """Two connections allowed. Idle ones make room for a new one (the longest idle goes); when both carry a
    request in progress, a third is answered 503 at once and closed; both requests are then answered."""
    gated = GatedExplainer(Explainer(explainer_path))
    srv = ExplainServer(gated, "127.0.0.1", 0, max_batch=4, max_wait=0, max_connections=2).start()
    try:
        gated.gate.set()
        first, second = connect(srv.url), connect(srv.url)
        time.sleep(0.2)  # both accepted and idle, the first the longest
        status, _, payload = request(srv.url, "GET", "/healthz", timeout=2)
        assert status == 200
        assert first.recv(1) == b""  # closed to make room
        second.close()
        gated.gate.clear()
        answers = {}

        def post(name, rows):
            answers[name] = request(srv.url, "POST", "/explain", npy(TEST_X[rows]),
                                    {"Content-Type": "application/x-npy"})

        busy = [threading.Thread(target=post, args=(name, rows)) for name, rows in (("a", [0, 1]), ("b", [2]))]
        for t in busy:
            t.start()
        deadline = time.monotonic() + 10
        while sum(c.busy for c in list(srv.uvicorn.server_state.connections)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        answers_503, _, closed = exchange(srv.url, head("GET", "/healthz"), timeout=CASE_S)
        assert time.monotonic() - started <= 1.0
        assert closed and [a.status for a in answers_503] == [503] and "limit" in error_of(answers_503[0])
        gated.gate.set()
        for t in busy:
            t.join(timeout=30)
        for name, rows in (("a", [0, 1]), ("b", [2])):
            status, _, payload = answers[name]
            assert status == 200
            assert_explained(json.loads(payload), direct(TEST_X[rows]))
        still_serves(srv.url, direct)
    finally:
        gated.gate.set()
        srv.close()


def test_sigterm_lets_requests_in_flight_finish(explainer_path, direct, tmp_path):
    """SIGTERM while a request's body is half sent: the server stops accepting, answers that request in full,
    then exits 0."""
    srv = ServerProcess(explainer_path, tmp_path / "access.log")
    body = npy(TEST_X[3:5])
    try:
        with connect(srv.url) as sock:
            sock.sendall(head("POST", "/explain?target=1", "Content-Type: application/x-npy",
                              f"Content-Length: {len(body)}", body=body[:50]))
            time.sleep(0.3)  # the head is in: the request is in progress
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # new connections are refused once the listener is closed
                try:
                    connect(srv.url, timeout=1).close()
                except ConnectionRefusedError:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("still accepting connections after SIGTERM")
            sock.sendall(body[50:])
            answers, _, closed = read_until_closed(sock, timeout=10)
        assert closed and [a.status for a in answers] == [200]
        assert_explained(json.loads(answers[0].body), direct(TEST_X[3:5], 1))
        assert srv.proc.wait(timeout=20) == 0
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_count_the_traffic(explainer_path):
    srv = ExplainServer(Explainer(explainer_path), "127.0.0.1", 0, max_batch=4, max_wait=0).start()
    try:
        for rows in ([0, 1], [2], [3, 4, 5], [6, 7, 8, 9, 10]):  # 11 samples; the last needs two session calls
            status, _, _ = request(srv.url, "POST", "/explain", npy(TEST_X[rows]),
                                   {"Content-Type": "application/x-npy"})
            assert status == 200
        for _ in range(3):
            assert request(srv.url, "GET", "/healthz")[0] == 200
        assert request(srv.url, "GET", "/nowhere")[0] == 404
        assert request(srv.url, "GET", "/nowhere/else")[0] == 404
        assert request(srv.url, "POST", "/healthz", b"{}", {"Content-Type": "application/json"})[0] == 405
        assert request(srv.url, "POST", "/explain", b"[[1", {"Content-Type": "application/json"})[0] == 400
        status, headers, payload = request(srv.url, "GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        health = json.loads(request(srv.url, "GET", "/healthz")[2])
    finally:
        srv.close()
    families = {f.name: f for f in text_string_to_metric_families(payload.decode())}
    requests = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value
                for s in families["relgraph_http_requests"].samples if s.name.endswith("_total")}
    assert requests == {("/explain", "POST", "200"): 4, ("/healthz", "GET", "200"): 3, ("other", "GET", "404"): 2,
                        ("/healthz", "POST", "405"): 1, ("/explain", "POST", "400"): 1}
    latency = {(s.name, s.labels["route"]): s.value for s in families["relgraph_http_request_duration_seconds"].samples
               if s.name.endswith("_count")}
    assert latency == {("relgraph_http_request_duration_seconds_count", "/explain"): 5,
                       ("relgraph_http_request_duration_seconds_count", "/healthz"): 4,
                       ("relgraph_http_request_duration_seconds_count", "other"): 2}
    batch = {s.name: s.value for s in families["relgraph_batch_size_samples"].samples}
    assert batch["relgraph_batch_size_samples_sum"] == 11
    assert batch["relgraph_batch_size_samples_count"] == health["batches"] >= 5  # max batch 4: 11 > 2 calls
    assert batch['relgraph_batch_size_samples_bucket'] == batch["relgraph_batch_size_samples_count"]  # the +Inf one
    samples = {s.name: s.value for s in families["relgraph_samples_explained"].samples}
    assert samples["relgraph_samples_explained_total"] == 11 == health["samples"]
    assert families["relgraph_queue_depth"].samples[0].value == 0
    assert families["relgraph_http_requests_in_flight"].samples[0].value == 1  # the scrape itself


# ------------------------------------------------------------------------------------------- soak


def hostile_request(rng, url) -> int:
    """One hostile exchange of a random kind, on its own connection; checks the answer; returns its status."""
    smuggled = head("DELETE", "/metadata")
    short_npy = npy(TEST_X[:1])
    parts = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n' * 2000 + b"--b--\r\n"
    kinds = {
        "garbage": (b"\x00\x01 GARBAGE /\r\n\r\n", [400]),
        "conflict": (head("POST", "/explain", "Transfer-Encoding: chunked", "Content-Length: 5", body=b"0\r\n\r\n"),
                     [400]),
        "deep-json": (head("POST", "/explain", "Content-Type: application/json", "Content-Length: 20000",
                           "Connection: close", body=b"[" * 10_000 + b"]" * 10_000), [400]),
        "short-body": (head("POST", "/explain", "Content-Type: application/x-npy",
                            f"Content-Length: {len(short_npy)}", body=short_npy[:-40]), [408]),
        "pipelined-404": (head("POST", "/nowhere", f"Content-Length: {len(smuggled)}", body=smuggled)
                          + head("GET", "/healthz", "Connection: close"), [404, 200]),
        "many-parts": (head("POST", "/explain", "Content-Type: multipart/form-data; boundary=b", "Connection: close",
                            f"Content-Length: {len(parts)}", body=parts), [400]),
        "too-large": (head("POST", "/explain", "Content-Type: application/x-npy", f"Content-Length: {1 << 30}"),
                      [413]),
        "lying-npy": (head("POST", "/explain", "Content-Type: application/x-npy", "Connection: close",
                           f"Content-Length: {len(short_npy)}",
                           body=short_npy.replace(b"(1, 1, 8, 8)", b"(9, 9, 9, 9)")), [400]),
    }
    data, statuses = kinds[rng.choice(sorted(kinds))]
    answers, _, closed = exchange(url, data, timeout=5)
    assert closed and [a.status for a in answers] == statuses, (data[:60], answers)
    return statuses[0]


@pytest.mark.soak
def test_soak_mixed_traffic(explainer_path, direct, tmp_path):
    """2,000 requests from 16 clients, 10 % of them hostile: every good answer equals the direct onnxruntime
    call, every hostile one gets its status, memory stays flat after a warm-up, all within 3 minutes."""
    srv = ServerProcess(explainer_path, tmp_path / "access.log", "--max-batch", "8", "--header-timeout-s", "1",
                        "--body-timeout-s", "1", "--keep-alive-s", "30")
    clients, warmup, total = 16, 160, 2000
    started = time.monotonic()
    counts = {"good": 0, "hostile": 0}
    lock = threading.Lock()

    def client(seed, n):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(*host_port(srv.url), timeout=60)
        try:
            for _ in range(n):
                if rng.random() < 0.1:
                    hostile_request(rng, srv.url)
                    kind = "hostile"
                else:
                    mixed_request(rng, srv.url, conn, direct)
                    kind = "good"
                with lock:
                    counts[kind] += 1
        finally:
            conn.close()

    def run(n_per_client, seed0):
        run_clients(lambda seed: client(seed, n_per_client), range(seed0, seed0 + clients), timeout=170)

    try:
        run(warmup // clients, 0)
        rss_warm, _ = srv.memory()
        counts.update(good=0, hostile=0)
        run(total // clients, 1000)
        rss_end, _ = srv.memory()
        elapsed = time.monotonic() - started
        assert counts["good"] + counts["hostile"] == total
        assert 0.05 * total <= counts["hostile"] <= 0.15 * total
        assert rss_end - rss_warm < 50 << 20, (rss_warm, rss_end)
        assert elapsed < 180, elapsed
        health = json.loads(request(srv.url, "GET", "/healthz")[2])
        assert health["queued"] == 0 and health["samples"] >= counts["good"]
    finally:
        assert srv.stop() == 0


def test_a_client_that_stops_reading_its_answer_is_dropped(server, direct):
    """A large answer (8,000 samples as JSON, about 12 MB) to a client that reads nothing: once the socket
    buffers are full, the server waits --body-timeout-s for the client to read, then drops the connection."""
    def write_timeouts() -> float:
        families = text_string_to_metric_families(request(server.url, "GET", "/metrics")[2].decode())
        closed = next(f for f in families if f.name == "relgraph_http_connections_closed")
        return sum(s.value for s in closed.samples
                   if s.name.endswith("_total") and s.labels["reason"] == "write_timeout")

    before = write_timeouts()
    body = npy(np.resize(TEST_X, (8000, 1, 8, 8)))
    with connect(server.url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(head("POST", "/explain", "Content-Type: application/x-npy", f"Content-Length: {len(body)}",
                          body=body))
        sock.recv(1)  # the answer has begun: from here on nothing is read
        with bounded(server, direct, seconds=TIMEOUT_S + 4 * CASE_S):  # the server's buffers fill first
            deadline = time.monotonic() + TIMEOUT_S + 4 * CASE_S
            while write_timeouts() == before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert write_timeouts() == before + 1
