"""``relgraph serve``: the command line. Cheap to import: the HTTP stack loads only when the command runs."""

from __future__ import annotations

import math
import resource
import sys

from ..errors import RelgraphError, require
from ..explainer import open_explainer
from ..runtimes import add_runtime_argument

SERVE_STACK = ("uvicorn", "httptools", "starlette", "python_multipart", "prometheus_client")
FD_RESERVE = 64  # open files the process needs besides its connections: the model, the listener, the loop, logs
MAX_CONNECTIONS = 1000


def default_max_connections() -> int:
    """1000, or fewer where the open-file limit (ulimit -n) would not leave room for the rest of the process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


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
    s.add_argument("--max-connections", type=int, default=None,
                   help=f"open connections (default {MAX_CONNECTIONS}, fewer under a low ulimit -n); over it the "
                        "longest-idle connection is closed, or the new one answered 503 if none is idle")
    s.add_argument("--keep-alive-s", type=float, default=5.0, help="idle time allowed between requests")
    s.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="time for a request's head to arrive (else 408 and close)")
    s.add_argument("--body-timeout-s", type=float, default=30.0,
                   help="time for a request's body to arrive (else 408), and for a client to read its answer; "
                        "also how long SIGTERM waits for requests in flight")
    add_runtime_argument(s)
    s.add_argument("--access-log", action="store_true", help="log every request on stderr, one JSON object a line")
    s.set_defaults(run=cmd_serve)


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in have:
        raise RelgraphError("this onnxruntime has no CUDA provider (install onnxruntime-gpu: pip install -e '.[gpu]')")
    if device != "cpu" and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_explainer(args):
    """The explainer the server runs, from the command line (the one place it is constructed)."""
    if args.runtime != "onnxruntime":
        if args.device == "cuda":
            raise RelgraphError(f"--device cuda applies to onnxruntime; {args.runtime} runs on the CPU here")
        return open_explainer(args.explainer, runtime=args.runtime, threads=args.threads)
    # idle threads must not spin: between batches the event loop and the decoding threads need the cores
    return open_explainer(args.explainer, threads=args.threads, spinning=False, providers=providers_for(args.device))


def check_args(args) -> None:
    for name, value, low in (("--max-batch", args.max_batch, 1), ("--queue", args.queue, 1),
                             ("--max-wait-ms", args.max_wait_ms, 0), ("--port", args.port, 0)):
        if value < low:
            raise RelgraphError(f"{name} must be at least {low}, got {value}")
    for name, value in (("--max-request-mb", args.max_request_mb), ("--keep-alive-s", args.keep_alive_s),
                        ("--header-timeout-s", args.header_timeout_s), ("--body-timeout-s", args.body_timeout_s)):
        if not (value > 0 and math.isfinite(value)):
            raise RelgraphError(f"{name} must be a positive number, got {value}")
    if args.threads is not None and args.threads < 1:
        raise RelgraphError(f"--threads must be at least 1, got {args.threads}")
    if args.max_connections is None:
        args.max_connections = default_max_connections()
    elif args.max_connections < 1:
        raise RelgraphError(f"--max-connections must be at least 1, got {args.max_connections}")
    else:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and args.max_connections + FD_RESERVE > soft:
            raise RelgraphError(f"--max-connections {args.max_connections} needs {args.max_connections + FD_RESERVE} "
                                f"open files; the limit is {soft} (raise it with ulimit -n)")


def cmd_serve(args) -> int:
    require(SERVE_STACK, "relgraph serve", extra="serve")
    from .server import ExplainServer, log_json_lines

    check_args(args)
    explainer = load_explainer(args)
    try:
        server = ExplainServer(explainer, args.host, args.port, max_request_bytes=int(args.max_request_mb * 2**20),
                               max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000, queue_size=args.queue,
                               max_connections=args.max_connections, keep_alive=args.keep_alive_s,
                               header_timeout=args.header_timeout_s, body_timeout=args.body_timeout_s,
                               log=log_json_lines if args.access_log else None)
    except OSError as exc:
        raise RelgraphError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"serving {args.explainer} ({explainer.rule}, {explainer.device}) on {server.url}  "
          f"max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, queue {args.queue}, "
          f"max connections {args.max_connections}; Ctrl-C stops", flush=True)

    def stopping(signum):
        print("stopping: finishing the requests in flight", file=sys.stderr, flush=True)

    server.serve_forever(on_stop=stopping)
    return 0
