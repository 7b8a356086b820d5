#!/usr/bin/env python
"""Lowering time: ``relgraph.lowering.lower`` on a compiled explainer (the triton target's second half), and
what it made of it (kernel steps, torch steps).

Each model (torchvision, random weights, the exports of ``bench/compile_time.py`` in bench/.cache) is compiled
once for the triton target in this process; then ``lower`` runs ``--repeats`` times and the best is kept.
``--tree DIR`` times another checkout of relgraph (``git worktree add /tmp/old <commit>``), for before/after.

    python bench/lower_time.py [--models resnet50,vgg16] [--rules epsilon,epsilon-gamma-box] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,vgg16")
    parser.add_argument("--rules", default="epsilon,epsilon-gamma-box")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="time this checkout of relgraph (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve() if args.tree else BENCH_DIR.parent))
    sys.path.insert(1, str(BENCH_DIR))
    relgraph = importlib.import_module("relgraph")
    from relgraph.lowering import lower

    from compile_time import export

    print(f"relgraph from {Path(relgraph.__file__).parent.parent}")
    print(f"{'model':<12} {'rule':<20} {'lower (s)':>10} {'kernels':>8} {'torch':>6}")
    for name in args.models.split(","):
        model = BENCH_DIR / ".cache" / f"{name}.onnx"
        if not model.exists():
            model.parent.mkdir(exist_ok=True)
            export(name, model)
        for rule in args.rules.split(","):
            options = dict(bounds=(-3.0, 3.0)) if "box" in rule else {}
            proto = relgraph.compile(str(model), rule=rule, write=False, target="triton", **options).proto
            best, plan = float("inf"), None
            for _ in range(args.repeats):
                start = time.perf_counter()
                plan = lower(proto)
                best = min(best, time.perf_counter() - start)
            kernels = len(plan.kernel_steps())
            print(f"{name:<12} {rule:<20} {best:>10.2f} {kernels:>8} {len(plan.steps) - kernels:>6}", flush=True)


if __name__ == "__main__":
    main()
