"""explain-dataset throughput against a plain loop of Explainer.explain, and SpRAy's time on 10,000 heatmaps.

    python bench/dataset_throughput.py [--samples 8192] [--block-rows 1024] [--batch-size 256] [--spray 10000]

1. The shapes shortcut model (ε rule), ``--samples`` held-out images in .npy shards of ``--block-rows``.
   *loop*: one onnxruntime session (1 thread), ``explain`` in batches of ``--batch-size`` over the same
   arrays, reading them from the shards. *ray 1* / *ray 2*: ``explain_dataset`` with 1 and 2 workers
   (1 CPU each), Ray already started (its start is reported apart), actor start included.
2. SpRAy (``relgraph.spray.analyse``) of ``--spray`` heatmaps of 32×32 (the shapes model's, predicted
   class 0 repeated from the held-out set's samples), pixel and histogram features, with and without t-SNE.

Prints one table; the figures go to bench/RESULTS.md with the machine they ran on.
"""

from __future__ import annotations

import argparse
import logging
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
from relgraph.dataset import explain_dataset  # noqa: E402
from relgraph.dataset.pipeline import connect  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--block-rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--spray", type=int, default=10000)
    p.add_argument("--spray-only", action="store_true", help="skip the throughput part")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="relgraph-bench-"))
    explainer = relgraph.compile(str(ROOT / "models" / "shapes" / "shapes_cnn.onnx"), rule="epsilon",
                                 output=str(work / "shapes.onnx")).path
    if not args.spray_only:
        throughput(args, work, explainer)
    spray_time(args, explainer)
    shutil.rmtree(work, ignore_errors=True)


def throughput(args, work: Path, explainer: str) -> None:
    x = shapes_data.make_split("heldout", args.samples)["x"]
    shards = work / "data"
    shards.mkdir()
    for i, start in enumerate(range(0, len(x), args.block_rows)):
        np.save(shards / f"shard{i:04d}.npy", x[start:start + args.block_rows])
    rows = []

    start = time.perf_counter()
    e = relgraph.Explainer(explainer, threads=1, spinning=False)
    for f in sorted(shards.iterdir()):
        shard = np.load(f)
        for i in range(0, len(shard), args.batch_size):
            e.explain(shard[i:i + args.batch_size])
    loop = time.perf_counter() - start
    rows.append(("loop of Explainer.explain (1 thread)", loop, 1.0))

    start = time.perf_counter()
    connect(None, num_cpus=3)
    rows.append(("ray.init (local, 3 CPUs; not in the rates)", time.perf_counter() - start, None))
    for workers in (1, 2):
        start = time.perf_counter()
        explain_dataset(explainer, str(shards), str(work / f"out{workers}"), batch_size=args.batch_size,
                        block_rows=args.block_rows, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        rows.append((f"explain-dataset, {workers} worker(s)", seconds, loop / seconds))

    print(f"{args.samples} samples of 1×32×32, shapes CNN, ε; batch {args.batch_size}, blocks of {args.block_rows}")
    print(f"{'':44} {'seconds':>8} {'samples/s':>10} {'vs loop':>8}")
    for name, seconds, speed in rows:
        rate = f"{args.samples / seconds:10.0f}" if speed is not None else f"{'':10}"
        rel = f"{speed:8.2f}" if speed is not None else ""
        print(f"{name:44} {seconds:8.2f} {rate} {rel}")



def spray_time(args, explainer: str) -> None:
    logging.getLogger("sklearn").setLevel(logging.ERROR)
    held = shapes_data.make_split("heldout", 1200)["x"]
    relevance = relgraph.Explainer(explainer).explain(held)["relevance"]
    reps = int(np.ceil(args.spray / len(relevance)))
    noise = np.random.default_rng(0).normal(0, 1e-3, (args.spray, *relevance.shape[1:])).astype(np.float32)
    heatmaps = np.tile(relevance, (reps, 1, 1, 1))[:args.spray] + noise  # jittered: no exact duplicates
    ids = list(range(args.spray))
    print(f"\nSpRAy on {args.spray} heatmaps of 32×32 (k-NN 10, 32 eigenvalues)")
    for kind in ("pixels", "histogram"):
        for embed in (False, True):
            start = time.perf_counter()
            r = spray.analyse(heatmaps, ids, 0, kind=kind, embed=embed)
            print(f"  {kind:9} t-SNE {'yes' if embed else 'no ':3}  {time.perf_counter() - start:7.2f} s  (k = {r.k})")


if __name__ == "__main__":
    main()
