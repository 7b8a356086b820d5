"""The server: one explainer, its batcher and metrics, the application, uvicorn on a bound socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import time

import uvicorn

from ..errors import RelgraphError
from ..preprocess import model_classes, model_preprocess
from ..text import TextEncoder
from ..version import __version__
from .app import ROUTES, create_app
from .batching import Batcher
from .metrics import Metrics
from .protocol import Limits, guarded

BACKLOG = 1024  # listen backlog: many clients connecting at once must not be turned away
# asyncio accepts up to its "backlog" connections in one go, before any of them is seen by the protocol (which
# enforces --max-connections): a small batch keeps the file descriptors in flight well under FD_RESERVE
ACCEPT_BATCH = 8


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv4 or IPv6 by the address); OSError if the address is taken or wrong."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio disables Nagle's algorithm only on sockets that say IPPROTO_TCP, and an answer's
    # headers and body leave in two writes (with Nagle, the body waits for a delayed ACK: 40 ms on Linux)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn's server with our signal handling: SIGINT or SIGTERM stops accepting connections, lets the
    requests in flight finish (at most the graceful timeout), then returns; a second signal stops waiting.
    (uvicorn's own handler re-raises the signal after shutting down, which would end the process by it.)"""

    on_stop = None

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        for sock in sockets or []:  # asyncio listened with the accept batch; the kernel's queue stays long
            sock.listen(BACKLOG)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, frame):
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            if self.on_stop is not None:
                self.on_stop(signum)

        # set explicitly: a server started in the background of a script inherits SIGINT ignored
        original = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class ExplainServer:
    """An HTTP service around one explainer and its batcher (see :mod:`relgraph.serve`).

    The socket is bound at construction (``url`` is known, a taken port fails here with OSError).
    ``start()`` serves from a background thread and ``close()`` stops it (tests, embedding);
    ``serve_forever()`` serves in the calling thread until SIGINT or SIGTERM.
    """

    def __init__(self, explainer, host: str = "127.0.0.1", port: int = 8000, *, max_request_bytes: int = 16 << 20,
                 max_batch: int = 32, max_wait: float = 0.005, queue_size: int = 256, max_connections: int = 1000,
                 keep_alive: float = 5.0, header_timeout: float = 10.0, body_timeout: float = 30.0, log=None):
        self.explainer = explainer
        self.max_request_bytes = max_request_bytes
        self.body_timeout = body_timeout
        self.preprocess = model_preprocess(explainer.metadata)
        self.classes = model_classes(explainer.metadata)
        try:  # a token explainer compiled with --tokenizer takes {"text": ...}; why another does not, for its 400
            self.text, self.text_refusal = TextEncoder.of(explainer, "this explainer"), None
        except RelgraphError as exc:
            self.text, self.text_refusal = None, str(exc)
        self.log = log
        self.started = time.time()
        self.requests = 0
        self._thread = None
        self.socket = listen(host, port)
        self.metrics = Metrics(ROUTES, queue_depth=lambda: self.batcher.queue.qsize(),
                               connections=lambda: len(self.uvicorn.server_state.connections))
        self.batcher = Batcher(explainer, max_batch=max_batch, max_wait=max_wait, queue_size=queue_size,
                               on_batch=self.metrics.batch)
        limits = Limits(max_connections=max_connections, header_timeout=header_timeout, write_timeout=body_timeout,
                        metrics=self.metrics, log=log)
        config = uvicorn.Config(create_app(self), http=guarded(limits), ws="none", lifespan="off", log_config=None,
                                access_log=False, server_header=False, headers=[("server", f"relgraph/{__version__}")],
                                timeout_keep_alive=keep_alive, timeout_graceful_shutdown=body_timeout,
                                proxy_headers=False,  # the client is the peer: X-Forwarded-For is not trusted
                                backlog=ACCEPT_BATCH)
        # uvicorn warns on every malformed request and over-limit connection; /metrics and the access log count
        # them instead, and its errors (a bug) still reach stderr
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        self.uvicorn = _Uvicorn(config)

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def class_name(self, c: int) -> str:
        return self.classes[c] if self.classes and 0 <= c < len(self.classes) else str(c)

    def metadata(self) -> dict:
        e = self.explainer
        return {"rule": e.rule, "input": {"name": e.input_name, "shape": e.input_shape},
                "num_classes": e.num_classes, "classes": self.classes, "tokens": e.tokens,
                "text": self.text is not None,
                "preprocess": self.preprocess.as_dict() if self.preprocess else None,
                "max_batch": self.batcher.max_batch, "max_request_bytes": self.max_request_bytes,
                "version": __version__}

    def health(self) -> dict:
        return {"status": "ok", "queued": self.batcher.queue.qsize(), "requests": self.requests,
                "batches": self.batcher.batches, "samples": self.batcher.samples,
                "uptime_s": round(time.time() - self.started, 3)}

    async def _serve(self) -> None:
        try:
            await self.uvicorn.serve(sockets=[self.socket])
        finally:  # requests still queued (a forced stop) hear 503; the worker ends
            await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)

    def serve_forever(self, on_stop=None) -> None:
        """Serve until SIGINT or SIGTERM; ``on_stop(signum)`` hears the signal."""
        self.uvicorn.on_stop = on_stop
        asyncio.run(self._serve())

    def start(self) -> "ExplainServer":
        """Serve from a background thread; returns once connections are accepted."""
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="relgraph-http",
                                        daemon=True)
        self._thread.start()
        while not self.uvicorn.started and self._thread.is_alive():
            time.sleep(0.005)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.uvicorn.should_exit = True
            self._thread.join()
        else:
            self.socket.close()
            self.batcher.stop()


def log_json_lines(record: dict) -> None:
    """The access log: one JSON object per line on stderr."""
    print(json.dumps(record), file=sys.stderr, flush=True)
