"""explain-dataset throughput against a plain loop of Explainer.explain, and SpRAy's time on 10,000 heatmaps.

    python bench/dataset_throughput.py [--samples 8192] [--block-rows 1024] [--batch-size 256] [--spray 10000]

1. The shapes shortcut model (ε rule), ``--samples`` held-out images in .npy shards of ``--block-rows``.
   *loop*: one onnxruntime session (1 thread), ``explain`` in batches of ``--batch-size`` over the same
   arrays, reading them from the shards; then the same loop writing each shard's results as a Parquet block,
   the work explain-dataset does without Ray; then two such loops at once, in two processes, each on half the
   shards: what two workers can reach on this machine without Ray, the ceiling for *ray 2*. *ray 1* / *ray 2*: ``explain_dataset`` with 1 and 2 workers
   (1 CPU each), Ray already started (its start is reported apart), actor start included. For these the
   table also gives the time to the first block written (Ray Data's and the actors' start, paid once) and
   the rate once every worker runs (paid per block), read from the block files' times.
2. SpRAy (``relgraph.spray.analyse``) of ``--spray`` heatmaps of 32×32, the shapes model's on as many
   generated held-out images, analysed as one group: pixel and histogram features, with and without t-SNE.

Prints one table; the figures go to bench/RESULTS.md with the machine they ran on.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models" / "shapes"))

import data as shapes_data  # noqa: E402

import relgraph  # noqa: E402
from relgraph import spray  # noqa: E402
from relgraph.dataset import explain_dataset, store  # noqa: E402
from relgraph.dataset.pipeline import connect  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--block-rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--spray", type=int, default=10000, help="heatmaps for the SpRAy timing (0: skip it)")
    p.add_argument("--spray-only", action="store_true", help="skip the throughput part")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="relgraph-bench-"))
    explainer = relgraph.compile(str(ROOT / "models" / "shapes" / "shapes_cnn.onnx"), rule="epsilon",
                                 output=str(work / "shapes.onnx")).path
    if not args.spray_only:
        throughput(args, work, explainer)
    if args.spray:
        spray_time(args, explainer)
    shutil.rmtree(work, ignore_errors=True)


def throughput(args, work: Path, explainer: str) -> None:
    x = shapes_data.make_split("heldout", args.samples)["x"]
    shards = work / "data"
    shards.mkdir()
    for i, start in enumerate(range(0, len(x), args.block_rows)):
        np.save(shards / f"shard{i:04d}.npy", x[start:start + args.block_rows])
    rows = [("loop of Explainer.explain (1 thread)", loop(args, explainer, shards, None), None)]
    rows.append(("the same loop, writing the same Parquet blocks", loop(args, explainer, shards, work / "loop-out"), None))
    rows.append(("two such loops at once, one process each", parallel_loops(args, explainer, shards, work, 2), None))
    start = time.perf_counter()
    connect(None, num_cpus=3)
    print(f"ray.init (local, 3 CPUs; not in the rates): {time.perf_counter() - start:.2f} s")
    for workers in (1, 2):
        out = work / f"out{workers}"
        start = time.perf_counter()
        explain_dataset(explainer, str(shards), str(out), batch_size=args.batch_size,
                        block_rows=args.block_rows, workers=workers, progress=False)
        rows.append((f"explain-dataset, {workers} worker(s)", time.perf_counter() - start, steady(out, start, workers)))

    print(f"{args.samples} samples of 1×32×32, shapes CNN, ε; batch {args.batch_size}, blocks of {args.block_rows}")
    print(f"{'':48} {'seconds':>8} {'samples/s':>10} {'to 1st block':>13} {'steady samples/s':>17}")
    for name, seconds, stead in rows:
        first, rate = (f"{stead[0]:13.2f}", f"{stead[1]:17.0f}") if stead else (f"{'':13}", f"{'':17}")
        print(f"{name:48} {seconds:8.2f} {args.samples / seconds:10.0f} {first} {rate}")


def loop(args, explainer: str, shards: Path, out: Path | None) -> float:
    """Seconds for one onnxruntime session (1 thread) to explain every shard in batches, and with ``out``
    to write each shard's results as explain-dataset writes a block (Arrow table, Parquet file)."""
    start = time.perf_counter()
    e = relgraph.Explainer(explainer, threads=1, spinning=False)
    if out is not None:
        out.mkdir()
    for block, f in enumerate(sorted(shards.iterdir())):
        shard = np.load(f)
        if out is None:
            for i in range(0, len(shard), args.batch_size):
                e.explain(shard[i:i + args.batch_size])
        else:
            write_results(out, block, f, shard, e, args.batch_size)
    return time.perf_counter() - start


def parallel_loops(args, explainer: str, shards: Path, work: Path, processes: int) -> float:
    """Seconds for ``processes`` writing loops at once, shard i in process i mod ``processes``: from the moment
    all of them have their session (a barrier) to the last one done."""
    ctx = multiprocessing.get_context("spawn")
    barrier, spans = ctx.Barrier(processes), ctx.Queue()
    files = sorted(shards.iterdir())
    children = [ctx.Process(target=_loop_part, args=(args.batch_size, explainer, files[p::processes],
                                                     work / f"parallel-out{p}", barrier, spans))
                for p in range(processes)]
    for child in children:
        child.start()
    times = [spans.get() for _ in children]
    for child in children:
        child.join()
    return max(end for _, end in times) - min(start for start, _ in times)


def _loop_part(batch_size: int, explainer: str, files: list, out: Path, barrier, spans) -> None:
    e = relgraph.Explainer(explainer, threads=1, spinning=False)
    out.mkdir()
    barrier.wait()
    start = time.monotonic()  # system-wide: comparable across the processes
    for block, f in enumerate(files):
        write_results(out, block, f, np.load(f), e, batch_size)
    spans.put((start, time.monotonic()))


def write_results(out: Path, block: int, f: Path, shard: np.ndarray, e, batch_size: int) -> None:
    """Explain one shard in batches and write it as explain-dataset writes a block."""
    parts = [e.explain(shard[i:i + batch_size]) for i in range(0, len(shard), batch_size)]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in ("target", "logits", "relevance", "bias_relevance")}
    ids = [f"{f.name}:{r}" for r in range(len(shard))]
    store.write_block(str(out), block, store.block_table(
        ids, [f.name] * len(shard), np.arange(len(shard)), joined["target"], joined["logits"],
        joined["relevance"], joined["bias_relevance"], []))


def steady(out: Path, start: float, workers: int) -> tuple[float, float]:
    """From the block files' modification times (each is renamed into place when done): seconds from the
    call to the first block written (Ray Data's and the actors' start), and samples per second once every
    worker runs: the rows of the blocks after the first ``workers`` over the time from the ``workers``-th
    block to the last. (Counting from the first block alone would credit the other workers' first blocks,
    computed mostly before it, to the interval.)"""
    parts = sorted(out.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
    wall_start = time.time() - (time.perf_counter() - start)
    running, last = parts[workers - 1].stat().st_mtime, parts[-1].stat().st_mtime
    rows = sum(store_rows(p) for p in parts[workers:])
    return parts[0].stat().st_mtime - wall_start, rows / (last - running)


def store_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def spray_time(args, explainer: str) -> None:
    logging.getLogger("sklearn").setLevel(logging.ERROR)
    held = shapes_data.make_split("heldout", args.spray)["x"]
    heatmaps = relgraph.Explainer(explainer).explain(held)["relevance"]
    ids = list(range(args.spray))
    print(f"\nSpRAy on {args.spray} heatmaps of 32×32 (k-NN 10, 32 eigenvalues)")
    for kind in ("pixels", "histogram"):
        for embed in (False, True):
            start = time.perf_counter()
            r = spray.analyse(heatmaps, ids, 0, kind=kind, embed=embed)
            print(f"  {kind:9} t-SNE {'yes' if embed else 'no ':3}  {time.perf_counter() - start:7.2f} s  (k = {r.k})")


if __name__ == "__main__":
    main()
