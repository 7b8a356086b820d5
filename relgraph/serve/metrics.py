"""``GET /metrics``: the service's counters in Prometheus' text format (prometheus_client).

Each server has its own registry (several may run in one process). Label values come from fixed sets, never
from what a client sends: an unknown path is counted as route "other", an unknown method as "other".
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Requests by route, method and status; latency; batch sizes; samples; queue depth; connections."""

    def __init__(self, routes, queue_depth, connections):
        self.routes = frozenset(routes)
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("relgraph_http_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("relgraph_http_request_duration_seconds",
                                 "Time from a request's head to the last byte of its answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("relgraph_http_requests_in_flight", "Requests being answered now",
                               registry=registry)
        self.batch_size = Histogram("relgraph_batch_size_samples", "Samples in one session call",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.samples = Counter("relgraph_samples_explained", "Samples explained", registry=registry)
        self.queue_depth = Gauge("relgraph_queue_depth", "Requests waiting for the batching worker",
                                 registry=registry)
        self.queue_depth.set_function(queue_depth)
        self.connections = Gauge("relgraph_http_connections", "Open client connections", registry=registry)
        self.connections.set_function(connections)
        self.closed = Counter("relgraph_http_connections_closed",
                              "Connections the server closed on its own, by reason (over_limit: refused with "
                              "503; evicted: idle, to make room; header_timeout; write_timeout; bad_request: "
                              "malformed HTTP)", ["reason"], registry=registry)

    def route(self, path: str) -> str:
        return path if path in self.routes else "other"

    def request(self, path: str, method: str, status: int, seconds: float) -> None:
        route = self.route(path)
        self.requests.labels(route, method if method in METHODS else "other", str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, samples: int) -> None:
        self.batch_size.observe(samples)
        self.samples.inc(samples)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (Prometheus text, or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
