"""The routes (Starlette) and what wraps every request: body bounds, metrics, the access log.

Decoding and encoding that can take a while (a body over ``INLINE_BYTES``, a heatmap) run on worker threads so
that the event loop keeps answering other connections; small requests are handled inline, where a thread hop
would cost more than the work.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import datetime, timezone
from functools import partial
from importlib.resources import files
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.routing import Route

from .decoding import NPY, PNG, Body, content_type, parse_explain
from .errors import HTTPError
from .responses import explain_json, heatmap_png, npy_bytes, preferred

# path → methods; GET routes answer HEAD too, every route OPTIONS
ROUTES = {"/": ("GET",), "/index.html": ("GET",), "/healthz": ("GET",), "/metadata": ("GET",),
          "/metrics": ("GET",), "/explain": ("POST",)}
INLINE_BYTES = 64 << 10  # bodies up to this size are decoded on the event loop
DRAIN_BYTES = 64 << 10  # an unread body up to this size is read and dropped to keep the connection open
DRAIN_S = 1.0  # ... if it arrives within this time


def allowed(path: str) -> list[str]:
    methods = ROUTES[path]
    return [*methods, *(["HEAD"] if "GET" in methods else []), "OPTIONS"]


def json_response(status: int, doc: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(doc, allow_nan=False).encode(), status, {"Cache-Control": "no-store", **(headers or {})},
                    media_type="application/json")


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


def create_app(service) -> "Guard":
    """The ASGI application of an :class:`~relgraph.serve.server.ExplainServer`."""
    page = files("relgraph").joinpath("static/index.html").read_bytes()

    def endpoint(handler):
        """Answer OPTIONS; turn refusals and bugs into one-line JSON errors (a bug costs one request)."""
        async def run(request: StarletteRequest) -> Response:
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": ", ".join(allowed(request.url.path))})
            try:
                return await handler(request)
            except HTTPError as exc:
                return error_response(exc.status, str(exc))
            except Exception as exc:
                print(f"relgraph serve: internal error on {request.method} {request.url.path}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                traceback.print_exc(file=sys.stderr)
                return error_response(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return run

    async def index(request):
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def healthz(request):
        return json_response(200, service.health())

    async def metadata(request):
        return json_response(200, service.metadata())

    async def metrics(request):
        payload, kind = service.metrics.exposition(request.headers.get("accept", ""))
        return Response(payload, media_type=kind, headers={"Cache-Control": "no-store"})

    async def explain(request):
        body = request.scope["relgraph.body"]
        if not body.expected and body.length is None:
            raise HTTPError(411, "send the body with a Content-Length (or Transfer-Encoding: chunked)")
        data = await body.read(service.max_request_bytes, service.body_timeout)
        kind, params = content_type(request.headers)
        query = parse_qs(request.scope["query_string"].decode("latin-1"))
        decode = partial(parse_explain, service, kind, params, data, query)
        req = decode() if len(data) <= INLINE_BYTES else await run_in_threadpool(decode)
        out = await service.batcher.submit(req.x, req.target, req.inputs)
        answer = preferred(request.headers.get("accept", ""))
        if answer == NPY:
            relevance = out["relevance"][0] if req.single else out["relevance"]
            return Response(npy_bytes(relevance), media_type=NPY, headers={
                "Cache-Control": "no-store", "X-Predicted": ",".join(map(str, out["logits"].argmax(1))),
                "X-Target": ",".join(map(str, out["target"]))})
        if answer == PNG:
            return Response(await run_in_threadpool(heatmap_png, req, out, service.classes), media_type=PNG,
                            headers={"Cache-Control": "no-store"})
        heatmap = query.get("heatmap", ["0"])[-1].lower() in ("1", "true", "yes")
        encode = partial(explain_json, service, req, out, heatmap)
        return json_response(200, encode() if not heatmap and len(data) <= INLINE_BYTES
                             else await run_in_threadpool(encode))

    handlers = {"/": index, "/index.html": index, "/healthz": healthz, "/metadata": metadata, "/metrics": metrics,
                "/explain": explain}
    routes = [Route(path, endpoint(handlers[path]), methods=[*ROUTES[path], "OPTIONS"]) for path in ROUTES]

    async def refused(request, exc: StarletteHTTPException) -> Response:
        """The router's own refusals: no such path, or a method the path does not take."""
        path = request.url.path
        if exc.status_code == 405:
            allow = ", ".join(allowed(path))
            return error_response(405, f"{request.method} is not allowed on {path} (use {allow})", {"Allow": allow})
        if exc.status_code == 404:
            return error_response(404, f"no such path: {path[:200]} (try POST /explain, GET /metadata, "
                                       "GET /healthz, GET /metrics)")
        return error_response(exc.status_code, str(exc.detail))

    app = Starlette(routes=routes, exception_handlers={StarletteHTTPException: refused})
    return Guard(app, service)


class Guard:
    """ASGI middleware around the whole application, for every request:

    - the body is a :class:`Body` (``scope["relgraph.body"]``), read only within its bounds;
    - an answer given before its request's body was read drains a small rest of it, or closes the
      connection: the unread bytes are never parsed as a next request;
    - the request is counted (``/healthz``, ``/metrics``) and, with the access log on, logged as one JSON line.
    """

    def __init__(self, app, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # lifespan is off; nothing else is served
            return await self.app(scope, receive, send)
        service = self.service
        started = time.perf_counter()
        body = scope["relgraph.body"] = Body(receive, scope["headers"])
        sent = {"status": 500, "bytes": 0}

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                await body.drain(DRAIN_BYTES, DRAIN_S)
                if not body.complete:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        service.metrics.in_flight.inc()
        service.requests += 1
        if body.conflict:
            body.broken = True
            app = error_response(400, "the request has both Transfer-Encoding and Content-Length")
        elif scope["method"] == "OPTIONS" and scope["path"] == "*":  # the server as a whole
            app = Response(status_code=204, headers={"Allow": "GET, HEAD, OPTIONS, POST"})
        else:
            app = self.app
        try:
            await app(scope, body.receive, guarded_send)
        finally:
            seconds = time.perf_counter() - started
            service.metrics.in_flight.dec()
            service.metrics.request(scope["path"], scope["method"], sent["status"], seconds)
            if service.log is not None:
                client = scope.get("client")
                service.log({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                             "client": f"{client[0]}:{client[1]}" if client else None,
                             "method": scope["method"], "path": scope["path"][:256],
                             "query": scope["query_string"].decode("latin-1")[:256], "status": sent["status"],
                             "bytes_in": body.received, "bytes_out": sent["bytes"],
                             "duration_ms": round(seconds * 1e3, 3)})
