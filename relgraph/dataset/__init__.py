"""``relgraph explain-dataset``: every sample of a data set explained on Ray, into a Parquet dataset.

    relgraph explain-dataset EXPLAINER --data SRC -o OUT [--batch-size 64] [--block-rows 256] [--workers 1]
                             [--cpus-per-worker 1] [--gpus-per-worker 0] [--address HOST:PORT]
                             [--store-size HxW] [--target K] [--backend onnxruntime|triton] [--force]

Ray, pyarrow (and for ``relgraph spray`` scikit-learn and scipy) come with ``pip install 'relgraph[dataset]'``;
this module imports them only when a run starts, so the rest of the command line does not need them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from ..errors import TRITON_STACK, RelgraphError, require
from ..explainer import Explainer, backend_of
from ..interpreter import INTERPRETER_HINT, interpreting
from ..progress import Progress
from . import sources as _sources
from . import store
from .pipeline import connect, largest_block_bytes, object_store_bytes, run

DATASET_STACK = ("ray", "pyarrow")


@dataclass
class Result:
    out: str
    blocks: int        # in the whole run
    computed: int      # computed by this call (the rest were already written)
    summary: dict


def check_backend(explainer_path: str, backend: str | None, gpus_per_worker: float,
                  address: str | None = None) -> str:
    """The backend the workers run: onnxruntime, or a triton folder's launch plan, whose kernels need a GPU
    per worker (or Triton's interpreter on the CPU, ``TRITON_INTERPRET=1``). The kernels run in the workers:
    a local run needs the Triton stack on this machine, a run that joins a cluster (``address``) on its
    nodes, which the actors check when they open the plan."""
    chosen = backend_of(explainer_path, backend)
    if chosen == "triton":
        if address is None:
            require(TRITON_STACK, "the triton backend", "gpu")
        if not gpus_per_worker and not interpreting():
            raise RelgraphError(f"{INTERPRETER_HINT}, or give each worker one (--gpus-per-worker 1), or run the "
                                "folder's explainer.onnx (--backend onnxruntime)")
    return chosen


def plan(explainer_path: str, data: str, *, block_rows: int, batch_size: int, target, store_size,
         backend: str = "onnxruntime"):
    """The explainer's reading spec, the sources, the blocks and the manifest of a run (no Ray)."""
    explainer = Explainer(explainer_path)  # a triton folder: its ONNX explainer, for the inputs and classes
    explainer.targets(target, 1)  # a class out of range is a one-line error here, not in every actor
    spec = _sources.spec_of(explainer)
    if store_size and len(spec.sample_shape) != 3:
        raise RelgraphError("--store-size needs image inputs [N, C, H, W]")
    srcs = _sources.sources(data, spec)
    blocks = _sources.blocks(srcs, block_rows)
    checked = explainer.path if os.path.isfile(explainer.path) else explainer_path
    manifest = {"format": store.FORMAT, "explainer": os.path.abspath(explainer_path),
                "explainer_sha256": store.file_sha256(checked), "data": data,
                "sources": [[s.name, s.kind, s.rows] for s in srcs],
                "blocks": [[[seg[0], seg[3], seg[4]] for seg in b] for b in blocks],
                "batch_size": batch_size, "target": target, "store_size": list(store_size) if store_size else None,
                "input_shape": list(spec.sample_shape), "backend": backend}
    return spec, blocks, manifest


def explain_dataset(explainer_path: str, data: str, out: str, *, batch_size: int = 64, block_rows: int = 256,
                    workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                    address: str | None = None, store_size=None, target: int | None = None, force: bool = False,
                    backend: str | None = None, progress: bool = True) -> Result:
    """Explain every sample behind ``data`` into the Parquet dataset ``out`` (see :mod:`.store`).

    Blocks already in ``out`` from the same run are kept (resume); Ray is joined at ``address`` or started
    locally; a Ray session that is already connected in this process is used as it is. ``backend``: as
    :func:`relgraph.open_explainer` chooses it (a triton folder runs its launch plan, on a GPU per worker).
    """
    require(DATASET_STACK, "explain-dataset", "dataset")
    for name, value in (("--batch-size", batch_size), ("--block-rows", block_rows), ("--workers", workers)):
        if value < 1:
            raise RelgraphError(f"{name} must be at least 1, got {value}")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise RelgraphError("--cpus-per-worker must be positive and --gpus-per-worker not negative")
    start = time.perf_counter()
    backend = check_backend(explainer_path, backend, gpus_per_worker, address)
    spec, blocks, manifest = plan(explainer_path, data, block_rows=block_rows, batch_size=batch_size,
                                  target=target, store_size=store_size, backend=backend)
    if os.path.abspath(out) in (os.path.abspath(explainer_path), os.path.abspath(data)):
        raise RelgraphError("refusing to write over an input; choose another -o")
    done = store.prepare(out, manifest, force=force)
    todo = [(i, b) for i, b in enumerate(blocks) if i not in done]
    computed = 0
    if todo:
        connect(address, num_cpus=workers * cpus_per_worker + 1,
                object_store=object_store_bytes(largest_block_bytes(spec, todo), workers))
        rows = sum(stop - begin for _, b in todo for *_, begin, stop in b)
        with Progress(rows, "explaining", min_total=1 if progress else rows + 1) as bar:
            computed = run(explainer_path, out, todo, spec, batch_size=batch_size, target=target,
                           store_size=store_size, workers=workers, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, backend=backend, on_block=bar.update)
    missing = sorted(set(range(len(blocks))) - store.finished_blocks(out))
    if missing:  # Ray reported success: a block that is not there is a bug, never a silent gap
        raise RuntimeError(f"blocks {missing[:5]} were not written")
    summary = store.summarize(out, manifest, computed, time.perf_counter() - start)
    return Result(out, len(blocks), computed, summary)


# ------------------------------------------------------------------------------------------------ command line


def add_command(sub) -> None:
    e = sub.add_parser("explain-dataset", help="explain every sample of a data set on Ray into Parquet",
                       description="Read a folder or glob of images, .npy/.npz shards or Parquet files, explain "
                                   "every sample on a Ray actor pool, write a Parquet dataset (one file per "
                                   "block; a rerun resumes).")
    e.add_argument("explainer", help="a compiled explainer .onnx (or a folder compiled with --target triton)")
    e.add_argument("--data", required=True, metavar="SRC", help="folder, glob or file: .png/.jpg, .npy, .npz "
                                                                "(array x) or .parquet (a tensor column)")
    e.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (Parquet dataset)")
    e.add_argument("--batch-size", type=int, default=64, help="samples per onnxruntime call (default 64)")
    e.add_argument("--block-rows", type=int, default=256,
                   help="samples per block: the unit of work, of output files and of resuming (default 256)")
    e.add_argument("--workers", type=int, default=1, help="explainer actors (default 1)")
    e.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per actor; onnxruntime threads")
    e.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs per actor: onnxruntime's CUDA provider, or a triton folder's kernels")
    e.add_argument("--address", help="join a running Ray cluster (HOST:PORT, ray://HOST:PORT or auto); "
                                     "default: start Ray on this machine")
    e.add_argument("--store-size", metavar="HxW", type=_size, help="store the relevance downsampled to H×W "
                                                                    "(area sums: totals are kept)")
    e.add_argument("--target", type=int, help="class to explain (default: the predicted one)")
    e.add_argument("--backend", default=None, metavar="{onnxruntime,triton}",
                   help="default: triton (its launch plan, on --gpus-per-worker) for a folder compiled with "
                        "--target triton, else onnxruntime")
    e.add_argument("--force", action="store_true", help="replace an output folder that holds another run")
    e.set_defaults(run=cmd_explain_dataset)


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be HxW, e.g. 16x16, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return h, w


def cmd_explain_dataset(args) -> None:
    result = explain_dataset(args.explainer, args.data, args.output, batch_size=args.batch_size,
                             block_rows=args.block_rows, workers=args.workers,
                             cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                             address=args.address, store_size=args.store_size, target=args.target,
                             force=args.force, backend=args.backend)
    s = result.summary
    print(f"explained {s['explained']} of {s['samples']} samples in {result.blocks} blocks "
          f"({result.computed} computed now, {result.blocks - result.computed} already done) on "
          f"{', '.join(s['devices'])} in {s['seconds']:.1f} s → {result.out}")
    on_cpu = [d for d in s["devices"] if not d.startswith("CUDA")]
    if args.gpus_per_worker and on_cpu:  # onnxruntime falls back to the CPU when it has no CUDA provider
        print(f"relgraph: warning: --gpus-per-worker {args.gpus_per_worker:g}, but blocks ran on {', '.join(on_cpu)} "
              f"(onnxruntime without its CUDA provider? pip install 'relgraph[gpu]' on the workers)", file=sys.stderr)
    if s["failed"]:
        first = s["failures"][0]
        print(f"relgraph: warning: {s['failed']} sample(s) failed (first: {first['id']}: {first['error']}); "
              f"all listed in {os.path.join(result.out, store.SUMMARY)}", file=sys.stderr)
