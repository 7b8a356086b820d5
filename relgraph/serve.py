"""``relgraph serve``: explanations over HTTP, with dynamic batching.

    relgraph serve EXPLAINER.onnx [--host 127.0.0.1] [--port 8000] [--max-request-mb 16] [--max-batch 32]
                   [--max-wait-ms 5] [--queue 256] [--threads N]

Endpoints: ``POST /explain[?target=K][&heatmap=1]``, ``GET /metadata``, ``GET /healthz`` and a page at ``/``.

One worker thread owns the onnxruntime session. Request threads parse and check their input, then queue it;
the worker takes the oldest request, keeps taking queued ones for at most ``max_wait`` or until
``max_batch`` samples, runs them as one batch and hands each request its rows. Under load the queue is
never empty and batches fill without waiting; alone, a request waits at most ``max_wait``. A request
that finds the queue full is answered 503 at once rather than piling latency onto everyone.

Only the standard library speaks HTTP (``http.server``; ``email`` parses multipart uploads).
"""

from __future__ import annotations

import base64
import io
import json
import queue
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from . import __version__
from .errors import RelgraphError
from .preprocess import PREPROCESS_KEY, UnsupportedImage, decode_image, model_classes, model_preprocess

NPY, JSON, PNG = "application/x-npy", "application/json", "image/png"
IMAGE_TYPES = ("image/png", "image/jpeg")


class HTTPError(Exception):
    """A request the service refuses: the status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------- batching


class Job:
    """One request's samples on their way through the batcher."""

    __slots__ = ("x", "target", "queued", "done", "result", "error")

    def __init__(self, x: np.ndarray, target: np.ndarray):
        self.x, self.target = x, target
        self.queued = time.monotonic()
        self.done = threading.Event()
        self.result = self.error = None


_STOP = object()


class Batcher:
    """Dynamic batching in front of one explainer: a bounded queue and the one thread that runs it."""

    def __init__(self, explainer, *, max_batch: int = 32, max_wait: float = 0.005, queue_size: int = 256):
        self.explainer, self.max_batch, self.max_wait = explainer, max_batch, max_wait
        self.queue: queue.Queue = queue.Queue(queue_size)
        self.batches = self.samples = 0
        self._thread = threading.Thread(target=self._run, name="relgraph-batcher", daemon=True)
        self._thread.start()

    def explain(self, x: np.ndarray, target: np.ndarray) -> dict:
        """Queue [N, ...] inputs and their targets; block until the worker has answered them."""
        job = Job(x, target)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise HTTPError(503, f"the server is busy: {self.queue.maxsize} requests are queued; "
                                 "retry later") from None
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def stop(self) -> None:
        """Finish the batch in hand, answer whatever is still queued with 503, end the worker."""
        while self._thread.is_alive():
            try:
                self.queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                job.error = HTTPError(503, "the server is shutting down")
                job.done.set()

    def _run(self) -> None:
        pending = None  # a job taken from the queue that did not fit the last batch
        while True:
            first = pending if pending is not None else self.queue.get()
            if first is _STOP:
                return
            batch, pending = self._gather(first)
            self._answer(batch)
            if pending is _STOP:
                return

    def _gather(self, first: Job) -> tuple[list[Job], object]:
        """Jobs of one sample shape, in arrival order, up to ``max_batch`` samples, or until the first has
        waited ``max_wait`` since it was queued (time spent behind the previous batch counts)."""
        batch, size = [first], len(first.x)
        deadline = first.queued + self.max_wait
        while size < self.max_batch:
            left = deadline - time.monotonic()
            try:  # once the wait is over, still take what is already queued: under load batches fill
                job = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or size + len(job.x) > self.max_batch or job.x.shape[1:] != first.x.shape[1:]:
                return batch, job
            batch.append(job)
            size += len(job.x)
        return batch, None

    def _answer(self, batch: list[Job]) -> None:
        try:
            out = self._explain(np.concatenate([j.x for j in batch]), np.concatenate([j.target for j in batch]))
        except Exception as exc:  # the session failed: every request in the batch hears why, the worker lives
            error = exc if isinstance(exc, HTTPError) else HTTPError(500, f"explaining failed: "
                                                                          f"{str(exc).splitlines()[0]}")
            for job in batch:
                job.error = error
                job.done.set()
            return
        self.batches += 1
        start = 0
        for job in batch:
            rows = slice(start, start + len(job.x))
            job.result = {k: v[rows] for k, v in out.items()}
            start = rows.stop
            job.done.set()

    def _explain(self, x: np.ndarray, target: np.ndarray) -> dict:
        """One session call per ``max_batch`` rows (only a request bigger than a batch needs several)."""
        parts = []
        for start in range(0, len(x), self.max_batch):
            out = self.explainer.explain(x[start:start + self.max_batch], target[start:start + self.max_batch])
            parts.append({k: out[k] for k in ("logits", "relevance", "bias_relevance", "target")})
            self.samples += len(out["target"])
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------------------- requests


class Request:
    """What a POST /explain asked for, checked: inputs [N, ...], targets [N], how to answer."""

    def __init__(self, x, target, single: bool, picture=None):
        self.x, self.target, self.single, self.picture = x, target, single, picture


def parse_explain(service: "ExplainServer", content_type: str, params: dict, body: bytes, query: dict) -> Request:
    """Body and query → a checked Request (HTTPError 400/415 for anything wrong)."""
    target = _query_target(query)
    picture = None
    if content_type == NPY:
        x = _load_npy(body)
    elif content_type == JSON:
        x, target = _load_json(body, target)
    elif content_type == "multipart/form-data":
        image, form_target = _load_form(body, params.get("boundary"))
        target = form_target if form_target is not None else target
        x, picture = _load_image(service, image)
    elif content_type in IMAGE_TYPES:
        x, picture = _load_image(service, body)
    else:
        raise HTTPError(415, f"unsupported media type '{content_type}': send {NPY}, {JSON}, "
                             f"multipart/form-data (field \"image\") or {', '.join(IMAGE_TYPES)}")
    explainer = service.explainer
    try:
        single = x.ndim == len(explainer.input_shape) - 1
        x = explainer.prepare(x)
        if len(x) == 0:  # an empty batch would fail the session call it shares with other requests
            raise HTTPError(400, "the input has no samples")
        return Request(x, explainer.targets(target, len(x)), single, picture)
    except RelgraphError as exc:
        raise HTTPError(400, str(exc)) from None


def _query_target(query: dict):
    if "target" not in query:
        return None
    try:
        return int(query["target"][-1])
    except ValueError:
        raise HTTPError(400, f"target must be an integer class index, got '{query['target'][-1]}'") from None


def _load_npy(body: bytes) -> np.ndarray:
    try:
        x = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, EOFError, OSError... for bad files
        raise HTTPError(400, f"the body is not a readable .npy array: {str(exc).splitlines()[0]}") from None
    if not isinstance(x, np.ndarray):  # an .npz archive loads as a mapping
        raise HTTPError(400, "the body is an .npz archive; send one .npy array")
    return x


def _load_json(body: bytes, target):
    """A nested list, or {"input": nested list, "target": K or [K, ...]}; JSON integers are numbers too."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"the body is not valid JSON: {exc}") from None
    if isinstance(doc, dict):
        if "input" not in doc:
            raise HTTPError(400, 'a JSON object needs an "input" field (and optionally "target")')
        target = doc.get("target", target)
        doc = doc["input"]
    try:
        x = np.array(doc)
    except ValueError:
        raise HTTPError(400, "the input is not a rectangular array of numbers") from None
    if x.dtype.kind not in "iuf":
        raise HTTPError(400, "the input is not a rectangular array of numbers")
    if target is not None:
        target = np.asarray(target)
        if target.dtype.kind not in "iu":  # bools and floats too: np.asarray(True) is not a class index
            raise HTTPError(400, f"target must be an integer class index or a list of them, "
                                 f"got {json.dumps(target.tolist())}")
    return x.astype(np.float32), target


def _load_form(body: bytes, boundary: str | None) -> tuple[bytes, int | None]:
    """The "image" file (and an optional "target" field) of a multipart/form-data body."""
    from email.parser import BytesParser
    from email.policy import HTTP

    if not boundary:
        raise HTTPError(400, "multipart/form-data without a boundary")
    head = f'Content-Type: multipart/form-data; boundary="{boundary}"\r\n\r\n'.encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields = {}
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                fields[name] = part.get_payload(decode=True) or b""
    if "image" not in fields:
        raise HTTPError(400, 'the form has no "image" file field')
    target = None
    if "target" in fields and fields["target"].strip():
        try:
            target = int(fields["target"])
        except ValueError:
            raise HTTPError(400, f"target must be an integer class index, got {fields['target'][:20]!r}") from None
    return fields["image"], target


def _load_image(service: "ExplainServer", data: bytes) -> tuple[np.ndarray, np.ndarray]:
    if service.preprocess is None:
        raise HTTPError(415, f"image uploads need the model's '{PREPROCESS_KEY}' metadata (channels, height, "
                             f"width, scale, mean, std), which this explainer lacks; send {NPY} or {JSON}")
    try:
        return service.preprocess(decode_image(data))
    except UnsupportedImage as exc:
        raise HTTPError(415, str(exc)) from None
    except RelgraphError as exc:
        raise HTTPError(400, str(exc)) from None


# ------------------------------------------------------------------------------------------- responses


def explain_json(service: "ExplainServer", req: Request, out: dict, heatmap: bool) -> dict:
    """The answer as JSON; a request without a batch axis gets answers without one."""
    predicted = out["logits"].argmax(1)
    doc = {"predicted": predicted, "target": out["target"], "logits": out["logits"],
           "relevance": out["relevance"], "bias_relevance": out["bias_relevance"]}
    if service.classes:
        doc["label"] = [service.class_name(c) for c in predicted]
    doc = {k: (v[0] if req.single else v) for k, v in doc.items()}
    doc = {k: (v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v) for k, v in doc.items()}
    if heatmap:
        doc["heatmap"] = "data:image/png;base64," + base64.b64encode(heatmap_png(req, out)).decode()
    return doc


def heatmap_png(req: Request, out: dict) -> bytes:
    """Each sample's heatmap over its picture (or over the input), side by side."""
    from .heatmap import encode_png, heatmap_image

    tiles = [heatmap_image(out["relevance"][n], image=req.picture if req.picture is not None else req.x[n],
                           size=256) for n in range(len(req.x))]
    gap = np.full((tiles[0].shape[0], 8, 3), 255, np.uint8)
    return encode_png(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def preferred(accept: str) -> str:
    """The first of npy, png, json named in Accept (in the client's order); JSON otherwise."""
    for item in accept.split(","):
        kind = item.split(";")[0].strip().lower()
        if kind in (NPY, PNG, JSON):
            return kind
    return JSON


# ------------------------------------------------------------------------------------------- server


class ExplainServer(ThreadingHTTPServer):
    """An HTTP server around one explainer and its batcher."""

    daemon_threads = True  # a stuck client must not keep the process alive at Ctrl-C
    request_queue_size = 128  # listen backlog: many clients connecting at once must not be turned away

    def __init__(self, explainer, host: str = "127.0.0.1", port: int = 8000, *, max_request_bytes: int = 16 << 20,
                 max_batch: int = 32, max_wait: float = 0.005, queue_size: int = 256, log=None):
        self.explainer = explainer
        self.max_request_bytes = max_request_bytes
        self.preprocess = model_preprocess(explainer.metadata)
        self.classes = model_classes(explainer.metadata)
        self.log = log
        self.started = time.time()
        self.requests = 0
        self._count_lock = threading.Lock()
        self._thread = None
        super().__init__((host, port), Handler)
        self.batcher = Batcher(explainer, max_batch=max_batch, max_wait=max_wait, queue_size=queue_size)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def class_name(self, c: int) -> str:
        return self.classes[c] if self.classes and 0 <= c < len(self.classes) else str(c)

    def metadata(self) -> dict:
        e = self.explainer
        return {"rule": e.rule, "input": {"name": e.input_name, "shape": e.input_shape},
                "num_classes": e.num_classes, "classes": self.classes,
                "preprocess": self.preprocess.as_dict() if self.preprocess else None,
                "max_batch": self.batcher.max_batch, "max_request_bytes": self.max_request_bytes,
                "version": __version__}

    def health(self) -> dict:
        return {"status": "ok", "queued": self.batcher.queue.qsize(), "requests": self.requests,
                "batches": self.batcher.batches, "samples": self.batcher.samples,
                "uptime_s": round(time.time() - self.started, 3)}

    def start(self) -> "ExplainServer":
        """Serve from a background thread (for tests and embedding); ``close()`` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="relgraph-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()
        self.batcher.stop()


class Handler(BaseHTTPRequestHandler):
    server: ExplainServer
    protocol_version = "HTTP/1.1"  # keep-alive: load clients reuse their connection
    # headers and body leave in two writes; with Nagle's algorithm the body would wait for the client's
    # delayed ACK of the headers (40 ms on Linux) on every keep-alive response
    disable_nagle_algorithm = True
    server_version = f"relgraph/{__version__}"

    ROUTES = {"/": {"GET": "page"}, "/index.html": {"GET": "page"}, "/healthz": {"GET": "healthz"},
              "/metadata": {"GET": "metadata"}, "/explain": {"POST": "explain"}}

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        with self.server._count_lock:
            self.server.requests += 1
        url = urlsplit(self.path)
        try:
            methods = self.ROUTES.get(url.path)
            if methods is None:
                raise HTTPError(404, f"no such path: {url.path} (try POST /explain, GET /metadata, GET /healthz)")
            if method not in methods:
                if method in ("POST", "PUT", "PATCH"):
                    self.close_connection = True  # its body stays unread
                self._allow = ", ".join(methods)
                raise HTTPError(405, f"{method} is not allowed on {url.path} (use {self._allow})")
            getattr(self, methods[method])(parse_qs(url.query))
        except HTTPError as exc:
            self._send_json(exc.status, {"error": str(exc)})
        except Exception as exc:  # a bug must cost one request, never the server
            self.close_connection = True
            print(f"relgraph serve: internal error on {method} {url.path}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0]}"})

    # ---- endpoints

    def page(self, query):
        from importlib.resources import files

        self._send(200, "text/html; charset=utf-8", files(__package__).joinpath("static/index.html").read_bytes())

    def healthz(self, query):
        self._send_json(200, self.server.health())

    def metadata(self, query):
        self._send_json(200, self.server.metadata())

    def explain(self, query):
        body = self._read_body()
        ctype = self.headers.get_content_type()
        params = dict(self.headers.get_params() or [])
        req = parse_explain(self.server, ctype, params, body, query)
        out = self.server.batcher.explain(req.x, req.target)
        kind = preferred(self.headers.get("Accept", ""))
        if kind == NPY:
            relevance = out["relevance"][0] if req.single else out["relevance"]
            self._send(200, NPY, npy_bytes(relevance), {
                "X-Predicted": ",".join(map(str, out["logits"].argmax(1))),
                "X-Target": ",".join(map(str, out["target"]))})
        elif kind == PNG:
            self._send(200, PNG, heatmap_png(req, out))
        else:
            heatmap = query.get("heatmap", ["0"])[-1].lower() in ("1", "true", "yes")
            self._send_json(200, explain_json(self.server, req, out, heatmap))

    def _read_body(self) -> bytes:
        """The body, or a refusal decided from Content-Length before reading a byte of it."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length (chunked uploads are not accepted)")
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, f"invalid Content-Length: {length!r}") from None
        if size > self.server.max_request_bytes:
            self.close_connection = True  # the body stays unread; this connection cannot carry another request
            raise HTTPError(413, f"the body is {size} bytes; the limit is {self.server.max_request_bytes} "
                                 f"(--max-request-mb)")
        body = self.rfile.read(size)
        if len(body) != size:
            self.close_connection = True
            raise HTTPError(400, f"the body ended after {len(body)} of {size} bytes")
        return body

    # ---- writing

    def _send(self, status: int, content_type: str, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if status == 405:
            self.send_header("Allow", getattr(self, "_allow", ""))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client left; nothing to tell it
            self.close_connection = True

    def _send_json(self, status: int, doc: dict) -> None:
        self._send(status, "application/json", json.dumps(doc, allow_nan=False).encode())

    def send_error(self, code, message=None, explain=None):
        """Errors http.server raises by itself (bad request line, unknown method) answer in JSON too."""
        self.close_connection = True
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
        self._send_json(code, {"error": message or phrase})

    def log_message(self, format, *args):
        if self.server.log:
            self.server.log(f"{self.address_string()} {format % args}")


# ------------------------------------------------------------------------------------------- command


def add_command(sub) -> None:
    s = sub.add_parser("serve", help="serve explanations over HTTP (dynamic batching, a page at /)")
    s.add_argument("explainer", help="a compiled explainer: .onnx (onnxruntime), or a folder compiled with "
                   "--target triton (its Triton kernels on CUDA, or in the interpreter with TRITON_INTERPRET=1)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-request-mb", type=float, default=16.0, help="largest request body, MiB (else 413)")
    s.add_argument("--max-batch", type=int, default=32, help="most samples in one session call")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a request waits for company")
    s.add_argument("--queue", type=int, default=256, help="requests that may wait (more: 503)")
    s.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime provider (auto: CUDA where onnxruntime has it)")
    s.add_argument("--access-log", action="store_true", help="log every request on stderr")
    s.set_defaults(run=cmd_serve)


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in have:
        raise RelgraphError("this onnxruntime has no CUDA provider (install onnxruntime-gpu: pip install -e '.[gpu]')")
    if device != "cpu" and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (what `docker stop`, systemd and Kubernetes send) stop the server cleanly; SIGINT is
    set explicitly because a server started in the background of a script inherits it ignored."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def cmd_serve(args) -> int:
    from .explainer import Explainer

    for name, value, low in (("--max-batch", args.max_batch, 1), ("--queue", args.queue, 1),
                             ("--max-wait-ms", args.max_wait_ms, 0), ("--port", args.port, 0)):
        if value < low:
            raise RelgraphError(f"{name} must be at least {low}, got {value}")
    if args.max_request_mb <= 0:
        raise RelgraphError(f"--max-request-mb must be positive, got {args.max_request_mb}")
    if args.threads is not None and args.threads < 1:
        raise RelgraphError(f"--threads must be at least 1, got {args.threads}")
    # idle threads must not spin: between batches the request threads need the cores
    explainer = Explainer(args.explainer, threads=args.threads, spinning=False, providers=providers_for(args.device))
    try:
        server = ExplainServer(explainer, args.host, args.port, max_request_bytes=int(args.max_request_mb * 2**20),
                               max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000, queue_size=args.queue,
                               log=(lambda line: print(line, file=sys.stderr, flush=True)) if args.access_log
                               else None)
    except OSError as exc:
        raise RelgraphError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    device = explainer.device
    print(f"serving {args.explainer} ({explainer.rule}, {device}) on {server.url}  "
          f"max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, queue {args.queue}; Ctrl-C stops",
          flush=True)
    _stop_on_signals()
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
    finally:
        server.server_close()
        server.batcher.stop()
    return 0
