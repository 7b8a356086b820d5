#!/usr/bin/env python
"""Does explain-dataset's memory stay flat as the data set grows? Peak memory of the whole run, by size.

    python bench/dataset_memory.py [--sizes 8192,32768,131072] [--block-rows 4096] [--workers 1]

For each size: the shapes model's held-out images (1×32×32) in .npy shards of ``--block-rows``, explained by
``explain_dataset`` on a fresh local Ray instance, started by it as ``relgraph explain-dataset`` starts it. A sampler thread reads, every 0.2 s, the resident memory
(RSS) of this process and of every process Ray started for it (raylet, GCS, workers, actors: this process's
descendants, found again at each sample) and keeps the peak of their sum, and the peak of the largest one.
Ray's object store is shared memory; the pages a process touches count in its RSS, so a leak there shows
too. The input and output sizes grow with the data; the run's memory should not.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models" / "shapes"))

import data as shapes_data  # noqa: E402

import relgraph  # noqa: E402
from relgraph.dataset import explain_dataset  # noqa: E402

MIB = 1 << 20


class PeakMemory:
    """The peak of the summed RSS of this process and its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.total, self.largest = interval, 0, 0
        self.by_name: dict[str, int] = {}  # each process's peak, by its name and pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            sizes = []
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss, name = p.memory_info().rss, f"{(p.cmdline() or [p.name()])[0].split('/')[-1]}:{p.pid}"
                except psutil.Error:  # a process that ended between listing and reading
                    continue
                sizes.append(rss)
                self.by_name[name] = max(self.by_name.get(name, 0), rss)
            self.total, self.largest = max(self.total, sum(sizes)), max(self.largest, max(sizes))
            self._stop.wait(self.interval)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8192,32768,131072")
    p.add_argument("--block-rows", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="relgraph-bench-"))
    explainer = relgraph.compile(str(ROOT / "models" / "shapes" / "shapes_cnn.onnx"), rule="epsilon",
                                 output=str(work / "shapes.onnx")).path
    print(f"shapes CNN, ε; blocks of {args.block_rows}, batch {args.batch_size}, {args.workers} worker(s)")
    print(f"{'samples':>8} {'input MiB':>10} {'output MiB':>11} {'seconds':>8} {'peak RSS, all MiB':>18} "
          f"{'largest process MiB':>20}  the three largest processes (MiB)")
    for size in (int(s) for s in args.sizes.split(",")):
        shards = work / f"data{size}"
        shards.mkdir()
        for i, start in enumerate(range(0, size, args.block_rows)):  # generated a block at a time
            rows = min(args.block_rows, size - start)
            np.save(shards / f"shard{i:04d}.npy", shapes_data.make_split("heldout", rows, start=start)["x"])
        out = work / f"out{size}"
        with PeakMemory() as peak:  # explain_dataset starts Ray as the command does
            start = time.perf_counter()
            explain_dataset(explainer, str(shards), str(out), batch_size=args.batch_size,
                            block_rows=args.block_rows, workers=args.workers, progress=False)
            seconds = time.perf_counter() - start
            ray.shutdown()
        size_of = lambda folder: sum(f.stat().st_size for f in folder.iterdir()) / MIB  # noqa: E731
        print(f"{size:8d} {size_of(shards):10.0f} {size_of(out):11.0f} {seconds:8.1f} {peak.total / MIB:18.0f} "
              f"{peak.largest / MIB:20.0f}  " + ", ".join(
                  f"{name.rsplit(':', 1)[0]} {rss / MIB:.0f}"
                  for name, rss in sorted(peak.by_name.items(), key=lambda item: -item[1])[:3]), flush=True)
        shutil.rmtree(shards)
        shutil.rmtree(out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
