"""The Ray Data pipeline of ``explain-dataset``: read tasks, then an actor pool of explainers.

    blocks still to do ─from_items─▶ read_blocks (tasks) ─▶ ExplainWorker (actor pool, map_batches) ─▶ part files
                                       one row per input            one session per actor, one row (block)
                                       block, samples in it         per call; writes it, returns its counts

Each actor owns one :class:`~relgraph.explainer.Explainer` (onnxruntime on CPU or CUDA, or a Triton launch
plan on a GPU actor) and explains each input block in batches of ``batch_size``. Actors and tasks are retried
by Ray when a worker or a node dies (Ray Data's actor pools restart actors without limit and retry their
tasks); since a block is written
atomically under its own name, a retried block replaces itself and the output has neither duplicates nor
gaps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time

import numpy as np

from ..errors import RelgraphError
from ..explainer import open_explainer
from ..interpreter import interpreting
from . import store
from .sources import Spec, read_segment

CONNECT_TIMEOUT_S = 5.0
# Read tasks hold no CPU: reading is light next to explaining, and a task that asked for a CPU could wait
# forever on a node whose CPUs the actors hold. Their number in flight is capped instead.
READS_PER_WORKER = 2
MIN_OBJECT_STORE = 256 << 20


def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """The [size_out, size_in] box-filter matrix: row i averages input span [i·s, (i+1)·s), s = in/out,
    each input pixel weighted by the length of its overlap with that span (rows sum to 1)."""
    edges = np.arange(size_out + 1) * (size_in / size_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def downsample(relevance: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, C, H, W] → [N, C, height, width] by area *sums*: R'_ij = (H/h)(W/w) Σ_ab A_ia R_ab B_jb with A, B
    the box-filter (area-averaging) matrices, so each output pixel holds the relevance of its footprint and
    Σ R' = Σ R exactly (conservation survives the downsampling)."""
    n, c, h0, w0 = relevance.shape
    if (h0, w0) == (height, width):
        return relevance
    rows, cols = area_weights(h0, height), area_weights(w0, width)
    scale = (h0 / height) * (w0 / width)
    return (np.einsum("ia,ncab,jb->ncij", rows, relevance.astype(np.float64), cols) * scale).astype(np.float32)


def object_store_bytes(block_bytes: int, workers: int) -> int:
    """The object store of a Ray instance started for a run: room for every block in flight (read ahead and
    being explained, ``READS_PER_WORKER`` per worker) four times over, at least ``MIN_OBJECT_STORE``.

    Ray's default store is 30 % of the machine's memory, and it hands each new block fresh pages until it is
    full, so a run's memory grew with the data set (8 MiB per 16 MiB block in the actor alone) up to that
    size; with the store sized to the blocks it stays flat (bench/dataset_memory.py). Ray Data holds the
    reads back when the store is busy, and Ray spills to disk rather than fail."""
    return max(MIN_OBJECT_STORE, 4 * READS_PER_WORKER * workers * block_bytes)


def connect(address: str | None, *, num_cpus: float, object_store: int | None = None) -> None:
    """Join the cluster at ``address`` (checked to answer within a few seconds first), or start Ray
    locally with no dashboard, only the CPUs the run asks for (GPUs: those Ray finds) and an object store
    of ``object_store`` bytes (Ray's default where None)."""
    import ray

    _quiet()
    if ray.is_initialized():
        return
    if address:
        if address != "auto":
            _check_answers(address)
        try:
            with _native_stderr_silenced():
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:
            raise RelgraphError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
        return
    # "local": a new instance of our own, even where another Ray runs on this machine (ray.init() would join it)
    with _native_stderr_silenced():
        ray.init(address="local", num_cpus=max(1, int(np.ceil(num_cpus))), include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False, object_store_memory=object_store)


@contextlib.contextmanager
def _native_stderr_silenced():
    """The driver's core worker (C++) writes a line to file descriptor 2 as it starts, whatever the log level:
    it goes to the null device instead. Python's own errors are raised, not printed, so none is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_answers(address: str) -> None:
    """ray.init waits long on a dead address; a plain TCP connect says in seconds whether anyone is there."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RelgraphError(f"Ray address must be HOST:PORT, ray://HOST:PORT or auto, got {address}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RelgraphError(f"no Ray cluster answers at {address}: {exc.strerror or exc}") from None


def _quiet() -> None:
    # before ray.data configures its loggers and the driver's core worker starts: progress is ours, and
    # Ray's own notes go to its log files, not to the user's terminal
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


def _check_resources(available: dict, cpus: float, gpus: float) -> None:
    """An actor that asks for more than the cluster has would wait forever: say so instead."""
    for name, wanted, flag in (("CPU", cpus, "--cpus-per-worker"), ("GPU", gpus, "--gpus-per-worker")):
        have = available.get(name, 0.0)
        if wanted > have:
            raise RelgraphError(f"{flag} {wanted:g}: the Ray cluster has {have:g} {name}s in all, so no worker "
                                "could start")


def read_blocks(batch: dict, spec: Spec) -> dict:
    """A read task: one block descriptor → one row holding the whole block: its segments, its samples x [n, ...]
    (a tensor cell) and, as JSON, one error message per sample ("" where it was read).

    A block travels as one row, so the explaining actor, which takes one row per call, gets it whole whatever
    batching Ray Data applies (a GPU actor must be given a batch size; rows of samples would then be regrouped
    across blocks)."""
    (block,), (segments,) = batch["block"], batch["segments"]
    read = [read_segment(segment, spec) for segment in json.loads(segments)]
    errors = [e or "" for _, err in read for e in err]
    return {"block": np.array([block], np.int64), "segments": np.array([segments], object),
            "x": np.concatenate([x for x, _ in read])[None], "errors": np.array([json.dumps(errors)], object)}


def samples_of(segments: list) -> tuple[list, list, list]:
    """The ids (``"<source>:<row>"``), sources and rows of a block's samples, in order."""
    ids, sources, rows = [], [], []
    for name, _, _, start, stop in segments:
        ids += [f"{name}:{r}" for r in range(start, stop)]
        sources += [name] * (stop - start)
        rows += range(start, stop)
    return ids, sources, rows


class ExplainWorker:
    """An actor: one explainer session; each call explains one block and writes it."""

    def __init__(self, path: str, out: str, batch_size: int, target: int | None, store_size, threads: int,
                 gpus: float, backend: str):
        self.out, self.batch_size, self.target, self.store_size = out, batch_size, target, store_size
        # A node that cannot open the explainer (no GPU that torch sees, no Triton stack, an unreadable path)
        # is the user's setup, not a crash: the refusal goes back to the driver as data and is said in one
        # line there. Raised here, Ray would restart the actor and end in an ActorDiedError and its traceback.
        self.refused = ""
        try:
            self.explainer = self._open(path, threads, gpus, backend)
        except RelgraphError as exc:
            self.refused = f"a worker on {socket.gethostname()} cannot run the explainer: {exc}"

    @staticmethod
    def _open(path: str, threads: int, gpus: float, backend: str):
        if backend == "triton":  # the launch plan: CUDA on a GPU actor, else Triton's interpreter
            return open_explainer(path, backend=backend)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpus else None
        return open_explainer(path, backend=backend, threads=threads, spinning=False, providers=providers)

    def __call__(self, batch: dict) -> dict:
        if self.refused:
            return {"block": np.array([-1]), "rows": np.array([0]), "failed": np.array([0]),
                    "seconds": np.array([0.0]), "refused": np.array([self.refused])}
        done = {"block": [], "rows": [], "failed": [], "seconds": [], "refused": []}
        for block, segments, x, errors in zip(batch["block"], batch["segments"], batch["x"], batch["errors"]):
            start = time.perf_counter()
            ids, sources, rows = samples_of(json.loads(segments))
            errors = json.loads(errors)
            if not len(ids) == len(errors) == len(x):  # a block must never be written in part
                raise RuntimeError(f"block {block}: {len(x)} samples and {len(errors)} read results for "
                                   f"{len(ids)} ids")
            failed = [[i, e] for i, e in zip(ids, errors) if e]
            ok = np.array([k for k, e in enumerate(errors) if not e], np.int64)
            explained = self.explain(np.asarray(x)[ok])
            table = store.block_table([ids[k] for k in ok], [sources[k] for k in ok], np.asarray(rows)[ok],
                                      *explained, failed, self.explainer.device)
            store.write_block(self.out, int(block), table)
            done["block"].append(int(block))
            done["rows"].append(len(ok))
            done["failed"].append(len(failed))
            done["seconds"].append(time.perf_counter() - start)
            done["refused"].append("")
        return {k: np.array(v) for k, v in done.items()}

    def explain(self, x: np.ndarray):
        """(target, logits, relevance, bias_relevance) of the samples ``x``, in batches of ``batch_size``."""
        parts = [self.explainer.explain(x[i:i + self.batch_size], self.target)
                 for i in range(0, len(x), self.batch_size)]
        if parts:
            joined = {k: np.concatenate([p[k] for p in parts]) for k in ("target", "logits", "relevance",
                                                                      "bias_relevance")}
        else:  # every sample of the block failed: an empty table of the right shapes
            classes = self.explainer.num_classes or 0
            joined = {"target": np.zeros(0, np.int64), "logits": np.zeros((0, classes), np.float32),
                      "relevance": np.zeros((0, *x.shape[1:]), np.float32), "bias_relevance": np.zeros(0)}
        relevance = joined["relevance"]
        if self.store_size:
            relevance = downsample(relevance, *self.store_size)
        return joined["target"], joined["logits"], relevance, joined["bias_relevance"]


def _worker_environment(backend: str) -> dict:
    """Triton reads TRITON_INTERPRET when it compiles a kernel: a driver that interprets has its workers do so
    too, on whatever node they run (a cluster's workers do not inherit the driver's environment)."""
    if backend == "triton" and interpreting():
        return {"runtime_env": {"env_vars": {"TRITON_INTERPRET": "1"}}}
    return {}


def largest_block_bytes(spec: Spec, todo: list[tuple[int, list]]) -> int:
    """The input bytes of the largest block still to do (float32 samples)."""
    return int(np.prod(spec.sample_shape)) * 4 * max(sum(stop - start for *_, start, stop in segments)
                                                     for _, segments in todo)


def run(explainer_path: str, out: str, todo: list[tuple[int, list]], spec: Spec, *, batch_size: int, target,
        store_size, workers: int, cpus_per_worker: float, gpus_per_worker: float, backend: str = "onnxruntime",
        on_block=None) -> int:
    """Explain the blocks ``todo`` ([(index, segments)]) on the connected Ray cluster with ``backend``; return
    how many were computed. ``on_block(rows)`` is called as each block is written (progress)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    _check_resources(ray.cluster_resources(), cpus_per_worker, gpus_per_worker)
    block_bytes = largest_block_bytes(spec, todo)
    # a block is one row, which Ray Data cannot slice: a target below its size only makes Ray Data try, and warn
    ctx.target_max_block_size = max(ctx.target_max_block_size or 0, 4 * block_bytes)
    items = [{"block": index, "segments": json.dumps(segments)} for index, segments in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(read_blocks, batch_size=1, fn_kwargs={"spec": spec}, num_cpus=0,
                        concurrency=min(READS_PER_WORKER * workers, len(todo)), batch_format="numpy")
    ds = ds.map_batches(ExplainWorker, batch_size=1, batch_format="numpy",  # one row: one whole block
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        fn_constructor_kwargs={"path": os.path.abspath(explainer_path), "out": os.path.abspath(out),
                                               "batch_size": batch_size, "target": target,
                                               "store_size": store_size, "gpus": gpus_per_worker,
                                               "threads": max(1, int(cpus_per_worker)), "backend": backend},
                        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None, **_worker_environment(backend))
    computed = set()
    for done in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for block, rows, failed, refused in zip(done["block"], done["rows"], done["failed"], done["refused"]):
            if refused:
                raise RelgraphError(str(refused))
            if int(block) not in computed and on_block:
                on_block(int(rows) + int(failed))
            computed.add(int(block))
    return len(computed)
