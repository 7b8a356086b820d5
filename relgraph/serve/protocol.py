"""Connections: uvicorn's HTTP/1.1 protocol (httptools) with every wait bounded and a connection limit.

uvicorn parses HTTP with httptools (llhttp, the parser of Node.js), which refuses malformed request lines,
headers and chunked framing, and frames every body itself, so a body the answer did not read is never parsed
as a next request. It bounds the idle time between requests (keep-alive). This subclass adds what a service
facing the open network needs:

- a bounded head: at most ``MAX_HEAD_BYTES`` of request line and headers (431 past it; an unfinished head
  is cut once that much of it has arrived after its first read, so httptools never buffers more), and a Host
  header on every HTTP/1.1 request (400 without one, as RFC 9112 asks);
- a head timeout: a request's head must arrive whole within ``header_timeout`` of the connection opening, or of
  its first byte on a kept-alive connection (uvicorn's keep-alive timeout bounds the idle time before that);
  data trickling in does not reset it (slowloris). A partial head gets 408, none a close;
- a write timeout: a client that stops reading its answer for ``write_timeout`` is disconnected;
- at most ``max_connections`` connections. A new one over the limit closes the connection idle the longest
  (no request in progress: waiting for a head, or kept alive), so idle connections cannot lock clients out;
  if every connection has a request in progress, the new one is answered 503 at once and closed. Beyond a
  further margin, connections are reset unanswered, so file descriptors never run out;
- malformed requests are answered in JSON, like every other error.

httptools parses in C: per request it costs about half the CPU of h11's pure-Python parser, which made the
server's event loop the bottleneck on small models (bench/RESULTS.md, `relgraph serve` under load).
"""

from __future__ import annotations

import json
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 << 10  # request line and headers of one request
REFUSAL_MARGIN = 64  # connections over the limit being answered 503 at once; past that they are reset
LINGER_S = 1.0  # how long a refused connection may take to read its 503 before it is closed


def raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete JSON error response that closes the connection, for answers given outside a request."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"cache-control: no-store\r\nconnection: close\r\n\r\n").encode() + body


class Limits:
    """What the guarded protocol enforces, and where it reports (metrics, the access log)."""

    def __init__(self, *, max_connections: int, header_timeout: float, write_timeout: float, metrics=None,
                 log=None):
        self.max_connections, self.header_timeout, self.write_timeout = max_connections, header_timeout, write_timeout
        self.metrics, self.log = metrics, log

    def closed(self, reason: str, client) -> None:
        if self.metrics is not None:
            self.metrics.closed.labels(reason).inc()
        if self.log is not None:
            self.log({"event": "connection_closed", "reason": reason,
                      "client": f"{client[0]}:{client[1]}" if client else None})


class BadHead(Exception):
    """A request head refused while parsing it: raised in a parser callback, answered by ``send_400_response``."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def _head_too_large() -> BadHead:
    return BadHead(431, "Request Header Fields Too Large",
                   f"the request line and headers exceed {MAX_HEAD_BYTES >> 10} KiB")


class GuardedProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` under :class:`Limits` (set on a subclass by :func:`guarded`)."""

    limits: Limits

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.last_active = time.monotonic()
        self.head_bytes = 0  # bytes received towards the next request's head
        self.refused = False
        self.bad_head = None  # why the parser was stopped, for the answer
        self.in_head = False  # the parser is inside a request's head
        self.head_buffered = 0  # bytes of an unfinished head received after the chunk it began in
        self.head_timer = self.write_timer = self.linger_timer = None
        self._arm_head_timer()
        if len(self.connections) > self.limits.max_connections:  # counting only the open ones costs a scan
            over = sum(not c.transport.is_closing() for c in self.connections) - self.limits.max_connections
            if over > 0 and not self._evict_idle():
                self._refuse(reset=over > REFUSAL_MARGIN)

    def connection_lost(self, exc) -> None:
        for timer in (self.head_timer, self.write_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.refused:  # read and dropped, so that closing does not reset the connection under its 503
            return
        starts_in_head = self.in_head or not self.busy
        if not self.busy:
            if not self.head_bytes and self.head_timer is None:  # a kept-alive connection's next head begins
                self._arm_head_timer()
            self.head_bytes += len(data)
        super().data_received(data)
        if starts_in_head and self.in_head and not self.transport.is_closing():
            # httptools keeps an unfinished header to itself until its line ends: bound what it buffers
            self.head_buffered += len(data)
            if self.head_buffered > MAX_HEAD_BYTES:
                self.bad_head = _head_too_large()
                self.send_400_response(str(self.bad_head))
        if self.busy and self.head_timer is not None:  # the head is complete: the body has its own deadline
            self.head_timer.cancel()
            self.head_timer = None

    def on_response_complete(self) -> None:
        self.head_bytes = 0  # what arrives next is the next request's (a pipelined one may start right here)
        super().on_response_complete()
        self.last_active = time.monotonic()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_timer is None:
            self.write_timer = self.loop.call_later(self.limits.write_timeout, self._write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    # ---- parser callbacks (httptools reports an exception raised in one as a parse error)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_buffered = True, 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEAD_BYTES:
            self.bad_head = _head_too_large()
        elif self.parser.get_http_version() == "1.1" and not any(name == b"host" for name, _ in self.headers):
            self.bad_head = BadHead(400, "Bad Request", "an HTTP/1.1 request must carry a Host header")
        if self.bad_head is not None:
            raise self.bad_head
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """The parser refused the request (malformed head or framing, or a :class:`BadHead`): a JSON error,
        then close."""
        bad = self.bad_head or BadHead(400, "Bad Request",
                                       "malformed HTTP request (request line, headers or body framing)")
        self.limits.closed("bad_request", self.client)
        self.transport.write(raw_response(bad.status, bad.reason, str(bad)))
        self.transport.close()

    # ---- state

    @property
    def busy(self) -> bool:
        """A request is in progress (its head arrived, its answer is not complete)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.busy or self.transport.is_closing():
            return
        self.limits.closed("header_timeout", self.client)
        if self.head_bytes:
            self.transport.write(raw_response(408, "Request Timeout", f"the request head did not arrive within "
                                                                      f"{self.limits.header_timeout:g} s"))
        self.transport.close()

    def _write_timeout(self) -> None:
        self.write_timer = None
        self.limits.closed("write_timeout", self.client)
        self.transport.abort()

    def _evict_idle(self) -> bool:
        """Close the connection idle the longest, if any is idle; whether one was."""
        idle = [c for c in self.connections if c is not self and isinstance(c, GuardedProtocol)
                and not c.busy and not c.refused and not c.transport.is_closing()]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.limits.closed("evicted", victim.client)
        victim.transport.close()
        return True

    def _refuse(self, reset: bool) -> None:
        """503 at once, then close once the client has read it (or after ``LINGER_S``)."""
        self.refused = True
        self.limits.closed("over_limit", self.client)
        if reset:
            self.transport.abort()
            return
        self.transport.write(raw_response(503, "Service Unavailable",
                                          f"the server is at its limit of {self.limits.max_connections} "
                                          "connections with requests in progress; retry later"))
        self.transport.write_eof()
        self.linger_timer = self.loop.call_later(LINGER_S, self.transport.close)


def guarded(limits: Limits) -> type[GuardedProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to these limits."""
    return type("RelgraphHTTPProtocol", (GuardedProtocol,), {"limits": limits})
