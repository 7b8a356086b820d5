#!/usr/bin/env python
"""Load test for ``relgraph serve``: latency percentiles and throughput, without and with dynamic batching.

For each model and each ``--max-batch`` the script starts ``relgraph serve`` in its own process on a free
loopback port, waits for ``/healthz``, then ``--clients`` closed-loop clients (threads in this process,
one keep-alive connection each) send one-sample requests for ``--seconds`` (after ``--warmup`` seconds
not counted). Every request is timed from send to the last byte of its answer. The report gives p50 / p99
latency, requests per second, the mean batch the server formed (samples / session calls, from
``/healthz``) and the server process's CPU time per request (user + system, from /proc: on a shared machine
the least noisy of these figures), and checks that every answer had status 200.

``--tree DIR`` serves from another checkout of relgraph (e.g. ``git worktree add /tmp/old <commit>``), so that
two server versions can be measured in turns under the same conditions.

Models: ``digits`` (the bundled CNN, compiled here) and ``resnet18`` (torchvision, random seeded weights,
exported and compiled once into ``bench/.cache`` as ``bench_cpu.py`` does; needs torch and torchvision).

    python bench/serve_load.py                                        # digits and resnet18, max batch 1 and 32
    python bench/serve_load.py --models digits --clients 32 --seconds 20
    python bench/serve_load.py --markdown /tmp/serve.md               # also write the report to a file
    python bench/serve_load.py --models digits --tree /tmp/old        # the server of another checkout
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE = BENCH_DIR / ".cache"
DIGITS = REPO_ROOT / "models" / "digits" / "digits_cnn.onnx"
sys.path.insert(0, str(REPO_ROOT))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- models


def explainer_for(model: str, rule: str) -> tuple[Path, np.ndarray]:
    """The compiled explainer (made once, cached) and one input sample for it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if model == "digits":
        source, sample = DIGITS, np.load(REPO_ROOT / "models" / "digits" / "samples.npy")[0]
    else:
        sys.path.insert(0, str(BENCH_DIR))
        import bench_cpu

        source = bench_cpu.model_path(CACHE, model)
        if not source.exists():
            log(f"exporting {model} to {source}")
            bench_cpu.worker_export({"model": model, "path": str(source)})
        sample = bench_cpu.make_input(1)[0]
    path = CACHE / f"{source.stem}.{rule}.onnx"
    if not path.exists() or path.stat().st_mtime < source.stat().st_mtime:
        import relgraph

        log(f"compiling {path.name}")
        relgraph.compile(str(source), rule=rule, output=str(path), overwrite=True)
    return path, sample.astype(np.float32)


# ------------------------------------------------------------------------------------------- server


class Server:
    """``relgraph serve`` in its own process; its URL is read from the line it prints when listening."""

    def __init__(self, explainer: Path, max_batch: int, max_wait_ms: float, threads: int | None,
                 tree: Path = REPO_ROOT):
        command = [sys.executable, "-m", "relgraph.cli", "serve", str(explainer), "--port", "0",
                   "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue", "1024"]
        if threads:
            command += ["--threads", str(threads)]
        self.command = command
        # stderr to a file: a pipe nobody reads would stall a server that logs
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)))
        line = self.proc.stdout.readline()
        found = re.search(r"http://([\d.]+):(\d+)", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"relgraph serve did not start: {line}")
        self.host, self.port = found.group(1), int(found.group(2))

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.send_signal(2)  # Ctrl-C: the server's clean stop
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------------- load


def run_load(server: Server, body: bytes, clients: int, warmup: float, seconds: float) -> dict:
    """Closed loop: each client sends its next request when the last is answered."""
    from relgraph.progress import Progress

    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                conn.request("POST", "/explain", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                done = time.perf_counter()
                if response.status != 200:
                    failures.append(f"{response.status}")
                elif sent >= measure_from:
                    latencies[k].append(done - sent)
        except Exception as exc:  # noqa: BLE001 -- counted and reported
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    health_before, cpu_before = None, server.cpu_seconds()
    with Progress(int(warmup + seconds), "  load (s)") as bar:
        while time.perf_counter() < stop_at:
            time.sleep(1.0)
            if health_before is None and time.perf_counter() >= measure_from:
                health_before = server.get("/healthz")
                cpu_before = server.cpu_seconds()
            bar.update()
    for t in threads:
        t.join()
    cpu = server.cpu_seconds() - cpu_before
    health = server.get("/healthz")
    health_before = health_before or {"batches": 0, "samples": 0}
    lat = np.array([x for per in latencies for x in per])
    batches = health["batches"] - health_before["batches"]
    return {
        "requests": int(lat.size), "failures": failures,
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat.size else float("nan"),
        "rps": lat.size / seconds,
        "mean_batch": (health["samples"] - health_before["samples"]) / batches if batches else float("nan"),
        "cpu_ms": cpu / lat.size * 1e3 if lat.size else float("nan"),
    }


def npy_body(sample: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, sample[None])
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- report


def markdown(rows: list[dict], args) -> str:
    cores = os.cpu_count()
    lines = [
        f"### relgraph serve under load ({time.strftime('%Y-%m-%d')})", "",
        f"- Machine: {platform.machine()}, {cores} CPU cores visible (shared with other work: figures are "
        f"indicative), {platform.python_version()}, onnxruntime {__import__('onnxruntime').__version__}, CPU "
        f"provider, {'default' if not args.threads else args.threads} intra-op threads.",
        f"- Load: {args.clients} closed-loop clients (threads of one process, keep-alive), one sample per request "
        f"(.npy in, relevance .npy out), {args.warmup:g} s warm-up then {args.seconds:g} s measured; server "
        f"`--max-wait-ms {args.max_wait_ms:g}`, in its own process, loopback.",
        f"- Command: `{' '.join(['python', 'bench/serve_load.py', *sys.argv[1:]])}`",
        f"- Server: {'this checkout' if args.tree is None else f'the checkout in {args.tree}'}.", "",
        "| model | rule | max batch | requests | p50 ms | p99 ms | req/s | mean batch | server CPU ms/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['rule']} | {r['max_batch']} | {r['requests']} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['rps']:.1f} | {r['mean_batch']:.1f} | {r['cpu_ms']:.2f} | "
                     f"{len(r['failures'])} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits,resnet18", help="comma-separated: digits, resnet18")
    p.add_argument("--rule", default="epsilon-plus-flat")
    p.add_argument("--max-batch", default="1,32", help="comma-separated --max-batch values to compare")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per configuration")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads of the server")
    p.add_argument("--tree", type=Path, help="serve from this checkout of relgraph (default: this one)")
    p.add_argument("--markdown", help="also write the report to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        explainer, sample = explainer_for(model, args.rule)
        body = npy_body(sample)
        for max_batch in [int(b) for b in args.max_batch.split(",")]:
            log(f"{model}: max batch {max_batch}, {args.clients} clients")
            server = Server(explainer, max_batch, args.max_wait_ms, args.threads, args.tree or REPO_ROOT)
            try:
                result = run_load(server, body, args.clients, args.warmup, args.seconds)
            finally:
                server.stop()
            rows.append({"model": model, "rule": args.rule, "max_batch": max_batch, **result})
            log(f"  p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, {result['rps']:.1f} req/s, "
                f"mean batch {result['mean_batch']:.1f}, server CPU {result['cpu_ms']:.2f} ms/req, "
                f"{len(result['failures'])} errors")
            for failure in sorted(set(result["failures"])):
                log(f"  error: {failure} (×{result['failures'].count(failure)})")
    report = markdown(rows, args)
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report)
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
