"""``relgraph serve``: explanations over HTTP, with dynamic batching.

    relgraph serve EXPLAINER.onnx [--host 127.0.0.1] [--port 8000] [--max-request-mb 16] [--max-batch 32]
                   [--max-wait-ms 5] [--queue 256] [--threads N] [--max-connections N] [--access-log] ...

Endpoints: ``POST /explain[?target=K][&heatmap=1]``, ``GET /metadata``, ``GET /healthz``, ``GET /metrics``
(Prometheus) and a page at ``/``.

HTTP is uvicorn's (httptools) under Starlette's routing; forms are parsed by python-multipart; metrics are
prometheus_client's. All of it is the ``[serve]`` extra. Ours are the batching, the bounds and the page:

- ``batching``: one worker thread owns the explainer; requests queue their samples and are answered in
  batches of up to ``--max-batch`` samples gathered for at most ``--max-wait-ms``;
- ``protocol``: connections, with every wait bounded and at most ``--max-connections``;
- ``decoding``: bodies read within ``--max-request-mb`` and ``--body-timeout-s``, then checked;
- ``app``: the routes, draining or closing after unread bodies, counting and logging every request;
- ``metrics``, ``responses``, ``server`` (the whole), ``command`` (the command line).
"""

from __future__ import annotations

from .command import SERVE_STACK, add_command
from ..errors import require

__all__ = ["ExplainServer", "add_command"]


def __getattr__(name: str):
    """``ExplainServer`` loads the HTTP stack on first use, so that the CLI starts without it."""
    if name == "ExplainServer":
        require(SERVE_STACK, "relgraph serve", extra="serve")
        from .server import ExplainServer

        return ExplainServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
